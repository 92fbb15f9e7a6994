"""A Python snippet run as a user's own program would run it: a new interpreter, started in an empty temporary
folder, without PYTHONPATH, with the Hugging Face Hub switched off (a local folder needs no network: the run
proves it) and with this project's own modules unimportable even where `pip install -e .` put them on the path
(a downloaded model must load without them: the run proves that too). What the snippet saves is read back; a
snippet that fails is a UserError ending with the last lines it wrote."""
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

# Our top-level import names (pyproject.toml's packages and py-modules). Code loaded with trust_remote_code
# lives under transformers_modules.<folder>, so a folder's own copy of a file is not caught by this.
OUR_IMPORT_NAMES = ("smolm135", "smollm135_model", "modeling_smolm135")

# Put first in the fresh process: any import of one of our modules fails there, as on a user's machine.
_WITHOUT_OUR_CODE = f"""
import sys as _sys
class _RefuseOurModules:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {OUR_IMPORT_NAMES!r}:
            raise ImportError(f"{{name}} is this project's own code, which a downloaded model must not need")
        return None
_sys.meta_path.insert(0, _RefuseOurModules())
"""


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
        result = subprocess.run([sys.executable, "-c", _WITHOUT_OUR_CODE + script, str(out_path), *args], cwd=workdir,
                                env={**clean_environment(), **(extra_env or {})}, capture_output=True, text=True)
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip().splitlines()
            tail = "\n".join(output[-OUTPUT_TAIL_LINES:])
            raise UserError(f"{failure(output)}; its output ends with:\n{tail}")
        return torch.load(out_path, weights_only=True)
