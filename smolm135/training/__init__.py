"""Training: the recipe and its flags, optimizers, one run's state, the loop, its log."""
