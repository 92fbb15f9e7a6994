"""The run's log file (only the main process writes it)."""
from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm


class RunLog:
    """Appends timestamped lines to logs/<name>.log; `say` also prints them above the progress bar.
    With `writes` False (the other processes of a torchrun run) it neither writes nor prints."""

    def __init__(self, path: Path, writes: bool = True):
        self.path, self.writes = path, writes
        self._file = None
        if writes:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8", buffering=1)

    def write(self, message: str) -> None:
        if self._file is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            try:
                for line in message.splitlines() or [""]:
                    self._file.write(f"{stamp} {line}\n")
            except OSError as error:  # a full disk: the log is lost, the run and its checkpoints are not
                self._file = None
                tqdm.write(f"warning: could not write the log {self.path} ({error.strerror or error}); going on "
                           f"without it")

    def say(self, message: str) -> None:
        self.write(message)
        if self.writes:
            tqdm.write(message)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
