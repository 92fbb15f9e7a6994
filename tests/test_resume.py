"""Reliable training state: exact resume, atomic checkpoints, interruptions, bad numbers, full disks."""
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

import smollm135_model
from smolm135.training.continuation import continue_training
from smolm135.training.trainer import train
from smolm135 import checkpoint
from smolm135.errors import UserError

from conftest import REPO_ROOT, tiny_train_config

TRAINER = str(REPO_ROOT / "Model_smollm135_trainer.py")


def cli_args(corpus_file, out_dir, max_steps, preset="tiny"):
    return [sys.executable, TRAINER, "--data", str(corpus_file), "--out-dir", str(out_dir), "--preset", preset,
            "--device", "cpu", "--dtype", "float32", "--no-progress", "--batch-size", "4", "--seq-len", "32",
            "--max-steps", str(max_steps), "--warmup-steps", "4", "--lr", "3e-3", "--eval-every", "20",
            "--eval-batches", "2", "--checkpoint-every", "4", "--sample-every", "1000", "--sample-tokens", "4"]


def wait_for(condition, process, timeout=120.0):
    """Poll until condition() holds; fail if the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"process ended early:\n{process.stdout.read() if process.stdout else ''}"
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def final_state(out_dir):
    (path,) = (out_dir / "models").glob("final_model_*.pt")
    return torch.load(path, weights_only=True)


def tensors_of(value):
    """Every tensor in a nested state (an optimizer's, which Muon splits into Muon's and AdamW's), in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else []
    return [tensor for item in items for tensor in tensors_of(item)]


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_identical(corpus_file, tmp_path):
    """A rotary model with grouped queries, trained with Muon (and AdamW for its embeddings); the learned
    positions and AdamW alone are killed at random moments in test_crash_consistency."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"

    def args(out_dir):
        return cli_args(corpus_file, out_dir, 24, "tiny-rotary") + ["--optimizer", "muon"]

    subprocess.run(args(straight), check=True, capture_output=True, env=env, timeout=300)

    process = subprocess.Popen(args(interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wait_for(lambda: (interrupted / "checkpoints" / "step_0000008.pt").exists(), process)
    process.kill()  # SIGKILL: no handler runs, whatever was being written stays as it was
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert not list((interrupted / "models").glob("*.pt"))

    resumed = subprocess.run(args(interrupted), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing from" in resumed.stdout
    a, b = final_state(straight), final_state(interrupted)
    assert a["step"] == b["step"] == 24
    assert a["history"]["train"] == b["history"]["train"]  # identical per-step losses, bit for bit
    for key, tensor in a["model_state_dict"].items():
        assert torch.equal(tensor, b["model_state_dict"][key]), key
    moments_a, moments_b = tensors_of(a["optimizer_state_dict"]), tensors_of(b["optimizer_state_dict"])
    assert len(moments_a) == len(moments_b) > 0
    assert all(torch.equal(x, y) for x, y in zip(moments_a, moments_b))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_cleanly(corpus_file, tmp_path):
    process = subprocess.Popen(cli_args(corpus_file, tmp_path, 10_000), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    wait_for(lambda: (tmp_path / "checkpoints" / "latest.pt").exists(), process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    assert "stopped by SIGTERM" in stdout and "run the same command again to resume" in stdout
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert f"at step {state['step']}:" in stdout
    assert 4 <= state["step"] < 10_000


@pytest.mark.slow
def test_auto_resume_logs_the_step_keeps_the_precision_and_never_starts_over(corpus_file, tmp_path, monkeypatch):
    """On a CPU with bf16, `--dtype auto` measures; a later start can measure otherwise (another load, a
    cleared cache). A resume keeps the precision the run computed in, so its steps are the uninterrupted
    run's; a fresh start measures again."""
    from smolm135.runtime import probes

    answers = [probes.PrecisionChoice(torch.float32, "fp32: bf16 took 1.02x the time of fp32 here"),
               probes.PrecisionChoice(torch.float32, "fp32: bf16 took 1.50x the time of fp32 here")]
    monkeypatch.setattr(probes, "cpu_training_precision", lambda model_config, seq_len: answers.pop(0))
    train(tiny_train_config(corpus_file, tmp_path, max_steps=8, checkpoint_every=4, dtype="auto"))
    _, summary = train(tiny_train_config(corpus_file, tmp_path, max_steps=12, checkpoint_every=4, dtype="auto"))
    assert summary["start_step"] == 8 and summary["steps"] == 12
    log = open(summary["log_path"]).read()
    assert "continuing from" in log and "at step 8" in log
    assert "--dtype auto: float32, as the run being resumed computed" in log and "precision float32" in log
    assert len(answers) == 1  # the probe was asked when the run started, not again on resuming
    state = torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)
    assert state["precision"] == {"device": "cpu", "dtype": "float32", "attention_by_matmuls": False}
    _, fresh = train(tiny_train_config(corpus_file, tmp_path, max_steps=4, resume="never", dtype="auto"))
    assert fresh["start_step"] == 0 and "bf16 took 1.50x the time" in open(fresh["log_path"]).read() and not answers


