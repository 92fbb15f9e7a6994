"""More steps from a finished model, through the trainer's own loop (the script `continue_training.py` runs `main`)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from smolm135.training.trainer import train
from smollm135_model import ModelConfig
from smolm135.checkpoint import (
    CONTINUED,
    FINAL_MODEL_GLOB,
    Checkpoint,
    CheckpointError,
    NewerCheckpointError,
    load_checkpoint,
    newest_intact_checkpoint,
    newest_trained_model,
)
from smolm135.data.corpus import DEFAULT_DATA
from smolm135.errors import EMPTY_PATH_ADVICE, CommandLineParser, UserError, is_int, is_number, path_argument
from smolm135.training.config import TrainConfig, add_train_arguments

DEFAULT_EXTRA_STEPS = 50


def newest_final_model(out_dir: str | Path) -> Path:
    """The newest models/final_model_<timestamp>.pt under out_dir."""
    newest = newest_trained_model([Path(out_dir)], patterns=(FINAL_MODEL_GLOB,))
    if newest is None:
        raise UserError(f"no {FINAL_MODEL_GLOB} under {out_dir}: train a model first "
                        f"with `python Model_smollm135_trainer.py` (or pass --checkpoint PATH)")
    return newest


def continued_config(source: Checkpoint, steps: int, out_dir: str, data: str | None = None,
                     lr: float | None = None, **overrides) -> TrainConfig:
    """The original run's recipe, for the checkpoint's own model, extended by `steps`. The cosine keeps its
    original horizon, so the learning rate continues from where the schedule was (the floor, after a full
    run). `lr` instead sets a constant learning rate for the added steps. The text is `data`, else the
    default: never a path the checkpoint names (a file from someone else must not pick what is read)."""
    recipe = {"preset": "custom"} | source.train_config  # a checkpoint without a recipe names no preset
    original = TrainConfig.from_dict(recipe, model=ModelConfig.from_dict(source.model_config))
    # a continuation counts steps, not minutes: the original run's budget is spent; a template the original run
    # added with --chat-template is the model's own now, recorded with its tokenizer
    cfg = replace(original, max_steps=source.progress.step + steps, lr_decay_steps=original.decay_steps,
                  minutes=0.0, budgeted_steps=None, chat_template=None, init_from=source.source, resume="never",
                  out_dir=out_dir, data=data or DEFAULT_DATA, **overrides)
    if lr is not None:
        cfg = replace(cfg, lr=lr, min_lr=lr, warmup_steps=0)
    return cfg


def interrupted_continuation(cfg: TrainConfig) -> Path | None:
    """The checkpoint of an unfinished continuation of the same model, to resume rather than restart.
    A finished one is not resumed: every call adds `steps` to the source model. A damaged latest.pt is set aside
    and the newest intact step file taken, as the trainer's auto-resume does; only when none is left does the
    continuation start over from its source, and it says so."""
    layout = CONTINUED.under(cfg.out_dir)
    try:
        checkpoint = newest_intact_checkpoint(layout.checkpoint_dir)
    except NewerCheckpointError:
        raise
    except CheckpointError as error:
        print(f"warning: {error}; the continuation starts over from {cfg.init_from}")
        return None
    if checkpoint is None:
        return None
    unfinished = checkpoint.progress.step < cfg.max_steps
    final_missing = checkpoint.final_model is not None and not (layout.final_dir / checkpoint.final_model).exists()
    own = checkpoint.started_from == cfg.init_from
    return Path(checkpoint.source) if own and (unfinished or final_missing) else None


def continue_training(checkpoint: str | None = None, steps: int = DEFAULT_EXTRA_STEPS, out_dir: str = ".",
                      data: str | None = None, lr: float | None = None, **overrides):
    """Continue a finished model for `steps` more steps; returns (model, summary) like `train`."""
    if not (is_int(steps) and steps > 0):
        raise UserError(f"--steps must be a positive whole number (got {steps})")
    if lr is not None and not (is_number(lr) and lr > 0):  # checked before any file is read
        raise UserError(f"--lr must be a positive number (got {lr})")
    for flag, path in (("--checkpoint", checkpoint), ("--data", data), ("--out-dir", out_dir)):
        if path is not None and not str(path).strip():  # "" is not "the default": it is a path left empty
            raise UserError(f"{flag} is empty: {EMPTY_PATH_ADVICE}")
    source = load_checkpoint(Path(checkpoint) if checkpoint else newest_final_model(out_dir))
    cfg = continued_config(source, steps, out_dir, data, lr, **overrides)
    facts = source.facts
    print(f"continuing {source.source} from step {facts.step} (train loss {facts.train_loss}, "
          f"validation loss {facts.val_loss}) for {steps} more steps on {cfg.data}")
    trained_on = source.train_config.get("data")
    if data is None and isinstance(trained_on, str) and Path(trained_on).name != Path(cfg.data).name:
        print(f"note: the model was trained on {Path(trained_on).name}; pass --data to continue on that text")
    unfinished = interrupted_continuation(cfg)
    model, summary = train(replace(cfg, resume=str(unfinished)) if unfinished else cfg, CONTINUED)
    summary["continued_from"] = source.source
    return model, summary


def main(argv: list[str] | None = None) -> dict:
    parser = CommandLineParser(__doc__)
    parser.add_argument("--checkpoint", type=path_argument, default=None,
                        help=f"model to continue (default: newest {FINAL_MODEL_GLOB})")
    parser.add_argument("--steps", type=int, default=DEFAULT_EXTRA_STEPS, help="steps to add")
    parser.add_argument("--data", type=path_argument, default=None,
                        help=f"text to train on (default: {DEFAULT_DATA}, as for the trainer; the checkpoint's own "
                             f"data path is never used)")
    parser.add_argument("--text-field", default=None, help="the column holding the text in .jsonl/.parquet data "
                        "(default: the original run's)")
    parser.add_argument("--lr", type=float, default=None, help="constant learning rate for the added steps "
                        "(default: the original schedule continues)")
    add_train_arguments(parser, only={"out_dir", "device", "dtype", "compile", "progress", "allow_binary",
                                      "report_to"})
    args = parser.parse_args(argv)
    _, summary = continue_training(args.checkpoint, args.steps, args.out_dir, args.data, args.lr,
                                   device=args.device, dtype=args.dtype, compile=args.compile,
                                   progress=args.progress, allow_binary=args.allow_binary,
                                   report_to=args.report_to,
                                   **({"text_field": args.text_field} if args.text_field else {}))
    return summary
