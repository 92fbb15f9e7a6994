"""Checkpoint files: written atomically, loaded without running code, checked before use.

A checkpoint is a dict of plain data and tensors (see `Model_smollm135_trainer.training_state`), so
`torch.load(path, weights_only=True)` reads it and a checkpoint from a stranger cannot run code.

Writing goes to a temporary file in the same folder, is flushed and fsynced, then renamed over the target:
a kill at any instant leaves either the previous file or the new one, never a torn one.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from smollm135_model import ModelConfig, SmoLM135_Model, clean_state_dict

from .errors import UserError

CHECKPOINT_FORMAT = "smolm135-checkpoint"
REQUIRED_KEYS = ("model_state_dict", "model_config")
LATEST = "latest.pt"
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
FINAL_MODEL_GLOB = "models/final_model_*.pt"
TRAINED_MODEL_GLOBS = (FINAL_MODEL_GLOB, "continued_models/continued_model_*.pt")
_TIMESTAMP = re.compile(r"_(\d{8}_\d{6})(?:_\d+)?\.pt$")
TRAINING_INFO_FILE = "training_info.json"  # a checkpoint's training facts, beside an exported model's weights


class CheckpointError(UserError):
    """A checkpoint file that cannot be read (missing, truncated, corrupt, or not ours)."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every platform can open a folder (Windows); the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(state: dict, path: str | os.PathLike) -> Path:
    """torch.save `state` to `path` so that `path` is never seen half-written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path}: {error.strerror or error}; any previous checkpoint there "
                        f"is intact. Free some disk space or choose a writable --out-dir") from None
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with weights_only=True; CheckpointError if it is missing, torn or not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a torn or foreign file
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt: "
                              f"{type(error).__name__})") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a smolm135 checkpoint (no model_state_dict/model_config)")
    return state


def save_training_checkpoint(state: dict, checkpoint_dir: Path, step: int, keep: int) -> Path:
    """Write checkpoints/step_<N>.pt, then point checkpoints/latest.pt at it, then drop all but the newest
    `keep` step files. latest.pt is replaced in one rename, after the new file is safely on disk."""
    step_path = save_atomic(state, checkpoint_dir / f"step_{step:07d}.pt")
    latest = checkpoint_dir / LATEST
    tmp_link = checkpoint_dir / f".{LATEST}.tmp{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    try:
        os.link(step_path, tmp_link)  # a hard link: latest.pt costs no extra disk space
    except OSError:
        shutil.copyfile(step_path, tmp_link)
    os.replace(tmp_link, latest)
    _fsync_dir(checkpoint_dir)
    for old in step_checkpoints(checkpoint_dir)[keep:]:
        old.unlink(missing_ok=True)
    return latest


def step_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """step_<N>.pt files, newest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := _STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def newest_intact_checkpoint(checkpoint_dir: Path, warn=print) -> tuple[Path, dict] | None:
    """latest.pt if it loads, else the newest step file that does; None when there is no checkpoint.
    A corrupt file is renamed to `<name>.corrupt` (kept as evidence, out of the way of the next save);
    when every checkpoint is corrupt, CheckpointError: never silently start over."""
    candidates = [p for p in [checkpoint_dir / LATEST] + step_checkpoints(checkpoint_dir) if p.exists()]
    for path in candidates:
        try:
            return path, load_checkpoint(path)
        except CheckpointError as error:
            evidence = path.with_name(path.name + ".corrupt")
            os.replace(path, evidence)
            warn(f"warning: {error}; moved it to {evidence}")
    if candidates:
        raise CheckpointError(f"no intact checkpoint left in {checkpoint_dir} (the corrupt ones were renamed "
                              f"*.corrupt): pass --resume never to start fresh, or --resume PATH")
    return None


def newest_trained_model(search_dirs: list[Path], patterns=TRAINED_MODEL_GLOBS) -> Path | None:
    """The newest final or continued model in any of the folders, by the timestamp in its name, then its
    modification time; None when there is none."""
    candidates = [path for folder in search_dirs for pattern in patterns for path in Path(folder).glob(pattern)]

    def newness(path: Path):
        match = _TIMESTAMP.search(path.name)
        return (match.group(1) if match else "", path.stat().st_mtime)

    return max(candidates, key=newness, default=None)


def model_from_checkpoint(state: dict, source: str | os.PathLike = "checkpoint") -> SmoLM135_Model:
    """The native model a checkpoint describes, with its weights loaded, in eval mode."""
    model = SmoLM135_Model(ModelConfig.from_dict(state["model_config"]))
    try:
        model.load_state_dict(clean_state_dict(state["model_state_dict"]))
    except RuntimeError as error:
        raise CheckpointError(f"{source}: the weights do not fit the model config stored with them "
                              f"({str(error).splitlines()[0]})") from None
    return model.eval()