def test_resume_refuses_a_checkpoint_of_another_model(corpus_file, tmp_path):
    train(tiny_train_config(corpus_file, tmp_path, max_steps=4, checkpoint_every=4))
    shallow = replace(smollm135_model.PRESETS["tiny"], n_layer=2)
    with pytest.raises(UserError, match="n_layer: checkpoint has 4, this run has 2"):
        train(tiny_train_config(corpus_file, tmp_path, preset="tiny-shallow", model=shallow, max_steps=8))


@pytest.mark.slow
def test_torn_latest_checkpoint_falls_back_to_the_newest_intact_one(corpus_file, tmp_path):
    train(tiny_train_config(corpus_file, tmp_path, max_steps=12, checkpoint_every=4, keep_checkpoints=3))
    latest = tmp_path / "checkpoints" / "latest.pt"
    data = latest.read_bytes()
    os.unlink(latest)  # latest.pt is a hard link to step_12; tear only latest.pt
    latest.write_bytes(data[: len(data) // 2])
    _, summary = train(tiny_train_config(corpus_file, tmp_path, max_steps=14, checkpoint_every=4))
    log = open(summary["log_path"]).read()
    assert "unreadable" in log and "latest.pt.corrupt" in log
    assert "continuing from" in log and "step_0000012.pt at step 12" in log
    assert (tmp_path / "checkpoints" / "latest.pt.corrupt").read_bytes() == data[: len(data) // 2]  # evidence kept
    assert torch.load(latest, weights_only=True)["step"] == 14


def test_every_checkpoint_corrupt_is_refused_not_restarted(corpus_file, tmp_path):
    train(tiny_train_config(corpus_file, tmp_path, max_steps=4, checkpoint_every=4))
    for path in (tmp_path / "checkpoints").glob("*.pt"):
        os.unlink(path)
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="no intact checkpoint"):
        train(tiny_train_config(corpus_file, tmp_path, max_steps=8))
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        train(tiny_train_config(corpus_file, tmp_path, max_steps=8,
                                resume=str(tmp_path / "checkpoints" / "step_0000004.pt.corrupt")))


@pytest.mark.slow
def test_disk_full_keeps_the_previous_checkpoint_intact(corpus_file, tmp_path, monkeypatch):
    train(tiny_train_config(corpus_file, tmp_path, max_steps=4, checkpoint_every=4))
    real_save = torch.save

    def save_then_fill_the_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fill_the_disk)
    with pytest.raises(UserError, match="No space left on device.*previous checkpoint there is intact"):
        train(tiny_train_config(corpus_file, tmp_path, max_steps=8, checkpoint_every=4))
    monkeypatch.undo()
    assert torch.load(tmp_path / "checkpoints" / "latest.pt", weights_only=True)["step"] == 4
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if ".tmp" in p.name]


def test_unwritable_out_dir_is_a_clear_error(corpus_file, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot write to --out-dir"):
        train(tiny_train_config(corpus_file, blocker / "run"))


@pytest.mark.slow
def test_nan_loss_skips_the_update_then_stops_after_several_in_a_row(corpus_file, tmp_path, monkeypatch):
    original_forward = smollm135_model.SmoLM135_Model.forward
    calls = {"n": 0, "poison_from": 6, "poison_to": 7}

    def forward_with_nan(self, idx, targets=None, **kwargs):
        logits, loss = original_forward(self, idx, targets, **kwargs)
        if targets is not None and self.training:
            calls["n"] += 1
            if calls["poison_from"] <= calls["n"] <= calls["poison_to"]:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(smollm135_model.SmoLM135_Model, "forward", forward_with_nan)
    model, summary = train(tiny_train_config(corpus_file, tmp_path / "one", max_steps=10))
    log = open(summary["log_path"]).read()
    assert log.count("is not finite; update skipped") == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert summary["steps"] == 10
    assert len(torch.load(summary["final_model_path"], weights_only=True)["history"]["train"]) == 8  # 2 skipped

    calls.update(n=0, poison_from=7, poison_to=10**9)
    with pytest.raises(UserError, match="not finite for 5 steps in a row"):
        train(tiny_train_config(corpus_file, tmp_path / "many", max_steps=30, checkpoint_every=4))
    kept = torch.load(tmp_path / "many" / "checkpoints" / "latest.pt", weights_only=True)
    assert kept["step"] == 8
    assert all(torch.isfinite(t).all() for t in kept["model_state_dict"].values())


@pytest.mark.slow
def test_every_checkpoint_kind_loads_with_weights_only(trained_run, tmp_path):
    cfg, _, summary, out_dir = trained_run
    run_dir = tmp_path / "run"
    shutil.copytree(out_dir, run_dir)
    _, continued = continue_training(out_dir=str(run_dir), steps=2, data=cfg.data)
    paths = [*run_dir.glob("checkpoints/*.pt"), *run_dir.glob("checkpoints/continued/*.pt"),
             *run_dir.glob("models/*.pt"), *run_dir.glob("continued_models/*.pt")]
    assert {p.parent.name for p in paths} == {"checkpoints", "continued", "models", "continued_models"}
    for path in paths:
        state = torch.load(path, weights_only=True)
        assert {"model_state_dict", "model_config", "optimizer_state_dict", "step", "rng_state"} <= set(state)
