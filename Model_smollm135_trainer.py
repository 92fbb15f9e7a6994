"""Train smolm135 from scratch on your text; re-running the same command resumes where it stopped.

    python Model_smollm135_trainer.py                       # the seed recipe (full model, best device)
    python Model_smollm135_trainer.py --recipe cpu-scratch  # a small model that learns on a laptop CPU
    python Model_smollm135_trainer.py --recipe list         # the named recipes and their flag values
    torchrun --nproc_per_node=8 Model_smollm135_trainer.py  # DistributedDataParallel on 8 GPUs

From a notebook (`from smolm135.training.trainer import train`): `model, summary =
train(TrainConfig(preset="tiny", max_steps=200))`, or a named recipe with fields over it:
`train(from_recipe("cpu-scratch", out_dir="run"))`.

Outputs under --out-dir: checkpoints/latest.pt (every --checkpoint-every steps), models/final_model_<ts>.pt,
logs/training_<ts>.log and logs/training_<ts>.png (the loss curves).
"""
from smolm135.errors import run_cli
from smolm135.training.trainer import main

if __name__ == "__main__":
    run_cli(main)
