"""torchrun with DistributedDataParallel on CPU (gloo), and gradient accumulation.

The promise: a step's update depends on the global batch alone, not on how it is split into processes and
micro-steps. Every run below trains the same 8-sequence global batches (1 process x 8, 2 processes x 4,
2 processes x 2 x 2 micro-steps, 1 process x 4 x 2 micro-steps), so all must log the same losses.
"""
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from smolm135.training.trainer import train
from smolm135.data.corpus import local_rows
from smolm135.training.config import TrainConfig

from conftest import REPO_ROOT

TRAINER = str(REPO_ROOT / "Model_smollm135_trainer.py")
GLOBAL_BATCH = 8
STEPS = 6


def recipe(corpus_file, out_dir, **overrides) -> dict:
    """The tiny preset on 8 x 32 tokens per step; the schedule is fixed to 6 steps so that a run stopped
    after 3 and resumed to 6 follows the same learning rates as one run of 6."""
    values = dict(data=str(corpus_file), out_dir=str(out_dir), preset="tiny", max_steps=STEPS, batch_size=GLOBAL_BATCH,
                  seq_len=32, lr=3e-3, warmup_steps=2, lr_decay_steps=STEPS, eval_every=3, eval_batches=2,
                  checkpoint_every=3, sample_every=100, sample_tokens=4, device="cpu", dtype="float32",
                  progress=False)
    values.update(overrides)
    return values


def as_flags(values: dict) -> list[str]:
    flags = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        else:
            flags += [flag, str(value)]
    return flags


def worker_env() -> dict:
    # one thread per process: 2 processes share 2 cores; unbuffered so lines arrive as they are written
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(values: dict) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TRAINER,
            *as_flags(values)]


def run(command: list[str]) -> subprocess.CompletedProcess:
    # the timeout only guards against a hang; a healthy run takes seconds
    return subprocess.run(command, capture_output=True, text=True, env=worker_env(), cwd=REPO_ROOT, timeout=300)


def history(out_dir) -> dict:
    return torch.load(out_dir / "checkpoints" / "latest.pt", weights_only=True)["history"]


