"""What every benchmark here shares: the command line, the transformers reference model, one training
step, the interleaved timing loop and the report. Each script runs ours and the reference in one process,
on the same inputs, and prints the ratio (ours / reference) as its last line."""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from smollm135_model import GPT2_VOCAB_SIZE, PRESETS, ModelConfig, SmoLM135_Model
from smolm135.errors import CommandLineParser
from smolm135.runtime.probes import this_host
from smolm135.runtime.device import choose_precision, configure_backends, device_description, pick_device, synchronize

REPO_ROOT = Path(__file__).resolve().parent.parent


def parse_args(description: str, argv=None, add_arguments: Callable | None = None) -> argparse.Namespace:
    parser = CommandLineParser(description)
    parser.add_argument("--quick", action="store_true", help="the tiny preset and small inputs: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 3, or 5 with --quick)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (the trainer keeps freed memory for reuse on a CPU)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (5 if args.quick else 3)
    args.device = pick_device(args.device)
    # as the trainer does, for both sides alike: TF32 on CUDA, freed memory kept for reuse on a CPU
    configure_backends(args.device, reuse_freed_memory=not args.default_malloc)
    return args


def bench_config(quick: bool) -> ModelConfig:
    return PRESETS["tiny"] if quick else PRESETS["smolm135"]


def precisions(device: torch.device, cfg: ModelConfig, seq_len: int) -> tuple[list[torch.dtype], torch.dtype]:
    """The precisions to time, fp32 first, and the one the trainer's --dtype auto picks for this model here.
    On a CPU both fp32 and bf16 autocast are timed, to check the pick; on CUDA the pick alone."""
    auto = choose_precision("auto", device, cfg, seq_len)
    if auto.reason:
        print(f"--dtype auto picks {auto.reason}")
    timed = {torch.float32, torch.bfloat16} if device.type == "cpu" else {torch.float32, auto.dtype}
    return sorted(timed, key=str, reverse=True), auto.dtype  # float32 first


def describe(args, cfg: ModelConfig) -> None:
    """The host line (a figure holds for the host it was measured on, and no other), then the run."""
    import transformers

    print(this_host().line())
    print(f"device {device_description(args.device)}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}; model {cfg.n_layer} layers x {cfg.n_embd}, vocab {cfg.vocab_size}")


# ------------------------------------------------------------------ the two models


def model_pair(cfg: ModelConfig, device, seed: int = 0) -> tuple[SmoLM135_Model, torch.nn.Module]:
    """Ours and transformers' LlamaForCausalLM of the same dimensions, holding the same weights wherever
    the two layouts coincide (all but our learned positions; Llama rotates q and k instead)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    ours = SmoLM135_Model(cfg)
    reference = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=True,
        attention_bias=False, mlp_bias=False, attn_implementation="sdpa", bos_token_id=None, eos_token_id=None,
    ))
    reference.load_state_dict(llama_state_dict(ours))
    return ours.to(device), reference.to(device)


def llama_state_dict(model: SmoLM135_Model) -> dict[str, torch.Tensor]:
    """Our weights under Llama's names: fused qkv and gate_up are split into Llama's separate matrices."""
    cfg = model.config
    state = {"model.embed_tokens.weight": model.transformer.wte.weight, "lm_head.weight": model.lm_head.weight,
             "model.norm.weight": model.transformer.ln_f.weight}
    for i, block in enumerate(model.transformer.h):
        prefix = f"model.layers.{i}."
        q, k, v = block.attn.qkv_proj.weight.split(
            [cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim])
        gate, up = block.mlp.gate_up_proj.weight.chunk(2)
        state.update({
            prefix + "input_layernorm.weight": block.attn_norm.weight,
            prefix + "self_attn.q_proj.weight": q, prefix + "self_attn.k_proj.weight": k,
            prefix + "self_attn.v_proj.weight": v, prefix + "self_attn.o_proj.weight": block.attn.o_proj.weight,
            prefix + "post_attention_layernorm.weight": block.mlp_norm.weight,
            prefix + "mlp.gate_proj.weight": gate, prefix + "mlp.up_proj.weight": up,
            prefix + "mlp.down_proj.weight": block.mlp.down_proj.weight,
        })
    return state


def token_batch(batch_size: int, length: int, device, seed: int = 0, vocab_size: int = GPT2_VOCAB_SIZE) -> torch.Tensor:
    """(batch_size, length) random token ids below `vocab_size` (GPT-2's by default), the same for every caller
    with the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, length), generator=generator).to(device)


def training_step(model: torch.nn.Module, side: str, tokens: torch.Tensor, dtype: torch.dtype,
                  compile: bool = False) -> Callable[[], float]:
    """One step as the trainer takes it: forward with the loss under autocast, backward, gradient
    clipping, AdamW, zero_grad. tokens (B, T + 1). Ours takes next-token targets, transformers' Llama
    takes labels and shifts them itself."""
    from smolm135.training.optim import configure_optimizer
    from smolm135.runtime.device import autocast
    from smolm135.training.config import TrainConfig

    device = tokens.device
    optimizer = configure_optimizer(model, TrainConfig(), device)
    if side == "ours":  # the attention kernel the trainer takes for this precision here
        by_matmuls = dtype == torch.bfloat16 and choose_precision(
            "bfloat16", device, model.config, tokens.shape[1] - 1).bf16_attention_by_matmuls
        model.use_cpu_kernels(training_attention_by_matmuls=by_matmuls)
    forward = torch.compile(model) if compile else model
    x, y = tokens[:, :-1], tokens[:, 1:]  # (B, T) each

    def step() -> float:
        with autocast(device, dtype):
            if side == "ours":
                _, loss = forward(x, y, return_logits=False)
            else:
                loss = forward(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


# ------------------------------------------------------------------ timing and report


def time_interleaved(candidates: dict[str, Callable[[], object]], repeats: int, device,
                     warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each candidate: `warmup` untimed rounds, then `repeats` rounds that alternate
    the candidates, so that a slow spell of a shared machine hits all of them alike."""
    for _ in range(warmup):
        for run in candidates.values():
            run()
    synchronize(device)
    seconds = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            synchronize(device)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def print_row(label: str, values: list[float], unit: str, scale: float = 1.0) -> None:
    """label: median (min..max of the rounds), scaled from seconds (or bytes) to `unit`."""
    shown = sorted(v * scale for v in values)
    print(f"  {label:<34} {median(shown):>12,.3f} {unit}   (rounds: {', '.join(f'{v:,.3f}' for v in shown)})")


def print_ratios(what: str, ratios: dict[str, float], better: str) -> None:
    """The last line of every benchmark: ours / reference, per setting."""
    print(f"ratio ours / reference, {what}: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
          + f" ({better})")
