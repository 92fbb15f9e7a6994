"""Writes that fail or are cut short: saying why in words a user can act on (which disk, how much space it
has, how much the write needs, or the file size limit when that is what was hit; a full disk otherwise
surfaces as `unexpected pos` from torch or an IoError from safetensors), and the temporary files and folders
written beside a target: their names, and telling (and removing) those of a killed writer from those of a live
one."""
from __future__ import annotations

import errno
import os
import resource
import re
import shutil
from pathlib import Path

# safetensors reports the OS error inside its own message, as `I/O error: File too large (os error 27)` or
# `IoError(Os { code: 28, ..., message: "No space left on device" })` depending on its version
_RUST_IO_MESSAGE = re.compile(r'message: "([^"]+)"|I/O error: (.+?) \(os error \d+\)')
_RUST_IO_CODE = re.compile(r"code: (\d+)|\(os error (\d+)\)")
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


def error_number(error: BaseException) -> int | None:
    """The OS's errno of a failed write (errno.ENOSPC, errno.EFBIG), whoever raised it; None if it has none."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    found = _RUST_IO_CODE.search(str(error))
    return int(found.group(1) or found.group(2)) if found else None


def file_size_limit() -> str:
    """This process's file size limit (`ulimit -f`), in words."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return "unlimited" if soft == resource.RLIM_INFINITY else megabytes(soft)


def megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.0f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:,.1f} kB"


def write_failure(what: str, where: Path, error: BaseException, needed_bytes: int | None) -> str:
    """One sentence: what could not be written, why, the disk, its free space and what the write needs (when
    known); or, when the file outgrew the process's file size limit (EFBIG), that limit, since the disk may
    have room."""
    needs = f"; this needs about {megabytes(needed_bytes)}" if needed_bytes is not None else ""
    if error_number(error) == errno.EFBIG:
        return (f"could not write {what}: {reason(error)} (the file size limit (ulimit -f) is "
                f"{file_size_limit()}{needs})")
    disk = mount_point(where)
    try:
        free = f"{megabytes(shutil.disk_usage(disk).free)} free"
    except OSError:
        free = "free space unknown"
    return f"could not write {what}: {reason(error)} (the disk at {disk} has {free}{needs})"


def make_room(error: BaseException, elsewhere: str) -> str:
    """What to do about a failed write: raise the file size limit it hit, or free disk space (or write
    `elsewhere`, e.g. "another --out-dir")."""
    if error_number(error) == errno.EFBIG:
        return "raise the file size limit (ulimit -f unlimited)"
    return f"free some space (or choose {elsewhere})"


def umask() -> int:
    """The process's umask, read without changing it where Linux says it (os.umask can only read it by setting
    it, which another thread creating a file at that moment would see)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_mode(path: str | os.PathLike) -> None:
    """Give a file written through a temporary file the mode a plain open(path, "w") gives (0o666 less the
    umask): mkstemp's and safetensors' temporary files are 0600, and the rename keeps that, so the file
    would be unreadable to the group and others that can read every other file beside it."""
    os.chmod(path, 0o666 & ~umask())


def give_safetensors_default_mode(folder: Path) -> None:
    """give_default_mode to every .safetensors file in `folder`: safetensors writes through a temporary file of
    mode 0600, and so does everything that saves through it (transformers' and peft's save_pretrained)."""
    for weights in Path(folder).glob("*.safetensors"):
        give_default_mode(weights)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs: a temporary file named after a live writer is still being written."""
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # another user's process, or cannot tell: leave its file alone
    return True


# ------------------------------------------------------------------ temporary files and folders of a writer

TEMPORARY = "tmp"  # the kind of a file or folder written beside its target and renamed over it when whole


def temporary_path(path: Path, kind: str = TEMPORARY) -> Path:
    """Where this process writes `path` (a file or a folder) before renaming it into place: `.<name>.<kind><pid>`
    beside it, hidden, and named after the writer, so that a later run tells what a killed writer left from what
    a live one is still writing. `kind` tells apart several such paths of one target (an export's staging folder
    and the previous export it moved aside)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}{os.getpid()}")


# `temporary_path`'s name, then those earlier versions gave the same paths: `<name>.tmp<pid>` (the token and
# tokenizer caches) and `<name>_partial_<pid>`, `<name>_replaced_<pid>` (exports), so that what a killed writer
# of an earlier version left is removed (or put back) too. Earlier names without a process id (the default
# corpus's `input.txt.tmp`, the probes' `.probes-*.tmp`) cannot tell a live writer from a dead one: left alone.
_TEMPORARY_NAMES = (r"\.(.+)\.{kind}(\d+)", r"(.+)\.{kind}(\d+)", r"(.+)_{kind}_(\d+)")


def left_by_dead_writer(path: Path, kind: str = TEMPORARY) -> Path | None:
    """The target that `path` stood in for, when `path` is a `temporary_path` of that `kind` (or was named as
    one by an earlier version) whose writer no longer runs; None when it is not one, or its writer is still
    writing it."""
    for pattern in _TEMPORARY_NAMES:
        found = re.fullmatch(pattern.format(kind=re.escape(kind)), Path(path).name)
        if found is not None:
            break
    else:
        return None
    if process_alive(int(found.group(2))):
        return None
    return Path(path).with_name(found.group(1))


def remove_interrupted_writes(folder: Path, targets: tuple[str, ...] | None = None,
                              kind: str = TEMPORARY) -> list[Path]:
    """Delete the temporary files and folders that killed writers left in `folder` (only those standing in for
    the names in `targets`, when given), never those of a writer still running; returns what was deleted."""
    folder = Path(folder)
    removed = []
    for leftover in sorted(folder.iterdir()) if folder.is_dir() else []:
        target = left_by_dead_writer(leftover, kind)
        if target is None or (targets is not None and target.name not in targets):
            continue
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small file (a cache, an answer file, the built-in data) so that no reader ever sees half of it:
    its folder made, what killed writers of it left removed, the text written to a `temporary_path`, flushed
    to disk (a crash right after the rename would otherwise leave an empty file) and renamed over `path`.
    A failed write removes its temporary file and raises its OSError for the caller to word."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_interrupted_writes(path.parent, (path.name,))
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # gone after the rename; what a failed write left otherwise
