"""Figure 2: peak memory of one training step, ours against transformers' Llama of the same size.

    python -m bench.train_memory           # the full model, batch 32 x 128, fp32 and (where native) bf16
    python -m bench.train_memory --quick   # the tiny preset, batch 8 x 64

Each side runs in a fresh process of its own, so neither sees the other's memory. It builds its model and
AdamW, takes one warm-up step (the optimizer state then exists), and measures the next step: on CUDA with
torch.cuda.max_memory_allocated, on a Linux CPU as the peak resident memory of the process (VmHWM, reset
just before the step, after returning freed heap pages to the system). "resting" is what the process
holds between steps (weights, AdamW state, libraries); "step peak" is the most the step adds on top.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys

import torch

from bench.harness import (
    bench_config,
    describe,
    model_pair,
    parse_args,
    precisions,
    print_ratios,
    token_batch,
    training_step,
)
from smolm135.errors import UserError, run_cli

SIDES = {"ours": "ours", "transformers Llama": "reference"}


def add_arguments(parser):
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (quick: 8)")
    parser.add_argument("--seq-len", type=int, default=None, help="default 128 (quick: 64)")
    # what the parent process asks of each child
    parser.add_argument("--measure", choices=sorted(SIDES.values()), help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)


def resident_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise UserError(f"/proc/self/status has no {field}: measuring CPU memory needs Linux")


def settle_cpu_memory() -> int:
    """Free what can be freed, hand the heap's free pages back to the system, reset the peak; -> resident."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size
    return resident_bytes("VmRSS")


def measure(args, side: str, dtype: torch.dtype, batch_size: int, seq_len: int) -> dict[str, int]:
    """Run in the child: memory of one training step of `side` ("ours" or "reference")."""
    ours, reference = model_pair(bench_config(args.quick), args.device)
    model = ours if side == "ours" else reference
    del ours, reference  # the other one
    return step_memory(training_step(model, side, token_batch(batch_size, seq_len + 1, args.device), dtype),
                       args.device)


def step_memory(step, device: torch.device) -> dict[str, int]:
    """Bytes in use before a training step (after a warm-up step allocated the optimizer state) and at its peak."""
    step()  # warm-up: allocates the AdamW state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        resting = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return {"resting": resting, "peak": torch.cuda.max_memory_allocated()}
    resting = settle_cpu_memory()
    step()
    return {"resting": resting, "peak": resident_bytes("VmHWM")}


def run_child(argv: list[str], side: str, dtype: torch.dtype) -> dict[str, int]:
    dtype_name = str(dtype).replace("torch.", "")
    return measured_in_child("bench.train_memory", [*argv, "--measure", side, "--dtype", dtype_name],
                             f"{side} ({dtype_name})")


def print_memory(results: dict[str, dict[str, int]], what: str) -> None:
    """Each side's step peak (above its resting memory), resting and total peak, in MiB."""
    print(f"training step memory, {what}:")
    for label, memory in results.items():
        step_peak, resting, peak = (value / 2**20 for value in
                                    (memory["peak"] - memory["resting"], memory["resting"], memory["peak"]))
        print(f"  {label:<20} step peak {step_peak:>9,.0f} MiB   resting {resting:>9,.0f} MiB   "
              f"total peak {peak:>9,.0f} MiB")


def measured_in_child(module: str, argv: list[str], what: str) -> dict[str, int]:
    """A benchmark's memory figures measured in a fresh process (`python -m module argv`), whose peak is its own."""
    result = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"measuring {what} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict[str, float]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(__doc__, argv, add_arguments)
    batch_size = args.batch_size or (8 if args.quick else 32)
    seq_len = args.seq_len or (64 if args.quick else 128)
    if args.measure:
        print(json.dumps(measure(args, args.measure, getattr(torch, args.dtype), batch_size, seq_len)))
        return {}
    cfg = bench_config(args.quick)
    describe(args, cfg)
    ratios = {}
    for dtype in precisions(args.device, cfg, seq_len)[0]:
        results = {label: run_child(argv, side, dtype) for label, side in SIDES.items()}
        name = str(dtype).replace("torch.", "")
        print_memory(results, f"{batch_size} x {seq_len}, {name}")
        ours, reference = (results[label] for label in SIDES)
        ratios[f"{name} step peak"] = (ours["peak"] - ours["resting"]) / (reference["peak"] - reference["resting"])
        ratios[f"{name} total peak"] = ours["peak"] / reference["peak"]
    print_ratios("memory", ratios, "below 1: ours needs less")
    return ratios


if __name__ == "__main__":
    run_cli(main)
