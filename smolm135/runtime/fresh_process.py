"""A Python snippet run as a user's own program would run it: a new interpreter, started in an empty temporary
folder (so no file of this repository is importable from the working directory), without PYTHONPATH and with the
Hugging Face Hub switched off (a local folder needs no network: the run proves it). What the snippet saves is
read back; a snippet that fails is a UserError ending with the last lines it wrote."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch

from smolm135.errors import UserError

OUTPUT_TAIL_LINES = 15  # enough of a traceback to see where it failed, short enough to read in a terminal


def clean_environment() -> dict[str, str]:
    """This process's environment without PYTHONPATH, and offline."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_fresh(script: str, args: Sequence[str], failure: Callable[[list[str]], str],
              extra_env: dict[str, str] | None = None) -> dict:
    """Run `script` as `python -c script OUT_PATH *args` in a fresh process with `clean_environment()` (and
    `extra_env`), and return what it torch.saved to OUT_PATH (a dict of tensors and plain data, read with
    weights_only). If it exits non-zero: a UserError, `failure(its output lines)` then the last of them."""
    with tempfile.TemporaryDirectory() as workdir:
        out_path = Path(workdir) / "result.pt"
        result = subprocess.run([sys.executable, "-c", script, str(out_path), *args], cwd=workdir,
                                env={**clean_environment(), **(extra_env or {})}, capture_output=True, text=True)
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip().splitlines()
            tail = "\n".join(output[-OUTPUT_TAIL_LINES:])
            raise UserError(f"{failure(output)}; its output ends with:\n{tail}")
        return torch.load(out_path, weights_only=True)
