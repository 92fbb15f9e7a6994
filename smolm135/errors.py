"""One exception type for mistakes a user can fix, the command-line wrapper that prints it, the argument
parser whose own errors are one line too, and what counts as a whole number or a number wherever a flag, a
checkpoint or a file gives one."""
from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from types import ModuleType
from typing import Callable


class UserError(Exception):
    """A problem with the user's input or environment; the message names it and says what to do."""


def is_int(value) -> bool:
    """A whole number: an int, and not a bool (which Python counts as one, so `True` would pass for 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value, finite: bool = True) -> bool:
    """A real number: an int or a float, not a bool; finite unless `finite=False` (a recorded loss may be NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (not finite or math.isfinite(value))


# An empty path is the current folder to pathlib (Path("") == Path(".")), so `--out-dir ""` would write there and
# `--checkpoint ""` would quietly mean "the default": a flag given as empty is refused instead.
EMPTY_PATH_ADVICE = "give a path, or leave the flag out for its default"


def path_argument(value: str) -> str:
    """argparse's `type` for a flag that names a file or folder: an empty value is refused (EMPTY_PATH_ADVICE)."""
    if not value.strip():
        raise argparse.ArgumentTypeError(f"is empty: {EMPTY_PATH_ADVICE}")
    return value


def extra_install(extra: str) -> str:
    """The command that installs the optional `extra` (pyproject.toml's optional-dependencies)."""
    return f'pip install -e ".[{extra}]"'


# The README's install: a package in requirements.txt is missing only from an environment set up before it joined
# them (pyarrow did), and `pip install -r requirements.txt` again brings it.
REQUIREMENTS_INSTALL = "pip install -r requirements.txt"


def import_extra(module: str, extra: str, feature: str) -> ModuleType:
    """`module`, which only the optional `extra` installs; without it, a UserError naming the install command,
    not a ModuleNotFoundError traceback."""
    return _import_or_refuse(module, feature, f"an optional extra: {extra_install(extra)}")


def import_required(module: str, feature: str) -> ModuleType:
    """`module`, which the README's install gives (requirements.txt); without it, a UserError naming that
    install, not a ModuleNotFoundError traceback."""
    return _import_or_refuse(module, feature, f"which the install gives: {REQUIREMENTS_INSTALL}")


def _import_or_refuse(module: str, feature: str, install: str) -> ModuleType:
    package = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        # missing: the module or a package it is part of; anything else the package needs missing is a bug
        if not f"{module}.".startswith(f"{error.name}."):
            raise
        raise UserError(f"{feature} needs the {package} package, {install} in the project's folder") from None


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's main(): a UserError becomes one line on stderr and exit status 2, not a traceback."""
    try:
        main()
    except UserError as error:
        if speaks_for_its_node():
            print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if speaks_for_its_node():
            print("interrupted", file=sys.stderr)
        sys.exit(130)


def speaks_for_its_node() -> bool:
    """Whether this process prints what every process of a run would print alike before they share a main
    one (a UserError: the trainer checks alike everywhere and shares what one process finds; a note on the
    command line). Under torchrun only the first process of each node does: one line per node's console
    instead of one per GPU."""
    return os.environ.get("LOCAL_RANK", "0") == "0" or int(os.environ.get("WORLD_SIZE", "1")) <= 1


class CommandLineParser(argparse.ArgumentParser):
    """The scripts' argument parser (the description keeps its line breaks). A flag it does not know or a
    value of the wrong kind is one line and exit status 2, like every other bad input, where argparse
    prints its whole usage text first (30 lines for the trainer) and the error last."""

    def __init__(self, description: str | None = None, **kwargs):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        if speaks_for_its_node():
            print(f"error: {message} ({self.prog} --help lists the flags)", file=sys.stderr)
        sys.exit(2)
