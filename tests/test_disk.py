"""Files and folders written beside their target are named after their writer, what a killed writer left is
removed and a live writer's is not; a fresh process runs a snippet as a user's program would."""
import errno
import os
import tomllib

import pytest

from smolm135.errors import UserError
from smolm135.runtime import disk
from smolm135.runtime.disk import left_by_dead_writer, remove_interrupted_writes, temporary_path, write_text_atomically
from smolm135.runtime.fresh_process import OUR_IMPORT_NAMES, run_fresh
from conftest import REPO_ROOT

DEAD_PID = 999999999  # a pid no process has


def test_a_temporary_path_is_hidden_beside_its_target_and_names_its_writer(tmp_path):
    assert temporary_path(tmp_path / "step_0000010.pt") == tmp_path / f".step_0000010.pt.tmp{os.getpid()}"
    assert temporary_path(tmp_path / "out-hf", "partial") == tmp_path / f".out-hf.partial{os.getpid()}"
    assert left_by_dead_writer(temporary_path(tmp_path / "a.json")) is None  # this process still writes it
    assert left_by_dead_writer(tmp_path / f".a.json.tmp{DEAD_PID}") == tmp_path / "a.json"
    assert left_by_dead_writer(tmp_path / f".a.json.tmp{DEAD_PID}", "partial") is None  # another kind
    assert left_by_dead_writer(tmp_path / ".bashrc") is None
    # as earlier versions named them: a cache's, an export's staging folder and the export it moved aside
    assert left_by_dead_writer(tmp_path / f"tokens_ab.bin.tmp{DEAD_PID}") == tmp_path / "tokens_ab.bin"
    assert left_by_dead_writer(tmp_path / f"out-hf_partial_{DEAD_PID}", "partial") == tmp_path / "out-hf"
    assert left_by_dead_writer(tmp_path / f"out-hf_replaced_{DEAD_PID}", "replaced") == tmp_path / "out-hf"
    assert left_by_dead_writer(tmp_path / f"out-hf_partial_{os.getpid()}", "partial") is None  # still writing
    assert left_by_dead_writer(tmp_path / "input.txt.tmp") is None  # names no writer: may be a live one's


def test_only_what_dead_writers_left_is_removed(tmp_path):
    dead_file, dead_folder = tmp_path / f".a.json.tmp{DEAD_PID}", tmp_path / f".b.tmp{DEAD_PID}"
    dead_file.write_text("half")
    dead_folder.mkdir()
    (dead_folder / "inside").write_text("half")
    kept = [temporary_path(tmp_path / "c.json"), tmp_path / ".notes.tmpdraft", tmp_path / "a.json",
            tmp_path / f".x.partial{DEAD_PID}"]
    for path in kept:
        path.write_text("kept")
    assert remove_interrupted_writes(tmp_path, ("a.json",)) == [dead_file]
    assert remove_interrupted_writes(tmp_path) == [dead_folder]
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert remove_interrupted_writes(tmp_path / "missing") == []


def test_a_small_file_is_written_whole_and_a_killed_writers_leftover_is_removed(tmp_path):
    target = tmp_path / "made" / "answers.json"
    target.parent.mkdir()
    (target.parent / f".answers.json.tmp{DEAD_PID}").write_text("half")
    write_text_atomically(target, "whole")
    assert [p.name for p in target.parent.iterdir()] == ["answers.json"] and target.read_text() == "whole"


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_a_small_file_that_cannot_be_written_leaves_the_old_one_and_no_temporary_file(code, tmp_path, monkeypatch):
    target = tmp_path / "answers.json"
    target.write_text("old")

    def full(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(disk.os, "fsync", full)
    with pytest.raises(OSError) as raised:
        write_text_atomically(target, "new")
    assert raised.value.errno == code  # for the caller to word
    assert list(tmp_path.iterdir()) == [target] and target.read_text() == "old"


@pytest.mark.slow
def test_a_fresh_process_runs_elsewhere_offline_without_pythonpath_and_reports_its_failure(tmp_path):
    script = ("import os, sys, torch\n"
              "torch.save({'cwd': os.getcwd(), 'args': sys.argv[2:], 'offline': os.environ.get('HF_HUB_OFFLINE'),\n"
              "            'pythonpath': os.environ.get('PYTHONPATH'), 'extra': os.environ.get('EXTRA')}, sys.argv[1])\n")
    result = run_fresh(script, ["a", "b"], lambda output: "unused", extra_env={"EXTRA": "yes"})
    assert result["args"] == ["a", "b"] and result["offline"] == "1" and result["pythonpath"] is None
    assert result["extra"] == "yes" and os.path.realpath(result["cwd"]) != os.path.realpath(os.getcwd())
    with pytest.raises(UserError, match=r"the snippet failed \(2 lines\); its output ends with:\nfirst\nsecond"):
        run_fresh("import sys; print('first\\nsecond', file=sys.stderr); sys.exit(3)", [],
                  lambda output: f"the snippet failed ({len(output)} lines)")


@pytest.mark.slow
@pytest.mark.parametrize("module", ["smollm135_model", "smolm135.errors", "modeling_smolm135"])
def test_a_fresh_process_cannot_import_our_code_even_where_it_is_on_the_path(module):
    """`pip install -e .` puts the repository on every process's path; a downloaded model has no such luck."""
    with pytest.raises(UserError, match=f"{module.split('.')[0]} is this project's own code"):
        run_fresh(f"import {module}", [], lambda output: "imported", extra_env={"PYTHONPATH": str(REPO_ROOT)})


def test_the_names_a_fresh_process_refuses_are_the_ones_pyproject_installs():
    setuptools = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    installed = {name.split(".")[0] for name in setuptools["packages"]} | set(setuptools["py-modules"])
    assert set(OUR_IMPORT_NAMES) == installed
