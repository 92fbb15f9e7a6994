"""Train smolm135 from scratch on your text; re-running the same command resumes where it stopped.

    python Model_smollm135_trainer.py                       # the seed recipe (full model, best device)
    python Model_smollm135_trainer.py --preset tiny ...     # a small model that learns on a laptop CPU
    torchrun --nproc_per_node=8 Model_smollm135_trainer.py  # DistributedDataParallel on 8 GPUs

From a notebook: `model, summary = train(TrainConfig(preset="tiny", max_steps=200))`.

Outputs under --out-dir: checkpoints/latest.pt (every --checkpoint-every steps), models/final_model_<ts>.pt,
logs/training_<ts>.log and logs/training_<ts>.png (the loss curves).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from smollm135_model import SmoLM135_Model, clean_state_dict
from smolm135.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    newest_intact_checkpoint,
    save_atomic,
    save_training_checkpoint,
)
from smolm135.data import (
    TRAIN_STREAM,
    VAL_STREAM,
    Corpus,
    batch_offsets,
    get_batch,
    load_corpus,
    local_rows,
    split_train_val,
)
from smolm135.errors import UserError, run_cli
from smolm135.generation import continue_text
from smolm135.runtime import (
    Distributed,
    autocast,
    configure_backends,
    device_description,
    main_process_first,
    peak_flops,
    pick_device,
    pick_dtype,
    run_on_main,
    setup_distributed,
    teardown_distributed,
)
from smolm135.tokenizer import get_tokenizer
from smolm135.train_config import TrainConfig, add_train_arguments, config_from_args, get_lr, validate
from smolm135.training_log import RunLog, plot_losses

MAX_NONFINITE_STEPS_IN_A_ROW = 5


@dataclass(frozen=True)
class RunLayout:
    """Where a kind of run writes, relative to --out-dir."""

    checkpoint_dir: str = "checkpoints"
    final_dir: str = "models"
    final_prefix: str = "final_model"
    log_prefix: str = "training"


TRAINING = RunLayout()


@dataclass
class Progress:
    """Everything about the run's position that a checkpoint must carry besides weights and optimizer."""

    step: int = 0  # optimizer steps completed; also the data position (batches are a function of it)
    tokens_seen: int = 0
    elapsed_seconds: float = 0.0
    history: dict = field(default_factory=lambda: {"train": [], "val": []})  # [[step, loss], ...]
    nonfinite_in_a_row: int = 0

    @property
    def last_train_loss(self) -> float | None:
        return self.history["train"][-1][1] if self.history["train"] else None

    @property
    def last_val_loss(self) -> float | None:
        return self.history["val"][-1][1] if self.history["val"] else None


# ------------------------------------------------------------------ pieces of a run


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying norm gains would only fight the normalisation."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=True if device.type == "cuda" else None)  # one kernel for all params


