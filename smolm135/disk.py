"""Writes that fail or are cut short: saying why in words a user can act on (which disk, how much space it
has, how much the write needs; a full disk otherwise surfaces as `unexpected pos` from torch or an IoError
from safetensors), and telling the temporary files of a killed writer from those of a live one."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

# safetensors reports the OS error inside its own message, as `I/O error: File too large (os error 27)` or
# `IoError(Os { code: 28, ..., message: "No space left on device" })` depending on its version
_RUST_IO_MESSAGE = re.compile(r'message: "([^"]+)"|I/O error: (.+?) \(os error \d+\)')
WRITE_ERRORS: tuple[type[BaseException], ...] = (OSError,)
try:
    from safetensors import SafetensorError

    WRITE_ERRORS += (SafetensorError,)
except ImportError:  # an older safetensors without the name: its errors are OSErrors there
    pass


def mount_point(path: Path) -> Path:
    """The mount point of the disk that holds `path` (its nearest existing folder)."""
    path = Path(os.path.abspath(path))
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def reason(error: BaseException) -> str:
    """The OS's words for a failed write ('No space left on device'), whoever raised it."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    found = _RUST_IO_MESSAGE.search(str(error))
    if found:
        return found.group(1) or found.group(2)
    return (str(error).splitlines() or [type(error).__name__])[0]


def megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.0f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:,.1f} kB"


def write_failure(what: str, where: Path, error: BaseException, needed_bytes: int) -> str:
    """One sentence: what could not be written, why, the disk, its free space and what the write needs."""
    disk = mount_point(where)
    try:
        free = f"{megabytes(shutil.disk_usage(disk).free)} free"
    except OSError:
        free = "free space unknown"
    return (f"could not write {what}: {reason(error)} (the disk at {disk} has {free}; this needs about "
            f"{megabytes(needed_bytes)})")


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs: a temporary file named after a live writer is still being written."""
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # another user's process, or cannot tell: leave its file alone
    return True
