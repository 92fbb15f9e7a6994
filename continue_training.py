"""Train a finished model for more steps, picking up its optimizer and schedule where they stopped.

    python continue_training.py                      # newest models/final_model_*.pt, 50 more steps
    python continue_training.py --steps 500 --data more_text.txt --lr 1e-4

Writes continued_models/continued_model_<ts>.pt and logs/continued_training_<ts>.log. The training loop is
the trainer's own (`Model_smollm135_trainer.train`); this file only decides where to start and for how long.
"""
from smolm135.errors import run_cli
from smolm135.training.continuation import main

if __name__ == "__main__":
    run_cli(main)
