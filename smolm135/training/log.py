"""The run's log file and the tracker its numbers also go to (--report-to); only the main process writes
either."""
from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

from smolm135.training.tracking import Tracker


class RunLog:
    """Appends timestamped lines to logs/<name>.log; `say` also prints them above the progress bar.
    With `writes` False (the other processes of a torchrun run) it neither writes nor prints.

    The file is created by `open`, once the run has passed its checks: until then lines are held in memory,
    so a refused run leaves no log behind, and an accepted one still has its first lines in its log."""

    def __init__(self, path: Path, writes: bool = True):
        self.path, self.writes = path, writes
        self._file = None
        self._held: list[str] | None = [] if writes else None  # timestamped lines written before `open`
        self.tracker = Tracker()  # --report-to none; the trainer sets the run's once it is accepted

    def open(self) -> None:
        """Create the log file and write the lines held so far (only on the process that writes)."""
        if self._held is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        held, self._held = self._held, None
        self._append(held)

    def write(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        lines = [f"{stamp} {line}\n" for line in message.splitlines() or [""]]
        if self._held is not None:
            self._held.extend(lines)
        else:
            self._append(lines)

    def _append(self, lines: list[str]) -> None:
        if self._file is None:
            return
        try:
            self._file.writelines(lines)
        except OSError as error:  # a full disk: the log is lost, the run and its checkpoints are not
            self._file = None
            tqdm.write(f"warning: could not write the log {self.path} ({error.strerror or error}); going on "
                       f"without it")

    def say(self, message: str) -> None:
        self.write(message)
        if self.writes:
            tqdm.write(message)

    def track(self, step: int, scalars: dict[str, float]) -> None:
        """The step's numbers, to the tracker (the lines beside them are for the log file)."""
        if self.writes:
            self.tracker.log(scalars, step)

    def close(self) -> None:
        self.tracker.close()
        self.tracker = Tracker()
        if self._file is not None:
            self._file.close()
            self._file = None
