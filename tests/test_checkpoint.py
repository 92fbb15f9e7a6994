"""The checkpoint record: versioned, read back whole, and still able to resume checkpoints of older formats."""
import ast
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from smolm135.training.continuation import continue_training
from smolm135.training.trainer import train
from smollm135_model import ModelConfig, SmoLM135_Model
from smolm135.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    DataPosition,
    NewerCheckpointError,
    Progress,
    load_checkpoint,
    save_atomic,
)
from smolm135.training.config import TrainConfig

from conftest import REPO_ROOT, make_small_vocab_text

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FORMAT_1 = FIXTURES / "checkpoint_format1_step4.pt"  # how it was made: checkpoint_format1.json
FORMAT_1_EXPECTED = json.loads((FIXTURES / "checkpoint_format1.json").read_text())["history_after_8_steps"]


@pytest.fixture
def small_vocab_file(tmp_path) -> Path:
    path = tmp_path / "small_vocab.txt"
    path.write_text(make_small_vocab_text(), encoding="utf-8")
    return path


def recipe_of(checkpoint: Checkpoint, data: Path, out_dir: Path, **overrides) -> TrainConfig:
    """The checkpoint's own recipe and model, on `data`, writing under `out_dir`."""
    cfg = TrainConfig.from_dict(checkpoint.train_config, model=ModelConfig.from_dict(checkpoint.model_config))
    return replace(cfg, data=str(data), out_dir=str(out_dir), **overrides)


@pytest.mark.slow
def test_a_checkpoint_of_the_first_format_resumes_as_the_trainer_of_its_time_did(small_vocab_file, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    shutil.copyfile(FORMAT_1, tmp_path / "checkpoints" / "latest.pt")
    old = load_checkpoint(FORMAT_1)
    assert "format_version" not in torch.load(FORMAT_1, weights_only=True)  # really the old format
    _, summary = train(recipe_of(old, small_vocab_file, tmp_path, max_steps=8))
    assert summary["start_step"] == 4 and summary["steps"] == 8
    log = open(summary["log_path"]).read()
    assert "continuing from" in log and "note:" not in log  # the same text, seed and batches as the file says
    history = torch.load(summary["final_model_path"], weights_only=True)["history"]
    for kind in ("train", "val"):
        assert [step for step, _ in history[kind]] == [step for step, _ in FORMAT_1_EXPECTED[kind]]
        # the first four steps come from the file; the next four are trained again here
        torch.testing.assert_close([loss for _, loss in history[kind]], [loss for _, loss in FORMAT_1_EXPECTED[kind]],
                                   rtol=1e-5, atol=1e-5)


def test_continuing_rebuilds_the_model_from_the_checkpoints_own_config(small_vocab_file, tmp_path):
    source = tmp_path / "format1.pt"
    shutil.copyfile(FORMAT_1, source)
    assert load_checkpoint(source).train_config["preset"] == "fixture"  # a name no preset has
    model, summary = continue_training(str(source), steps=2, out_dir=str(tmp_path), data=str(small_vocab_file),
                                       progress=False)
    assert summary["steps"] == 6
    assert (model.config.n_layer, model.config.n_embd, model.config.vocab_size) == (2, 16, 512)


@pytest.mark.slow
def test_a_checkpoint_with_only_weights_and_model_config_continues(small_vocab_file, tmp_path):
    """As from a Hugging Face folder without training_info.json: no step, no recipe, no optimizer."""
    model_config = ModelConfig.from_dict(load_checkpoint(FORMAT_1).model_config)
    source = tmp_path / "weights_only.pt"
    torch.save({"model_state_dict": SmoLM135_Model(model_config).state_dict(), "model_config": model_config.to_dict()},
               source)
    _, summary = continue_training(str(source), steps=2, out_dir=str(tmp_path), data=str(small_vocab_file),
                                   device="cpu", dtype="float32", progress=False, batch_size=4, seq_len=16,
                                   eval_batches=2)
    assert summary["start_step"] == 0 and summary["steps"] == 2
    assert "smolm135 preset custom," in open(summary["log_path"]).read()  # not the default preset's name


def test_every_field_survives_the_round_trip_through_a_file(tmp_path):
    model_config = ModelConfig.from_dict(load_checkpoint(FORMAT_1).model_config)
    record = Checkpoint(SmoLM135_Model(model_config).state_dict(), model_config.to_dict(), {"seed": 3},
                        Progress(7, 700, 1.5, {"train": [[7, 2.5]], "val": [[6, 2.75]]}, nonfinite_in_a_row=2),
                        data_position=DataPosition(3, 8, 16, "abc"), data_name="text.txt")
    back = load_checkpoint(save_atomic(record, tmp_path / "c.pt"))
    assert back.progress == record.progress and back.data_position == record.data_position
    assert (back.train_config, back.data_name, back.facts.train_loss, back.facts.val_loss) == ({"seed": 3}, "text.txt",
                                                                                               2.5, 2.75)
    assert torch.load(tmp_path / "c.pt", weights_only=True)["format_version"] == FORMAT_VERSION


def test_a_checkpoint_of_a_newer_format_is_refused_with_a_sentence_and_left_in_place(small_vocab_file, tmp_path):
    state = load_checkpoint(FORMAT_1).to_state() | {"format_version": FORMAT_VERSION + 1}
    (tmp_path / "checkpoints").mkdir()
    latest = tmp_path / "checkpoints" / "latest.pt"
    torch.save(state, latest)
    with pytest.raises(NewerCheckpointError, match=f"format version {FORMAT_VERSION + 1}.*update smolm135"):
        train(recipe_of(load_checkpoint(FORMAT_1), small_vocab_file, tmp_path, max_steps=8))
    assert latest.exists() and not list(tmp_path.glob("checkpoints/*.corrupt"))  # not taken for a corrupt file


def test_a_file_of_another_format_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"format": "something-else", "model_state_dict": {}, "model_config": {}}, path)
    with pytest.raises(CheckpointError, match="not a smolm135 checkpoint"):
        load_checkpoint(path)


def test_a_resume_says_what_changed_about_the_batches(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    shutil.copyfile(FORMAT_1, tmp_path / "checkpoints" / "latest.pt")
    other_text = tmp_path / "other.txt"
    other_text.write_text(make_small_vocab_text(seed=1), encoding="utf-8")
    _, summary = train(recipe_of(load_checkpoint(FORMAT_1), other_text, tmp_path, max_steps=5, seed=7, seq_len=8))
    log = open(summary["log_path"]).read()
    assert "note: the tokenized text differs from the one the checkpoint trained on" in log
    assert "note: the checkpoint's batches were drawn with --seed 1337, this run's with 7" in log
    assert "note: the checkpoint trained on sequences of 16 tokens, this run on 8" in log


def test_only_the_checkpoint_module_spells_checkpoint_keys_and_output_folders():
    """Docstrings may describe them; code asks smolm135.checkpoint (Checkpoint, TrainingFacts, RunLayout)."""
    names = ("model_state_dict", "optimizer_state_dict", "grad_scaler_state_dict", "rng_state", "data_position",
             "nonfinite_in_a_row", "training_info.json", "latest.pt", "checkpoints/", "models/", "continued_models",
             "logs/", "cache/")
    owner = REPO_ROOT / "smolm135" / "checkpoint.py"
    found = []
    for path in sorted(REPO_ROOT.rglob("*.py")):
        relative = path.relative_to(REPO_ROOT)
        if path == owner or relative.parts[0] in ("tests", ".venv", "build") or relative.parts[0].startswith("."):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        found += [f"{relative}:{node.lineno} {name}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  for name in names if name in node.value]
    assert not found, found