def assert_same_losses(got: list, expected: list) -> None:
    assert [step for step, _ in got] == [step for step, _ in expected]
    # float32 sums in another order differ in the last bits; another batch would differ by ~1e-2
    torch.testing.assert_close([loss for _, loss in got], [loss for _, loss in expected], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def one_process(corpus_file, module_tmp):
    """The reference: one process, 8 sequences per step, 6 steps."""
    out_dir = module_tmp.mktemp("one_process")
    train(TrainConfig(**recipe(corpus_file, out_dir)))
    return history(out_dir)


@pytest.fixture(scope="module")
def two_processes(corpus_file, module_tmp):
    """torchrun, 2 processes x 4 sequences, stopped after 3 of the 6 steps."""
    out_dir = module_tmp.mktemp("two_processes")
    result = run(torchrun(recipe(corpus_file, out_dir, batch_size=GLOBAL_BATCH // 2, max_steps=3)))
    assert result.returncode == 0, result.stderr[-3000:]
    return out_dir, result


def test_local_rows_deal_every_row_of_the_global_batch_once_for_every_split():
    for world_size, grad_accum in [(1, 1), (2, 1), (1, 2), (2, 2), (4, 2), (3, 4)]:
        batch_size = 24 // (world_size * grad_accum)
        rows = [row for micro in range(grad_accum) for rank in range(world_size)
                for row in range(24)[local_rows(micro, rank, world_size, batch_size)]]
        assert sorted(rows) == list(range(24)), (world_size, grad_accum)


@pytest.mark.slow
def test_two_processes_log_the_losses_of_one_process_at_the_same_global_batch(one_process, two_processes):
    out_dir, _ = two_processes
    distributed = history(out_dir)
    assert_same_losses(distributed["train"], one_process["train"][:3])
    assert_same_losses(distributed["val"], one_process["val"][:2])


@pytest.mark.slow
def test_one_process_with_gradient_accumulation_logs_the_same_losses(one_process, corpus_file, tmp_path):
    train(TrainConfig(**recipe(corpus_file, tmp_path, batch_size=GLOBAL_BATCH // 2, grad_accum=2, max_steps=3)))
    accumulated = history(tmp_path)
    assert_same_losses(accumulated["train"], one_process["train"][:3])
    assert_same_losses(accumulated["val"], one_process["val"][:2])


@pytest.mark.slow
def test_two_processes_with_gradient_accumulation_log_the_same_losses(one_process, corpus_file, tmp_path):
    result = run(torchrun(recipe(corpus_file, tmp_path, batch_size=GLOBAL_BATCH // 4, grad_accum=2, max_steps=3)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_losses(history(tmp_path)["train"], one_process["train"][:3])


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process_as_if_never_stopped(one_process, two_processes, corpus_file,
                                                                            tmp_path):
    out_dir = tmp_path / "run"
    shutil.copytree(two_processes[0], out_dir)
    values = recipe(corpus_file, out_dir, batch_size=GLOBAL_BATCH // 2, grad_accum=2)  # 1 x 4 x 2 = 8
    result = run([sys.executable, TRAINER, *as_flags(values)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "at step 3" in result.stdout and "global batch" not in result.stdout  # same batch: no note
    resumed = history(out_dir)
    assert_same_losses(resumed["train"], one_process["train"])
    assert_same_losses(resumed["val"], one_process["val"])


@pytest.mark.slow
def test_a_rotary_model_with_grouped_queries_trains_the_same_in_two_processes(corpus_file, tmp_path):
    values = recipe(corpus_file, tmp_path / "one", preset="tiny-rotary", max_steps=3)
    train(TrainConfig(**values))
    result = run(torchrun({**values, "out_dir": str(tmp_path / "two"), "batch_size": GLOBAL_BATCH // 2}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_losses(history(tmp_path / "two")["train"], history(tmp_path / "one")["train"])


@pytest.mark.slow
def test_only_rank_zero_writes_files_and_prints(two_processes):
    out_dir, result = two_processes
    assert not result.stderr.strip(), result.stderr  # no warning either (e.g. a process group left alive)
    assert result.stdout.count("summary:") == 1 and result.stdout.count("step 0: validation loss") == 1
    logs = list((out_dir / "logs").glob("training_*.log"))
    assert len(logs) == 1 and len(list((out_dir / "models").glob("final_model_*.pt"))) == 1
    log = logs[0].read_text(encoding="utf-8")
    assert log.count("step 3/3 | loss") == 1 and "2 processes" in log
    assert not [p for p in out_dir.rglob("*") if ".tmp" in p.name]
    state = torch.load(out_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert state["step"] == 3 and state["data_position"]["global_batch_size"] == GLOBAL_BATCH
    assert not any(key.startswith(("module.", "_orig_mod.")) for key in state["model_state_dict"])


@pytest.mark.slow
def test_a_user_error_on_rank_zero_stops_every_process_with_one_line(corpus_file, tmp_path):
    (tmp_path / "a_file").write_text("")
    values = recipe(corpus_file, tmp_path / "a_file" / "out")  # only rank 0 creates the out-dir, and fails
    result = run(torchrun(values))
    assert result.returncode != 0
    ours = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("error:", "[rank"))]
    assert len(ours) == 1 and "cannot write to --out-dir" in ours[0], result.stderr[-3000:]


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_process_at_one_step_with_a_checkpoint(corpus_file, tmp_path):
    values = recipe(corpus_file, tmp_path, batch_size=GLOBAL_BATCH // 2, max_steps=100_000, lr_decay_steps=100_000,
                    eval_every=1, eval_batches=1, checkpoint_every=100_000)
    launcher = subprocess.Popen(torchrun(values), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=worker_env(), cwd=REPO_ROOT)
    try:
        for line in launcher.stdout:  # wait until training is under way
            if line.startswith("step 2: validation loss"):
                break
        launcher.send_signal(signal.SIGTERM)  # what a cluster scheduler sends before it kills a job
        output = launcher.stdout.read()
        launcher.wait(timeout=120)
    finally:
        launcher.kill()
    assert "stopped by SIGTERM" in output, output[-3000:]
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert 2 <= state["step"] < 100_000 and state["history"]["train"][-1][0] == state["step"]


@pytest.mark.slow
def test_muon_under_torchrun_logs_the_losses_of_one_process_and_resumes_in_one(corpus_file, tmp_path):
    """Muon orthogonalizes the all-reduced gradient, the same on every process, so 2 processes x 4 must follow
    1 process x 8; the pair's state saved by rank 0 then carries a one-process run on to the end."""
    reference, out_dir = tmp_path / "one", tmp_path / "two"
    train(TrainConfig(**recipe(corpus_file, reference, optimizer="muon")))
    result = run(torchrun(recipe(corpus_file, out_dir, batch_size=GLOBAL_BATCH // 2, max_steps=3, optimizer="muon")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_losses(history(out_dir)["train"], history(reference)["train"][:3])
    result = run([sys.executable, TRAINER, *as_flags(recipe(corpus_file, out_dir, optimizer="muon"))])
    assert result.returncode == 0 and "at step 3" in result.stdout, result.stderr[-3000:]
    assert_same_losses(history(out_dir)["train"], history(reference)["train"])
    assert_same_losses(history(out_dir)["val"], history(reference)["val"])
