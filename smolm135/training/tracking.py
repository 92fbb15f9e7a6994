"""Experiment tracking, as transformers' `report_to`: the numbers the run's log holds (train loss, learning
rate, gradient norm, tokens seen; validation loss and bits per byte) also go to TensorBoard, Weights & Biases
or Trackio. Each backend is an optional extra (pyproject.toml), imported by `tracking_backend` before the run
writes anything, so a missing one is a one-line refusal and not a run that fails after its first files."""
from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from smolm135.errors import import_extra

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
PROJECT = "smolm135"  # the wandb and trackio project every run reports to


class Tracker:
    """Where a run's scalars go besides its log; this base one sends them nowhere (--report-to none)."""

    def log(self, scalars: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    """Event files in `folder` (logs/training_<timestamp>/): `tensorboard --logdir <out-dir>/logs` shows every run."""

    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a killed run keeps what it logged, as its log file does

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A wandb run under `folder`. Offline unless WANDB_MODE says otherwise: a training run never waits on
    the network or a login prompt; `wandb sync` uploads the run later, WANDB_MODE=online streams it."""

    def __init__(self, wandb: ModuleType, folder: Path, name: str, config: dict):
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=PROJECT, name=name, config=config, dir=str(folder),
                              mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker(Tracker):
    """A trackio run (local-first: its own database under ~/.cache/huggingface/trackio unless configured)."""

    def __init__(self, trackio: ModuleType, name: str, config: dict):
        self.trackio = trackio
        self.run = trackio.init(project=PROJECT, name=name, config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.trackio.log(scalars, step=step)

    def close(self) -> None:
        self.trackio.finish()


def tracking_backend(report_to: str) -> ModuleType | None:
    """The backend's package for `report_to`, imported now (a missing extra is a UserError naming its install);
    None for none."""
    if report_to == "none":
        return None
    return import_extra(report_to, report_to, f"--report-to {report_to}")


def start_tracker(report_to: str, folder: Path, name: str, config: dict) -> Tracker:
    """The tracker for `report_to` (one of REPORT_TO); TensorBoard and wandb write under `folder`."""
    backend = tracking_backend(report_to)
    if report_to == "tensorboard":
        return TensorBoardTracker(folder)
    if report_to == "wandb":
        return WandbTracker(backend, folder, name, config)
    if report_to == "trackio":
        return TrackioTracker(backend, name, config)
    return Tracker()
