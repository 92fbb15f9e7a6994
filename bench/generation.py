"""Figure 3: greedy generation speed, ours against transformers' Llama `generate` with its KV cache.

    python -m bench.generation           # the full model: batch 1, a 16-token prompt, 128 new tokens
    python -m bench.generation --quick   # the tiny preset
    python -m bench.generation --dtype bfloat16   # both models' weights in bf16

Both models hold the same weights where their layouts coincide (see harness.model_pair) and decode the
same prompt greedily for exactly 128 tokens (no end-of-text stop). A round is one whole `generate` call,
prompt included; tokens/s is new tokens over its wall time. Ours takes the decode kernels its one-time probe
found fastest on this host (printed; see smolm135/runtime/probes.py).

Decoding a token reads every weight once, so memory bandwidth bounds it: the bound printed is the host's
copy bandwidth (bytes copied per second, each read once and written once, over a tensor far larger than
the caches) divided by the bytes of weights read per token.
"""
from __future__ import annotations

import time

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
from smolm135.runtime.device import synchronize


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
    if args.device.type == "cpu":
        print(f"ours decodes with {ours.cpu_kernels} (the probe's choice on this host)")
    weight_bytes = bytes_read_per_token(ours)
    bandwidth = copy_bandwidth(args.device)
    bound = bandwidth / weight_bytes
    ours_rate = new / median(seconds["ours"])
    print(f"memory-bandwidth bound: {weight_bytes / 1e6:,.0f} MB of weights per token at {bandwidth / 1e9:.1f} GB/s "
          f"copy bandwidth = {bound:,.1f} tokens/s; ours reaches {ours_rate / bound:.2f} of it")
    print_ratios("tokens/s", {args.dtype: ratio}, "above 1: ours is faster")
    return {args.dtype: ratio, "fraction_of_bandwidth_bound": ours_rate / bound}


def bytes_read_per_token(model) -> int:
    """Every weight is read once per token, but of the position embedding only one row."""
    position = model.transformer.wpe.weight
    return sum(p.numel() * p.element_size() for p in model.parameters()) - position[1:].numel() * position.element_size()


def copy_bandwidth(device, megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes copied per second between two tensors of `megabytes` (the median of `repeats` copies)."""
    source = torch.ones(megabytes * 2**20 // 4, device=device)
    target = torch.empty_like(source)
    seconds = []
    for _ in range(repeats + 1):
        synchronize(device)
        started = time.perf_counter()
        target.copy_(source)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return source.numel() * source.element_size() / median(seconds[1:])  # the first copy faults pages in


if __name__ == "__main__":
    run_cli(main)
