"""Time the seed recipe's first steps with the trainer itself and project the whole 5,000-step run.

    python -m bench.recipe_projection --compile              # 200 steps of the full recipe, on the best device
    python -m bench.recipe_projection --quick --steps 20     # the tiny preset, a smoke run

The run keeps the recipe's 5,000-step learning-rate schedule (`lr_decay_steps=5000`) and stops after
`--steps`. Its log gives each step's time; the projection is the measured wall time (start-up, compiling,
tokenizing, the two evaluations and saves) plus the remaining steps at the median step time. The 5,000-step
run's 18 further evaluations, 9 samples and 9 checkpoints are not in the projection.
"""
from __future__ import annotations

import re
import statistics
import tempfile
import time
from pathlib import Path

from bench.harness import parse_args
from smolm135.training.trainer import train
from smolm135.data.shakespeare import shakespeare_text
from smolm135.errors import run_cli
from smolm135.runtime.probes import this_host
from smolm135.training.config import TrainConfig

RECIPE_STEPS = TrainConfig().max_steps  # 5,000
STEP_LINE = re.compile(r"step (\d+)/\d+ \| .* \| ([\d,]+) tok/s")


def add_arguments(parser):
    parser.add_argument("--steps", type=int, default=200, help="steps to run (default 200)")
    parser.add_argument("--compile", action="store_true", help="the trainer's --compile")


def step_seconds_from_log(log_path: str, tokens_per_step: int) -> list[float]:
    seconds = []
    for line in Path(log_path).read_text(encoding="utf-8").splitlines():
        match = STEP_LINE.search(line)
        if match:
            seconds.append(tokens_per_step / float(match.group(2).replace(",", "")))
    return seconds


def main(argv=None) -> dict[str, float]:
    args = parse_args(__doc__, argv, add_arguments)
    print(this_host().line())
    with tempfile.TemporaryDirectory() as out_dir:
        data = Path(out_dir) / "input.txt"
        data.write_text(shakespeare_text(), encoding="utf-8")  # the default corpus
        cfg = TrainConfig(data=str(data), out_dir=out_dir, max_steps=args.steps, lr_decay_steps=RECIPE_STEPS,
                          compile=args.compile, device=str(args.device), resume="never", progress=False,
                          **({"preset": "tiny", "batch_size": 8, "seq_len": 64} if args.quick else {}))
        started = time.perf_counter()
        _, summary = train(cfg)
        wall = time.perf_counter() - started
        per_step = step_seconds_from_log(summary["log_path"], cfg.batch_size * cfg.seq_len)
    steady = statistics.median(per_step[len(per_step) // 10:])  # past the compiling first steps
    projected = wall + (RECIPE_STEPS - args.steps) * steady
    print(f"{args.steps} steps of the recipe ({cfg.preset}, {cfg.batch_size} x {cfg.seq_len}"
          f"{', compiled' if args.compile else ''}): {wall:.1f} s wall, {steady * 1000:.1f} ms per step once warm")
    print(f"projected {RECIPE_STEPS:,}-step run: {projected:.0f} s ({projected / 60:.1f} min)")
    return {"wall_seconds": wall, "step_seconds": steady, "projected_seconds": projected}


if __name__ == "__main__":
    run_cli(main)
