"""Training throughput of our model alone: tokens/s and model FLOPs utilisation (MFU) at a batch shape.

    python -m bench.throughput --batch-size 32 --seq-len 128 --compile     # the seed recipe's shape
    python -m bench.throughput --batch-size 16 --seq-len 2048 --compile    # long sequences

MFU counts the model's training FLOPs (`flops_per_token`, 6 per weight plus attention) against the
device's dense bf16 peak (`runtime.GPU_PEAK_FLOPS`); it is shown where that peak is known.
"""
from __future__ import annotations

from bench.harness import (
    bench_config,
    describe,
    median,
    parse_args,
    print_row,
    time_interleaved,
    token_batch,
    training_step,
)
from smollm135_model import SmoLM135_Model
from smolm135.errors import UserError, run_cli
from smolm135.runtime.device import DTYPES, choose_precision, peak_flops


def add_arguments(parser):
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="autocast dtype")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")


def main(argv=None) -> dict[str, float]:
    args = parse_args(__doc__, argv, add_arguments)
    cfg = bench_config(args.quick)
    if args.seq_len > cfg.block_size:
        raise UserError(f"--seq-len {args.seq_len} is longer than the context length ({cfg.block_size})")
    describe(args, cfg)
    precision = choose_precision(args.dtype, args.device, cfg, args.seq_len)
    dtype = precision.dtype
    if precision.reason:
        print(f"--dtype auto picks {precision.reason}")
    model = SmoLM135_Model(cfg).to(args.device)
    step = training_step(model, "ours", token_batch(args.batch_size, args.seq_len + 1, args.device), dtype,
                         args.compile)
    warmup = 3 if args.compile else 1  # compiling happens in the first calls
    seconds = time_interleaved({"ours": step}, args.repeats, args.device, warmup=warmup)["ours"]
    tokens_per_step = args.batch_size * args.seq_len
    tokens_per_second = tokens_per_step / median(seconds)
    flops_per_second = model.flops_per_token(args.seq_len) * tokens_per_second
    peak = peak_flops(args.device)
    name = str(dtype).replace("torch.", "") + (" compiled" if args.compile else "")
    print(f"training step, {args.batch_size} x {args.seq_len}, {name}:")
    print_row("step time", seconds, "s")
    print(f"  {tokens_per_second:,.0f} tokens/s, {flops_per_second / 1e12:.1f} TFLOP/s"
          + (f", MFU {flops_per_second / peak:.1%} of {peak / 1e12:.0f} TFLOP/s" if peak else ", MFU: peak unknown"))
    return {"tokens_per_second": tokens_per_second, "mfu": flops_per_second / peak if peak else None}


if __name__ == "__main__":
    run_cli(main)
