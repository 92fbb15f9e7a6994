"""Figure 1: the time of one training step, ours against transformers' Llama of the same size.

    python -m bench.train_step            # the full model, batch 32 x 128, fp32 and bf16 autocast
    python -m bench.train_step --quick    # the tiny preset, batch 8 x 64
    python -m bench.train_step --compile  # both models through torch.compile (adds minutes of compiling)
    python -m bench.train_step --auto-only  # only the precision --dtype auto picks on this host
"""
from __future__ import annotations

from bench.harness import (
    bench_config,
    describe,
    median,
    model_pair,
    parse_args,
    precisions,
    print_ratios,
    print_row,
    time_interleaved,
    token_batch,
    training_step,
)
from smolm135.errors import run_cli


def add_arguments(parser):
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (quick: 8)")
    parser.add_argument("--seq-len", type=int, default=None, help="default 128 (quick: 64)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--auto-only", action="store_true",
                        help="time only the precision --dtype auto picks (a CPU without native bf16 runs bf16 "
                             "autocast several times slower, so timing it takes long)")


def main(argv=None) -> dict[str, float]:
    args = parse_args(__doc__, argv, add_arguments)
    cfg = bench_config(args.quick)
    batch_size = args.batch_size or (8 if args.quick else 32)
    seq_len = args.seq_len or (64 if args.quick else 128)
    describe(args, cfg)
    ours, reference = model_pair(cfg, args.device)
    tokens = token_batch(batch_size, seq_len + 1, args.device)
    timed, auto = precisions(args.device, cfg, seq_len)
    if args.auto_only:
        timed = [auto]
    ratios, ours_seconds = {}, {}
    for dtype in timed:
        name = str(dtype).replace("torch.", "") + (" compiled" if args.compile else "")
        steps = {"ours": training_step(ours, "ours", tokens, dtype, args.compile),
                 "transformers Llama": training_step(reference, "reference", tokens, dtype, args.compile)}
        # two untimed rounds: the first allocates the optimizer state, and freed memory settles for reuse
        seconds = time_interleaved(steps, args.repeats, args.device, warmup=2)
        print(f"training step, {batch_size} x {seq_len}, {name}{' (what --dtype auto picks)' if dtype == auto else ''}:")
        for label, values in seconds.items():
            print_row(label, values, "s")
        ratios[name] = median(seconds["ours"]) / median(seconds["transformers Llama"])
        ours_seconds[dtype] = median(seconds["ours"])
    if len(ours_seconds) > 1:
        fastest = min(ours_seconds.values())
        print(f"ours in the precision auto picks ({str(auto).replace('torch.', '')}): "
              f"{ours_seconds[auto] / fastest:.2f} of the time of the faster precision")
    print_ratios("step time", ratios, "below 1: ours is faster")
    return ratios


if __name__ == "__main__":
    run_cli(main)