def capture_rng_state() -> dict:
    state = {
        "python": list(random.getstate()[1]),
        "python_version_gauss": [random.getstate()[0], random.getstate()[2]],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, gauss = state["python_version_gauss"]
    random.setstate((version, tuple(state["python"]), gauss))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def training_state(model, optimizer, scaler, cfg: TrainConfig, progress: Progress, corpus: Corpus,
                   global_batch: int) -> dict:
    """The checkpoint: plain data and tensors only (loads with weights_only=True)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model_state_dict": clean_state_dict(model.state_dict()),
        "model_config": model.config.to_dict(),
        "train_config": cfg.to_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "grad_scaler_state_dict": scaler.state_dict(),  # float16 training's loss scale; {} otherwise
        "step": progress.step,
        "tokens_seen": progress.tokens_seen,
        "elapsed_seconds": progress.elapsed_seconds,
        "data_position": {"next_step": progress.step, "seed": cfg.seed, "global_batch_size": global_batch,
                          "seq_len": cfg.seq_len, "corpus_key": corpus.key},
        "rng_state": capture_rng_state(),
        "history": progress.history,
        "train_loss": progress.last_train_loss,
        "val_loss": progress.last_val_loss,
        "data_name": corpus.name,
        "torch_version": str(torch.__version__),
    }


def config_mismatch(saved: dict, wanted: dict) -> list[str]:
    return [f"{key}: checkpoint has {saved.get(key)}, this run has {wanted[key]}"
            for key in wanted if saved.get(key) != wanted[key]]


def find_resume_state(cfg: TrainConfig, checkpoint_dir: Path, log: RunLog) -> tuple[Path, dict] | None:
    """The checkpoint to continue from: this run's own (per --resume), else --init-from, else none."""
    found = None
    if cfg.resume == "auto":
        found = newest_intact_checkpoint(checkpoint_dir, warn=log.say)
        if found is not None and found[1].get("train_config", {}).get("init_from") != cfg.init_from:
            log.say(f"ignoring {found[0]}: it started from {found[1]['train_config'].get('init_from')}, "
                    f"this run from {cfg.init_from}")
            found = None
    elif cfg.resume != "never":
        found = Path(cfg.resume), load_checkpoint(cfg.resume)
    if found is None and cfg.init_from:
        found = Path(cfg.init_from), load_checkpoint(cfg.init_from)
    return found


def restore(state: dict, model, optimizer, scaler, progress: Progress) -> None:
    model.load_state_dict(clean_state_dict(state["model_state_dict"]))
    if "optimizer_state_dict" in state:
        optimizer.load_state_dict(state["optimizer_state_dict"])
    if state.get("grad_scaler_state_dict") and scaler.is_enabled():
        scaler.load_state_dict(state["grad_scaler_state_dict"])
    progress.step = int(state.get("step", 0))
    progress.tokens_seen = int(state.get("tokens_seen", 0))
    progress.elapsed_seconds = float(state.get("elapsed_seconds", 0.0))
    progress.history = state.get("history") or {"train": [], "val": []}
    if "rng_state" in state:
        restore_rng_state(state["rng_state"])


def resume(path: Path, state: dict, model, optimizer, scaler, progress: Progress, global_batch: int,
           log: RunLog) -> None:
    """Load a checkpoint into the run after checking that it describes the same model."""
    differences = config_mismatch(state["model_config"], model.config.to_dict())
    if differences:
        raise UserError(f"checkpoint {path} was trained with a different model ({'; '.join(differences)}): "
                        f"use the same --preset, or --resume never to start fresh")
    restore(state, model, optimizer, scaler, progress)
    log.say(f"continuing from {path} at step {progress.step} ({progress.tokens_seen:,} tokens seen, "
            f"last train loss {_fmt(progress.last_train_loss)}, validation loss {_fmt(progress.last_val_loss)})")
    saved_batch = state.get("data_position", {}).get("global_batch_size", global_batch)
    if saved_batch != global_batch:  # e.g. resumed with another number of processes
        log.say(f"note: the checkpoint trained with a global batch of {saved_batch} sequences, this run uses "
                f"{global_batch} (batch size x grad accum x processes); set --batch-size or --grad-accum "
                f"to keep {saved_batch}")


def check_corpus_fits(corpus: Corpus, train_tokens, val_tokens, cfg: TrainConfig, vocab_size: int,
                      global_batch: int) -> None:
    if corpus.max_token_id >= vocab_size:
        raise UserError(f"the corpus holds token id {corpus.max_token_id}, outside the model's vocabulary of "
                        f"{vocab_size}: use a preset whose vocab_size covers the tokenizer")
    needed_train = global_batch * cfg.seq_len + 1
    if len(train_tokens) < needed_train or len(val_tokens) < cfg.seq_len + 1:
        needed_total = math.ceil(max(needed_train / (1 - cfg.val_fraction), (cfg.seq_len + 1) / cfg.val_fraction))
        raise UserError(f"{corpus.name} has {len(corpus.tokens):,} tokens, but one batch of {global_batch} x "
                        f"{cfg.seq_len} needs at least {needed_total:,} (with {cfg.val_fraction:.0%} held out "
                        f"for validation): add text, or lower --batch-size / --seq-len")


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and stops."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@torch.no_grad()
def evaluate(model, val_tokens, cfg: TrainConfig, device, dtype, distributed: Distributed) -> float:
    """Mean loss over a fixed validation set: --eval-batches global batches, the same rows at every
    evaluation and for every split into processes and micro-steps; each process evaluates its share."""
    was_training = model.training
    model.eval()
    global_batch = cfg.batch_size * cfg.grad_accum * distributed.world_size
    loss_sum = torch.zeros((), device=device)
    for batch_index in range(cfg.eval_batches):
        offsets = batch_offsets(len(val_tokens), cfg.seq_len, global_batch, cfg.seed, VAL_STREAM, batch_index)
        for micro in range(cfg.grad_accum):
            rows = local_rows(micro, distributed.rank, distributed.world_size, cfg.batch_size)
            x, y = get_batch(val_tokens, offsets[rows], cfg.seq_len, device)
            with autocast(device, dtype):
                _, loss = model(x, y, return_logits=False)
            loss_sum += loss.float()
    if distributed.enabled:
        dist.all_reduce(loss_sum)
    model.train(was_training)
    return (loss_sum / (cfg.eval_batches * cfg.grad_accum * distributed.world_size)).item()


def sample_text(model, cfg: TrainConfig, device, step: int) -> str:
    return continue_text(model, get_tokenizer(), cfg.sample_prompt, cfg.sample_tokens, seed=cfg.seed + step)


def forward_backward(step_model, model, optimizer, scaler, train_tokens, step: int, cfg: TrainConfig,
                     distributed: Distributed, device, dtype, stop_requested: bool) -> tuple[float, float, float]:
    """Gradients of this process's share of step `step`'s global batch, clipped. Returns the loss averaged
    over the whole global batch, the gradient norm, and how many processes were asked to stop: the
    step's one host sync, as the three travel together. `scaler` scales the loss for float16 (whose
    small gradients would otherwise flush to zero) and divides the gradients back before clipping."""
    global_batch = cfg.batch_size * cfg.grad_accum * distributed.world_size
    offsets = batch_offsets(len(train_tokens), cfg.seq_len, global_batch, cfg.seed, TRAIN_STREAM, step)
    loss_sum = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        # this process's share of the global batch: the same rows whatever the process count
        rows = local_rows(micro, distributed.rank, distributed.world_size, cfg.batch_size)
        x, y = get_batch(train_tokens, offsets[rows], cfg.seq_len, device)
        last_micro = micro == cfg.grad_accum - 1
        # under DDP, gradients are all-reduced only once per step, after the last micro-batch
        sync = step_model.no_sync() if distributed.enabled and not last_micro else contextlib.nullcontext()
        with sync:
            with autocast(device, dtype):
                _, loss = step_model(x, y, return_logits=False)
            scaler.scale(loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().float()
    scaler.unscale_(optimizer)  # a no-op unless float16
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
    reduced = torch.stack([loss_sum / cfg.grad_accum, grad_norm.float(),
                           torch.tensor(float(stop_requested), device=device)])
    if distributed.enabled:
        dist.all_reduce(reduced)
        reduced[:2] /= distributed.world_size  # every process holds the same (synced) gradient norm
    step_loss, grad_norm, stop_votes = reduced.tolist()
    return step_loss, grad_norm, stop_votes


# ------------------------------------------------------------------ the run


def train(cfg: TrainConfig, layout: RunLayout = TRAINING) -> tuple[SmoLM135_Model, dict]:
    """Train (or resume) per `cfg`; returns the trained model and a summary of the run."""
    validate(cfg)
    distributed = setup_distributed(cfg.device)
    try:
        return _train_in_process_group(cfg, layout, distributed)
    finally:
        teardown_distributed(distributed)


def _train_in_process_group(cfg: TrainConfig, layout: RunLayout, distributed: Distributed):
    device = pick_device(cfg.device, distributed)
    configure_backends(device)
    dtype = pick_dtype(cfg.dtype, device)
    out_dir = Path(cfg.out_dir)
    checkpoint_dir = out_dir / layout.checkpoint_dir
    timestamp = time.strftime("%Y%m%d_%H%M%S")

    def make_out_dirs():
        try:
            for sub in (layout.checkpoint_dir, layout.final_dir, "logs"):
                (out_dir / sub).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot write to --out-dir {out_dir}: {error.strerror}; choose a writable folder") from None

    run_on_main(distributed, make_out_dirs)  # only rank 0 writes files; a failure stops every process
    log = RunLog(out_dir / "logs" / f"{layout.log_prefix}_{timestamp}.log" if distributed.is_main else None)
    try:
        return _train(cfg, layout, distributed, device, dtype, out_dir, checkpoint_dir, timestamp, log)
    finally:
        log.close()


def _train(cfg, layout, distributed, device, dtype, out_dir, checkpoint_dir, timestamp, log: RunLog):
    model_config = cfg.model_config()
    global_batch = cfg.batch_size * cfg.grad_accum * distributed.world_size
    tokens_per_step = global_batch * cfg.seq_len

    # Tokenize on the main process first; the others then read its cache.
    corpus = main_process_first(distributed, lambda: load_corpus(
        cfg.data, out_dir / "cache", show_progress=cfg.progress and distributed.is_main, quiet=not distributed.is_main))
    train_tokens, val_tokens = split_train_val(corpus.tokens, cfg.val_fraction)
    check_corpus_fits(corpus, train_tokens, val_tokens, cfg, model_config.vocab_size, global_batch)

    torch.manual_seed(cfg.seed)  # identical initial weights on every process and every fresh run
    model = SmoLM135_Model(model_config).to(device)
    model.gradient_checkpointing = cfg.grad_checkpointing
    optimizer = configure_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    progress = Progress()
    params = model.num_parameters()

    log.write(f"config: {cfg.to_dict()}")
    log.write(f"model: {model_config.to_dict()}")
    log.say(f"smolm135 preset {cfg.preset}: {params['total']:,} parameters ({params['non_embedding']:,} "
            f"non-embedding) on {device_description(device)}, precision {str(dtype).replace('torch.', '')}"
            + (f", {distributed.world_size} processes" if distributed.enabled else ""))
    log.say(f"data: {corpus.name}, {len(corpus.tokens):,} tokens ({len(train_tokens):,} train, "
            f"{len(val_tokens):,} validation){' from cache' if corpus.from_cache else ''}; "
            f"{global_batch} x {cfg.seq_len} = {tokens_per_step:,} tokens per step")
    if device.type == "cpu" and params["total"] > 50e6 and distributed.is_main:
        log.say(f"note: the {cfg.preset} model on CPU takes about a minute per step; "
                f"try --preset tiny for a model that learns in minutes")

    # rank 0 picks and reads the checkpoint, every process resumes from it (no shared disk needed)
    resumed = run_on_main(distributed, lambda: find_resume_state(cfg, checkpoint_dir, log), send_result_to_all=True)
    if resumed is not None:
        resume(*resumed, model, optimizer, scaler, progress, global_batch, log)
    if progress.step >= cfg.max_steps:
        log.say(f"step {progress.step} already reaches --max-steps {cfg.max_steps}: nothing to train "
                f"(raise --max-steps to train longer, or pass --resume never to start over)")
        return model, summarize(progress, progress.step, None, log, None)

    start_step = progress.step
    step_model = torch.compile(model) if cfg.compile else model
    if distributed.enabled:
        # gradient_as_bucket_view: gradients live in DDP's all-reduce buckets, not in a second copy
        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None,
                                             gradient_as_bucket_view=True)
    # the step's FLOPs are those of the global batch, so MFU compares them with every process's device
    peak = (peak_flops(device) or 0) * distributed.world_size
    flops_per_step = model.flops_per_token(cfg.seq_len) * tokens_per_step

    def save(path_kind: str) -> Path:
        state = training_state(model, optimizer, scaler, cfg, progress, corpus, global_batch)
        if path_kind == "final":
            return save_atomic(state, unused_path(out_dir / layout.final_dir / f"{layout.final_prefix}_{timestamp}.pt"))
        return save_training_checkpoint(state, checkpoint_dir, progress.step, cfg.keep_checkpoints)

    def evaluate_and_record():
        val_loss = evaluate(step_model, val_tokens, cfg, device, dtype, distributed)
        progress.history["val"].append([progress.step, val_loss])
        log.say(f"step {progress.step}: validation loss {val_loss:.4f}")

    if progress.step == 0:
        evaluate_and_record()  # the starting point: about ln(vocab) = 10.8 for a fresh model
    step_model.train()
    bar = tqdm(total=cfg.max_steps, initial=progress.step, desc="training", unit="step",
               disable=not (cfg.progress and distributed.is_main), dynamic_ncols=True)
    stopped_by = None
    with StopRequest() as stop:
        while progress.step < cfg.max_steps:
            started = time.perf_counter()
            lr = get_lr(progress.step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_loss, grad_norm, stop_votes = forward_backward(
                step_model, model, optimizer, scaler, train_tokens, progress.step, cfg, distributed, device, dtype,
                stop.signal_name is not None)
            finite = math.isfinite(step_loss) and math.isfinite(grad_norm)
            if finite:
                scaler.step(optimizer)  # optimizer.step(), unless float16 gradients overflowed
                progress.nonfinite_in_a_row = 0
            elif scaler.is_enabled() and math.isfinite(step_loss) and scaler.get_scale() >= 1:
                # float16 gradients overflowed at this loss scale: skip the update, and `update` halves the
                # scale. Common in the first steps; only below a scale of 1 is it the gradients' fault.
                log.write(f"step {progress.step}: float16 gradients overflowed at loss scale "
                          f"{scaler.get_scale():g}; update skipped, scale halved")
            else:
                progress.nonfinite_in_a_row += 1
                log.say(f"step {progress.step}: loss {step_loss} / grad norm {grad_norm} is not finite; "
                        f"update skipped ({progress.nonfinite_in_a_row} in a row)")
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            progress.step += 1
            progress.tokens_seen += tokens_per_step
            step_seconds = time.perf_counter() - started
            progress.elapsed_seconds += step_seconds
            if progress.nonfinite_in_a_row >= MAX_NONFINITE_STEPS_IN_A_ROW:
                raise UserError(f"the loss was not finite for {progress.nonfinite_in_a_row} steps in a row (up to "
                                f"step {progress.step}); the last good checkpoint in {checkpoint_dir} is kept. "
                                f"Lower --lr or check the data, then run again to resume")
            if finite:
                progress.history["train"].append([progress.step, step_loss])
            tokens_per_second = tokens_per_step / step_seconds
            if progress.step % cfg.log_every == 0:
                mfu = f" | mfu {flops_per_step / step_seconds / peak:.1%}" if peak else ""
                log.write(f"step {progress.step}/{cfg.max_steps} | loss {step_loss:.4f} | lr {lr:.3e} | "
                          f"grad_norm {grad_norm:.3f} | {tokens_per_second:,.0f} tok/s | "
                          f"{flops_per_step / step_seconds / 1e12:.2f} TFLOP/s{mfu}")
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{tokens_per_second:,.0f}", refresh=False)
            done = progress.step == cfg.max_steps
            if progress.step % cfg.eval_every == 0 or done:
                evaluate_and_record()
            if distributed.is_main and (progress.step % cfg.sample_every == 0 or done):
                log.say(f"step {progress.step} sample:\n{sample_text(model, cfg, device, progress.step)}\n")
            if stop_votes > 0 and not done:
                stopped_by = stop.signal_name or "a signal on another process"
            if progress.step % cfg.checkpoint_every == 0 or done or stopped_by:
                run_on_main(distributed, lambda: save("checkpoint"))
            if stopped_by:
                break
    bar.close()
    if distributed.enabled:
        dist.barrier()
    if stopped_by:
        log.say(f"stopped by {stopped_by} at step {progress.step}: checkpoint saved to "
                f"{checkpoint_dir / 'latest.pt'}; run the same command again to resume")
        return model, summarize(progress, start_step, None, log, stopped_by)
    final_path = run_on_main(distributed, lambda: save("final"))
    if distributed.is_main:
        plot_path = plot_losses(progress.history, out_dir / "logs" / f"{layout.log_prefix}_{timestamp}.png",
                                f"smolm135 {cfg.preset} on {corpus.name}")
        log.say(f"saved {final_path}; loss plot {plot_path}")
    return model, summarize(progress, start_step, final_path, log, None)


def summarize(progress: Progress, start_step: int, final_path: Path | None, log: RunLog,
              stopped_by: str | None) -> dict:
    this_run = [loss for step, loss in progress.history["train"] if step > start_step]
    summary = {
        "steps": progress.step,
        "start_step": start_step,
        "tokens_seen": progress.tokens_seen,
        "seconds": round(progress.elapsed_seconds, 2),
        "final_train_loss": progress.last_train_loss,
        "final_val_loss": progress.last_val_loss,
        "initial_val_loss": progress.history["val"][0][1] if progress.history["val"] else None,
        "first_train_loss_this_run": this_run[0] if this_run else None,
        "final_model_path": str(final_path) if final_path else None,
        "log_path": str(log.path) if log.path else None,
        "stopped_by": stopped_by,
    }
    if this_run:
        log.say(f"train loss over steps {start_step + 1}-{progress.step}: first {this_run[0]:.4f}, "
                f"last {this_run[-1]:.4f}, mean {sum(this_run) / len(this_run):.4f}")
    log.say("summary: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return summary


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def unused_path(path: Path) -> Path:
    """`path`, or `path` with _2, _3, ... before the suffix when two runs finish in the same second."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    _, summary = train(config_from_args(args))
    if summary["stopped_by"] in ("SIGINT", "SIGTERM"):
        sys.exit(128 + signal.Signals[summary["stopped_by"]].value)  # the shell's convention for signals
    return summary


if __name__ == "__main__":
    run_cli(main)
