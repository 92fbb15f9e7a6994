"""Nothing is lost to a kill or a full disk: a run killed at any moment, inside any write, ends with its final
model bitwise equal to an uninterrupted run's; a full disk is one line, leaves no temporary file, keeps the
previous checkpoint, and the run completes once there is space again."""
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, limit_file_size

pytestmark = pytest.mark.slow  # every test starts the trainer in fresh interpreters and kills it

TRAINER = str(REPO_ROOT / "Model_smollm135_trainer.py")
MAX_STEPS = 10


def trainer_command(corpus_file: Path, out_dir: Path, max_steps: int = MAX_STEPS) -> list[str]:
    return [sys.executable, TRAINER, "--data", str(corpus_file), "--out-dir", str(out_dir), "--preset", "tiny",
            "--device", "cpu", "--dtype", "float32", "--no-progress", "--batch-size", "4", "--seq-len", "16",
            "--max-steps", str(max_steps), "--lr-decay-steps", str(MAX_STEPS),  # one schedule for every length
            "--warmup-steps", "2", "--lr", "3e-3", "--checkpoint-every", "2",
            "--keep-checkpoints", "2", "--eval-every", "5", "--eval-batches", "1", "--sample-every", "5",
            "--sample-tokens", "2"]


def final_models(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "models").glob("final_model_*.pt"))


def temporary_files(out_dir: Path) -> list[Path]:
    return [path for folder in ("checkpoints", "models") for path in (out_dir / folder).glob(".*.tmp*")]


def assert_same_run(a: Path, b: Path) -> None:
    first, second = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert first["step"] == second["step"] == MAX_STEPS
    assert first["history"]["train"] == second["history"]["train"]  # every step's loss, bit for bit
    for key, tensor in first["model_state_dict"].items():
        assert torch.equal(tensor, second["model_state_dict"][key]), key
    for index, moments in first["optimizer_state_dict"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(value, second["optimizer_state_dict"]["state"][index][name]), (index, name)


@pytest.fixture(scope="module")
def uninterrupted(corpus_file, module_tmp) -> Path:
    out_dir = module_tmp.mktemp("uninterrupted")
    subprocess.run(trainer_command(corpus_file, out_dir), check=True, capture_output=True, timeout=600)
    (final,) = final_models(out_dir)
    return final


def kill_when(process: subprocess.Popen, ready, timeout: float = 300.0) -> bool:
    """SIGKILL the process as soon as ready() holds; False if it ended by itself first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run neither finished nor reached the moment to kill it"
        time.sleep(0.002)
    process.kill()
    process.wait()
    return True


def after_setup(out_dir: Path, delay: float):
    """A moment `delay` seconds after the next run's log file appears."""
    logs_before, started = len(list(out_dir.glob("logs/*.log"))), []

    def ready() -> bool:
        if not started and len(list(out_dir.glob("logs/*.log"))) > logs_before:
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] >= delay
    return ready


def test_killed_at_random_moments_and_inside_writes_the_run_ends_with_the_same_final_model(
        corpus_file, uninterrupted, tmp_path):
    rng = random.Random(1234)
    out_dir = tmp_path / "killed"
    kills = 0
    for attempt in range(6):
        process = subprocess.Popen(trainer_command(corpus_file, out_dir), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if attempt % 2:  # inside a write: a temporary checkpoint or final-model file exists
            kills += kill_when(process, lambda: bool(temporary_files(out_dir)))
        else:  # at a random moment once this attempt has set up (its log exists)
            kills += kill_when(process, after_setup(out_dir, rng.uniform(0.0, 1.5)))
    assert kills >= 4  # most attempts were cut short; a run that finished anyway is fine too
    finished = subprocess.run(trainer_command(corpus_file, out_dir), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    (final,) = final_models(out_dir)
    assert_same_run(uninterrupted, final)
    assert temporary_files(out_dir) == []


def test_a_kill_while_writing_the_final_model_is_finished_by_the_next_run(corpus_file, uninterrupted, tmp_path):
    out_dir = tmp_path / "run"
    process = subprocess.Popen(trainer_command(corpus_file, out_dir), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    assert kill_when(process, lambda: bool(list((out_dir / "models").glob(".final_model_*.tmp*"))))
    assert final_models(out_dir) == []
    again = subprocess.run(trainer_command(corpus_file, out_dir), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "its final model" in again.stdout and "writing it now" in again.stdout
    (final,) = final_models(out_dir)
    assert_same_run(uninterrupted, final)
    assert temporary_files(out_dir) == []
    third = subprocess.run(trainer_command(corpus_file, out_dir), capture_output=True, text=True, timeout=600)
    assert "nothing to train" in third.stdout and final_models(out_dir) == [final]


def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_the_run_completes_later(
        corpus_file, uninterrupted, tmp_path):
    out_dir = tmp_path / "run"
    subprocess.run(trainer_command(corpus_file, out_dir, max_steps=4), check=True, capture_output=True, timeout=600)
    full = subprocess.run(trainer_command(corpus_file, out_dir), capture_output=True, text=True, timeout=600,
                          preexec_fn=limit_file_size(10_000_000))  # checkpoints of the tiny model take ~80 MB
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 2 and len(lines) == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert "File too large" in lines[0] and "the file size limit (ulimit -f) is 10 MB" in lines[0]
    assert "needs about" in lines[0] and "raise the file size limit" in lines[0]
    assert "temporary file is removed" in lines[0]
    assert temporary_files(out_dir) == []
    assert torch.load(out_dir / "checkpoints" / "latest.pt", weights_only=True)["step"] == 4
    done = subprocess.run(trainer_command(corpus_file, out_dir), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (final,) = final_models(out_dir)
    assert_same_run(uninterrupted, final)


def test_temporary_files_of_killed_runs_are_removed_and_those_of_live_ones_kept(corpus_file, tmp_path):
    from smolm135.training.trainer import train
    from conftest import tiny_train_config

    for folder in ("checkpoints", "models"):
        (tmp_path / folder).mkdir()
    dead = [tmp_path / "checkpoints" / ".step_0000004.pt.tmp999999999",
            tmp_path / "models" / ".final_model_20260101_000000.pt.tmp999999998"]
    live = tmp_path / "checkpoints" / f".step_0000002.pt.tmp{os.getppid()}"
    for path in (*dead, live):
        path.write_bytes(b"half a checkpoint")
    _, summary = train(tiny_train_config(corpus_file, tmp_path, max_steps=2, checkpoint_every=2))
    assert not any(path.exists() for path in dead) and live.exists()
    assert "removed 2 temporary file(s)" in open(summary["log_path"]).read()


def test_a_file_size_limit_hit_writing_the_default_corpus_is_one_line_and_leaves_nothing(tmp_path):
    """With no --data the trainer writes the built-in input.txt (5 MB) first: cut short, it was a traceback and a
    hidden megabyte a later run would not have cleaned up had it been given another name."""
    full = subprocess.run([sys.executable, TRAINER, "--preset", "tiny", "--no-progress"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, preexec_fn=limit_file_size(1_000_000))
    lines = full.stderr.strip().splitlines()
    assert full.returncode == 2 and len(lines) == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert "could not write the built-in default corpus input.txt: File too large" in lines[0]
    assert "the file size limit (ulimit -f) is 1 MB" in lines[0] and "raise the file size limit" in lines[0]
    assert list(tmp_path.iterdir()) == []
