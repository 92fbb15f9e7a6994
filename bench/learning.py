"""Validation bits per byte after a fixed wall-clock budget of training, so that recipes compare on equal time.

    python -m bench.learning --recipe cpu-scratch --minutes 10   # the README's from-scratch CPU recipe
    python -m bench.learning --recipe baseline --minutes 10      # the plain GPT, AdamW
    python -m bench.learning --recipe muon --minutes 10          # wider and shallower, Muon + AdamW
    python -m bench.learning --quick                             # one minute of the tiny preset: a smoke run

Each recipe trains through the trainer (`train`) on the default corpus (Shakespeare's plays, written to
input.txt when absent; --data for another). The number of steps is fixed before training from a few timed
calibration steps, so that the learning-rate schedule ends where the budget does; the budget counts the
training steps only (the trainer's `elapsed_seconds`), not start-up, tokenizing or evaluations, and the
seconds the steps really took are printed beside it: on a shared machine the load changes between the
calibration and the run (one run here took half its budget, another a third more), so compare recipes at
the seconds printed, not only the budget. At the end the whole validation split (the last 10%
of the corpus, whatever the tokenizer) is scored in windows of the training length
(`scoring.validation_bits_per_byte`), and the
curve of the trainer's validation loss over the run is printed, in bits per byte, with the seconds at
each point.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

from bench.corpus_formats import host_line
from smolm135.training.trainer import train
from smollm135_model import PRESETS, ModelConfig
from smolm135.checkpoint import load_checkpoint
from smolm135.data.corpus import DEFAULT_DATA, load_corpus, split_train_val
from smolm135.errors import CommandLineParser, run_cli
from smolm135.runtime.device import pick_device, pick_dtype
from smolm135.inference.scoring import validation_bits_per_byte
from smolm135.training.config import RECIPES, TrainConfig

CALIBRATION_STEPS = 6


def gpt(n_layer: int, n_embd: int, intermediate_size: int, block_size: int = 128, **config) -> ModelConfig:
    """A GPT of the given shape with 64-dimensional heads (learned positions, tied head; by default the GPT-2
    vocabulary)."""
    return ModelConfig(block_size=block_size, n_layer=n_layer, n_head=max(1, n_embd // 64), n_embd=n_embd,
                       intermediate_size=intermediate_size, **config)


# the trainer's cpu-scratch recipe (smolm135.training.config.RECIPES), but for its steps and when it evaluates
CPU_SCRATCH = {name: RECIPES["cpu-scratch"].values[name] for name in ("preset", "optimizer", "lr", "batch_size",
                                                                       "seq_len")}

# Recipes are data: the TrainConfig fields each sets. Precision is the trainer's --dtype auto (bf16 autocast
# where the CPU has fast bf16, else fp32).
RECIPES: dict[str, dict] = {
    # the plain GPT the from-scratch target is measured against: 30.7M parameters, AdamW at 1e-3
    "baseline": dict(preset="baseline-gpt", model=ModelConfig(block_size=128, n_layer=6, n_head=6, n_embd=384,
                                                               intermediate_size=1024),
                     optimizer="adamw", lr=1e-3, batch_size=16, seq_len=128, warmup_fraction=0.05),
    # wider but shallower, Muon for the blocks' matrices, a higher learning rate
    "muon": dict(preset="wide-shallow", model=ModelConfig(block_size=128, n_layer=4, n_head=8, n_embd=512,
                                                           intermediate_size=1536),
                 optimizer="muon", lr=3e-3, batch_size=16, seq_len=128, warmup_fraction=0.05),
    "tiny": dict(preset="tiny", optimizer="adamw", lr=2e-3, batch_size=8, seq_len=64, warmup_fraction=0.1),
    # The trainer's cpu-scratch recipe: 4 x 256 with a 4,096-token BPE learned from the corpus (the trainer's
    # --tokenizer auto for a vocabulary that small); its 50 warm-up steps of 720 as a fraction, as the steps
    # here come from the budget. The others change one thing each.
    "cpu-scratch": dict(CPU_SCRATCH, warmup_fraction=0.07),
    "cpu-scratch-hot": dict(CPU_SCRATCH, lr=1e-2, min_lr=0.0, warmup_fraction=0.07),
    "cpu-scratch-adamw": dict(CPU_SCRATCH, optimizer="adamw", lr=3e-3, warmup_fraction=0.07),
    "cpu-scratch-v2k": dict(preset="cpu-scratch-v2k", model=replace(PRESETS["cpu-scratch"], vocab_size=2048),
                            optimizer="muon", lr=6e-3, batch_size=16, seq_len=128, warmup_fraction=0.07),
    "cpu-scratch-v8k": dict(preset="cpu-scratch-v8k", model=replace(PRESETS["cpu-scratch"], vocab_size=8192),
                            optimizer="muon", lr=6e-3, batch_size=16, seq_len=128, warmup_fraction=0.07),
    "cpu-scratch-d192": dict(preset="cpu-scratch-d192", model=gpt(4, 192, 512, vocab_size=4096), optimizer="muon",
                             lr=6e-3, batch_size=8, seq_len=128, warmup_fraction=0.05),
    # the recipe before the learned tokenizer: 4 x 128 with GPT-2's vocabulary, whose output matmul
    # (6 x 50,304 x n_embd FLOPs a token) outweighs the blocks
    "gpt2-vocab-d128": dict(preset="gpt2-vocab-d128", model=gpt(4, 128, 384), optimizer="muon", lr=6e-3,
                            batch_size=8, seq_len=128, warmup_fraction=0.07),
}


def recipe_config(name: str, steps: int, data: str, out_dir: str, device: str, seed: int = 1337) -> TrainConfig:
    recipe = dict(RECIPES[name])
    warmup = max(1, round(recipe.pop("warmup_fraction") * steps))
    return TrainConfig(**recipe, data=data, out_dir=out_dir, device=device, max_steps=steps, warmup_steps=warmup,
                       eval_every=max(1, steps // 6), eval_batches=4, checkpoint_every=steps, sample_every=steps,
                       sample_tokens=1, progress=False, seed=seed, resume="never")


def seconds_per_step(name: str, data: str, device: str, folder: Path) -> float:
    """Seconds of one training step of the recipe, from a few calibration steps (the first is not timed
    in the trainer's sense either: it includes allocations, which makes the estimate a little cautious)."""
    cfg = recipe_config(name, CALIBRATION_STEPS, data, str(folder / "calibration"), device)
    _, summary = train(replace(cfg, eval_batches=1))
    return summary["seconds"] / CALIBRATION_STEPS


def run_recipe(name: str, minutes: float, data: str, device: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        per_step = seconds_per_step(name, data, device, Path(folder))
        steps = max(CALIBRATION_STEPS, math.floor(minutes * 60 / per_step))
        print(f"{name}: {per_step:.2f} s per step in calibration -> {steps} steps for {minutes:g} minutes", flush=True)
        cfg = recipe_config(name, steps, data, str(Path(folder) / "run"), device)
        model, summary = train(cfg)
        final = load_checkpoint(summary["final_model_path"])
        history, tokenizer = final.progress.history, final.build_tokenizer()
        corpus = load_corpus(data, Path(folder) / "run" / "cache", show_progress=False, tokenizer=tokenizer)
        _, val_tokens = split_train_val(corpus.tokens, cfg.val_fraction)
        torch_device = pick_device(device)
        bpb = validation_bits_per_byte(model, val_tokens, cfg.seq_len, torch_device,
                                       pick_dtype(cfg.dtype, torch_device), tokenizer.document_separator_id,
                                       tokenizer.text_bytes)
    bytes_per_token = bpb.text_bytes / bpb.tokens
    curve = [(step, loss / math.log(2) / bytes_per_token) for step, loss in history["val"]]
    return {"recipe": name, "steps": steps, "seconds": summary["seconds"], "budget": minutes * 60,
            "parameters": model.num_parameters()["total"], "bits_per_byte": bpb.bits_per_byte, "loss": bpb.loss,
            "curve": curve, "seconds_per_step": summary["seconds"] / max(1, steps)}


def print_result(result: dict) -> None:
    print(f"{result['recipe']}: {result['parameters'] / 1e6:.1f}M parameters, {result['steps']} steps in "
          f"{result['seconds']:.0f} s of training (budget {result['budget']:.0f} s)")
    print("  curve (trainer's validation loss, in bits per byte): " + ", ".join(
        f"step {step} ({step * result['seconds_per_step']:.0f} s) {bpb:.3f}" for step, bpb in result["curve"]))
    print(f"  validation split, windows of the training length: {result['loss']:.4f} nats per token, "
          f"{result['bits_per_byte']:.4f} bits per byte")


def main(argv=None) -> list[dict]:
    parser = CommandLineParser(__doc__)
    parser.add_argument("--recipe", nargs="+", default=["muon"], choices=list(RECIPES))
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per recipe")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="the tiny recipe for one minute")
    args = parser.parse_args(argv)
    recipes, minutes = (["tiny"], 1.0) if args.quick else (args.recipe, args.minutes)
    print(host_line() + " (on a shared machine steps slow down when others run)", flush=True)
    results = []
    for name in recipes:
        results.append(run_recipe(name, minutes, args.data, args.device))
        print_result(results[-1])
    print("bits per byte on the validation split after equal training time: "
          + ", ".join(f"{r['recipe']} {r['bits_per_byte']:.4f}" for r in results))
    return results


if __name__ == "__main__":
    run_cli(main)
