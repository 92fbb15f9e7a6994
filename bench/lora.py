"""LoRA against full fine-tuning: the time and the peak memory of one training step on the same batch.

    python -m bench.lora            # SmolLM2-135M's shape, one 1,024-token window (the fine-tuning recipe)
    python -m bench.lora --quick    # the tiny-rotary preset, batch 8 x 64
    python -m bench.lora --rank 16  # adapters of rank 16 (default 8) on every block projection

Both sides hold the same random weights and take the trainer's step (forward, backward, clipping, AdamW over
the trainable parameters) on the same tokens; the times alternate in one process. Memory is measured as
bench.train_memory measures it, each side in a fresh process of its own: "resting" is what the process holds
between steps (weights, AdamW state: every weight's moments for full fine-tuning, the adapters' alone for
LoRA), "step peak" what the step adds on top (activations, gradients).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from bench.harness import describe, median, parse_args, print_row, time_interleaved, token_batch, training_step
from bench.train_memory import measured_in_child, print_memory, step_memory
from smollm135_model import PRESETS, SmoLM135_Model
from smolm135.errors import run_cli
from smolm135.lora import BLOCK_PROJECTIONS, LoraSettings, add_adapters, trainable_parameters
from smolm135.training.config import RECIPES

FINE_TUNING = RECIPES["finetune"].values  # the batch a fine-tune steps on

SIDES = ("full fine-tuning", "LoRA")


def add_arguments(parser):
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"default {FINE_TUNING['batch_size']} (quick: 8)")
    parser.add_argument("--seq-len", type=int, default=None, help=f"default {FINE_TUNING['seq_len']} (quick: 64)")
    parser.add_argument("--rank", type=int, default=8, help="the adapters' rank (default 8)")
    parser.add_argument("--measure", choices=SIDES, help=argparse.SUPPRESS)  # what the parent asks of a child


def bench_preset(quick: bool) -> str:
    return "tiny-rotary" if quick else "smollm2-135m"


def bench_tokens(quick: bool, batch_size: int, seq_len: int, device) -> torch.Tensor:
    """The batch both sides step on: ids of the preset's vocabulary (SmolLM2's is smaller than GPT-2's)."""
    return token_batch(batch_size, seq_len + 1, device, vocab_size=PRESETS[bench_preset(quick)].vocab_size)


def bench_model(side: str, quick: bool, rank: int, device) -> SmoLM135_Model:
    """The model a side trains: the same random weights, with adapters for LoRA (alpha 2 x rank)."""
    torch.manual_seed(0)
    model = SmoLM135_Model(PRESETS[bench_preset(quick)]).to(device)
    if side == "LoRA":
        add_adapters(model, LoraSettings(rank, 2.0 * rank, 0.0, BLOCK_PROJECTIONS), seed=0)
    return model


def measure(args, side: str, batch_size: int, seq_len: int) -> dict[str, int]:
    """Run in the child: memory of one fp32 training step of `side`."""
    model = bench_model(side, args.quick, args.rank, args.device)
    return step_memory(training_step(model, "ours", bench_tokens(args.quick, batch_size, seq_len, args.device),
                                     torch.float32), args.device)


def main(argv=None) -> dict[str, float]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(__doc__, argv, add_arguments)
    batch_size = args.batch_size or (8 if args.quick else FINE_TUNING["batch_size"])
    seq_len = args.seq_len or (64 if args.quick else FINE_TUNING["seq_len"])
    if args.measure:
        print(json.dumps(measure(args, args.measure, batch_size, seq_len)))
        return {}
    models = {side: bench_model(side, args.quick, args.rank, args.device) for side in SIDES}
    describe(args, models["full fine-tuning"].config)
    print(f"LoRA rank {args.rank} on {', '.join(BLOCK_PROJECTIONS)}: {trainable_parameters(models['LoRA']):,} "
          f"trainable parameters of {trainable_parameters(models['full fine-tuning']):,}")
    tokens = bench_tokens(args.quick, batch_size, seq_len, args.device)
    steps = {side: training_step(model, "ours", tokens, torch.float32) for side, model in models.items()}
    seconds = time_interleaved(steps, args.repeats, args.device, warmup=2)
    print(f"training step, {batch_size} x {seq_len}, float32:")
    for side, values in seconds.items():
        print_row(side, values, "s")
    del models, steps  # the children measure memory alone
    memory = {side: measured_in_child("bench.lora", [*argv, "--measure", side], side) for side in SIDES}
    print_memory(memory, f"{batch_size} x {seq_len}, float32")
    full, lora = (memory[side] for side in SIDES)
    ratios = {"step time": median(seconds["LoRA"]) / median(seconds["full fine-tuning"]),
              "step peak memory": (lora["peak"] - lora["resting"]) / (full["peak"] - full["resting"]),
              "total peak memory": lora["peak"] / full["peak"]}
    print("ratio LoRA / full fine-tuning: " + ", ".join(f"{name} {value:.2f}" for name, value in ratios.items())
          + " (below 1: LoRA takes less)")
    return ratios


if __name__ == "__main__":
    run_cli(main)
