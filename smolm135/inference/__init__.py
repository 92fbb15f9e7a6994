"""Using a model: generation, scoring, the evaluation script's body and the demo."""
