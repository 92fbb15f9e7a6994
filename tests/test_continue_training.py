"""continue_training.py: more steps from the newest final model, through the trainer's own loop."""
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from smolm135.training.continuation import continue_training, continued_config, main
from smolm135.training.trainer import train
from smolm135.checkpoint import CONTINUED, load_checkpoint
from smolm135.errors import UserError, run_cli

from conftest import REPO_ROOT, make_corpus_text

CONTINUE = str(REPO_ROOT / "continue_training.py")


@pytest.fixture
def run_dir(trained_run, tmp_path):
    """A private copy of the shared trained run, so continuing it leaves the original untouched."""
    _, _, _, out_dir = trained_run
    shutil.copytree(out_dir, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.slow
def test_defaults_add_fifty_steps_to_the_newest_final_model(run_dir, corpus_file):
    result = subprocess.run([sys.executable, CONTINUE, "--out-dir", str(run_dir), "--no-progress", "--data",
                             str(corpus_file)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (source,) = run_dir.glob("models/final_model_*.pt")
    (continued,) = run_dir.glob("continued_models/continued_model_*.pt")
    (log_path,) = run_dir.glob("logs/continued_training_*.log")
    original, state = torch.load(source, weights_only=True), torch.load(continued, weights_only=True)
    assert state["step"] == original["step"] + 50
    assert state["train_config"]["batch_size"] == original["train_config"]["batch_size"]
    assert state["train_config"]["seq_len"] == original["train_config"]["seq_len"]
    log = log_path.read_text()
    assert f"continuing from {source} at step {original['step']}" in log
    assert f"last train loss {original['train_loss']:.4f}" in log
    assert f"train loss over steps {original['step'] + 1}-{original['step'] + 50}: first" in log


@pytest.mark.slow
def test_first_continued_loss_is_close_to_the_last_original_loss(run_dir, corpus_file):
    (source,) = run_dir.glob("models/final_model_*.pt")
    original = torch.load(source, weights_only=True)
    _, summary = continue_training(out_dir=str(run_dir), steps=3, data=str(corpus_file))
    recent = [loss for _, loss in original["history"]["train"][-5:]]
    assert abs(summary["first_train_loss_this_run"] - sum(recent) / len(recent)) < 0.5
    assert summary["first_train_loss_this_run"] < original["history"]["val"][0][1] - 3  # far from a restart
    # the optimizer continued: its step count went on from the original's
    state = torch.load(summary["final_model_path"], weights_only=True)
    first_param_state = next(iter(state["optimizer_state_dict"]["state"].values()))
    assert int(first_param_state["step"]) == original["step"] + 3


@pytest.mark.slow
def test_overrides_steps_checkpoint_data_lr_and_out_dir(run_dir, tmp_path):
    (source,) = run_dir.glob("models/final_model_*.pt")
    other_text = tmp_path / "other.txt"
    other_text.write_text("A completely different text about boats and rivers.\n" * 400)
    out_dir = tmp_path / "elsewhere"
    _, summary = continue_training(checkpoint=str(source), steps=4, out_dir=str(out_dir), data=str(other_text),
                                   lr=1e-4)
    assert summary["steps"] == torch.load(source, weights_only=True)["step"] + 4
    assert summary["final_model_path"].startswith(str(out_dir / "continued_models" / "continued_model_"))
    log = open(summary["log_path"]).read()
    assert "data: other.txt" in log
    assert log.count("| lr 1.000e-04 |") == 4


@pytest.mark.parametrize("numbers, message", [
    (dict(steps=True), "--steps must be a positive whole number"),  # a bool is no count, as in the trainer's config
    (dict(steps=2.0), "--steps must be a positive whole number"),
    (dict(lr=float("nan")), "--lr must be a positive number"),
    (dict(lr="1e-4"), "--lr must be a positive number"),  # from a notebook: a line, not a TypeError
])
def test_a_call_from_python_with_a_bad_number_is_one_line_before_any_file_is_read(tmp_path, numbers, message):
    with pytest.raises(UserError, match=message):
        continue_training(out_dir=str(tmp_path / "nothing-here"), **numbers)


def test_without_a_final_model_main_says_what_to_run_first(tmp_path, capsys):
    """The script's promise below, kept in this process: main() as its __main__ calls it."""
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(["--out-dir", str(tmp_path)]))
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.strip().count("\n") == 0
    assert "python Model_smollm135_trainer.py" in error


@pytest.mark.slow
def test_without_a_final_model_it_says_what_to_run_first(tmp_path):
    result = subprocess.run([sys.executable, CONTINUE, "--out-dir", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "python Model_smollm135_trainer.py" in result.stderr


@pytest.mark.slow
def test_an_interrupted_continuation_resumes_instead_of_restarting(run_dir, corpus_file):
    (source,) = run_dir.glob("models/final_model_*.pt")
    start = torch.load(source, weights_only=True)["step"]
    cfg = continued_config(load_checkpoint(source), 6, str(run_dir), str(corpus_file))
    train(replace(cfg, max_steps=start + 3, checkpoint_every=1), CONTINUED)  # stands for a run killed at +3
    _, summary = continue_training(checkpoint=str(source), steps=6, out_dir=str(run_dir), data=str(corpus_file))
    assert summary["start_step"] == start + 3 and summary["steps"] == start + 6


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_of_a_continuation_resumes_from_the_intact_step_file(run_dir, corpus_file,
                                                                                         capsys):
    """It restarted from the source model without a word: latest.pt was the only file it looked at."""
    (source,) = run_dir.glob("models/final_model_*.pt")
    start = torch.load(source, weights_only=True)["step"]
    cfg = continued_config(load_checkpoint(source), 6, str(run_dir), str(corpus_file))
    train(replace(cfg, max_steps=start + 3, checkpoint_every=1), CONTINUED)  # stands for a run killed at +3
    latest = CONTINUED.under(run_dir).latest_checkpoint
    latest.unlink()  # a hard link of the newest step file: damage latest.pt alone
    latest.write_bytes(b"not a checkpoint")
    _, summary = continue_training(checkpoint=str(source), steps=6, out_dir=str(run_dir), data=str(corpus_file))
    assert summary["start_step"] == start + 3 and summary["steps"] == start + 6
    assert latest.with_name(latest.name + ".corrupt").read_bytes() == b"not a checkpoint"
    assert "moved it to" in capsys.readouterr().out

@pytest.mark.slow
def test_a_checkpoint_never_chooses_the_text_to_train_on(run_dir, tmp_path, monkeypatch, capsys):
    """A stranger's checkpoint naming a glob of private files: without --data the run reads the default."""
    (source,) = run_dir.glob("models/final_model_*.pt")
    state = torch.load(source, weights_only=True)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "diary.txt").write_text("dear diary " * 2000)
    state["train_config"]["data"] = str(secret / "*.txt")
    stranger = tmp_path / "stranger.pt"
    torch.save(state, stranger)
    cfg = continued_config(load_checkpoint(stranger), 2, str(tmp_path / "out"))
    assert cfg.data == "input.txt"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "input.txt").write_text(make_corpus_text(2000))
    _, summary = continue_training(str(stranger), steps=1, out_dir=str(tmp_path / "out"), progress=False)
    log = open(summary["log_path"]).read()
    assert "data: input.txt" in log and "diary" not in log
    assert "note: the model was trained on *.txt; pass --data" in capsys.readouterr().out
