"""Figure 3: greedy generation speed, ours against transformers' Llama `generate` with its KV cache.

    python -m bench.generation           # the full model: batch 1, a 16-token prompt, 128 new tokens
    python -m bench.generation --quick   # the tiny preset
    python -m bench.generation --dtype bfloat16   # both models' weights in bf16

Both models hold the same weights where their layouts coincide (see harness.model_pair) and decode the
same prompt greedily for exactly 128 tokens (no end-of-text stop). A round is one whole `generate` call,
prompt included; tokens/s is new tokens over its wall time.
"""
from __future__ import annotations

import torch

from bench.harness import (
    bench_config,
    describe,
    median,
    model_pair,
    parse_args,
    print_ratios,
    print_row,
    time_interleaved,
    token_batch,
)
from smolm135.errors import run_cli


def add_arguments(parser):
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the weights' dtype, for both models (default float32)")


def main(argv=None) -> dict[str, float]:
    args = parse_args(__doc__, argv, add_arguments)
    cfg = bench_config(args.quick)
    describe(args, cfg)
    dtype = getattr(torch, args.dtype)
    ours, reference = (model.to(dtype).eval() for model in model_pair(cfg, args.device))
    prompt = token_batch(1, args.prompt_length, args.device)  # (1, T)
    new = args.new_tokens
    candidates = {
        "ours": lambda: ours.generate(prompt, max_new_tokens=new, temperature=0),
        "transformers Llama": lambda: reference.generate(
            prompt, attention_mask=prompt.new_ones(prompt.shape), max_new_tokens=new, min_new_tokens=new,
            do_sample=False, use_cache=True, pad_token_id=0),
    }
    seconds = time_interleaved(candidates, args.repeats, args.device)
    print(f"greedy generation, batch 1, {args.prompt_length}-token prompt, {new} new tokens, {args.dtype} weights:")
    for label, values in seconds.items():
        print_row(label, [new / s for s in values], "tokens/s")
    ratio = median(seconds["transformers Llama"]) / median(seconds["ours"])
    print_ratios("tokens/s", {args.dtype: ratio}, "above 1: ours is faster")
    return {args.dtype: ratio}


if __name__ == "__main__":
    run_cli(main)
