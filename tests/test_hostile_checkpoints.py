"""A checkpoint from anywhere is checked before anything is built from it: a field of the wrong kind or an
absurd size is one line naming the file, in every script that reads checkpoints."""
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import app
import continue_training
import convert_to_hf
import Model_smollm135_trainer
from Model_smollm135_trainer import train
from smollm135_model import ModelConfig
from smolm135.checkpoint import CheckpointError, load_checkpoint
from smolm135.errors import run_cli
from smolm135.train_config import TrainConfig

from conftest import make_small_vocab_text, tiny_train_config

# A real checkpoint of a model small enough to copy a dozen times: 2 layers, a 512-token vocabulary
GOOD = Path(__file__).resolve().parent / "fixtures" / "checkpoint_format1_step4.pt"


def _with(**changes):
    def change(state):
        state.update(changes)
    return change


def _model_config_field(name, value):
    def change(state):
        state["model_config"] = {**state["model_config"], name: value}
    return change


def _optimizer_with_one_group(state):
    groups = state["optimizer_state_dict"]["param_groups"]
    state["optimizer_state_dict"]["param_groups"] = [{**groups[0], "params": groups[0]["params"] + groups[1]["params"]}]


def _optimizer_moment_of_another_shape(state):
    moments = next(iter(state["optimizer_state_dict"]["state"].values()))
    moments["exp_avg"] = torch.zeros(3, 3)


HOSTILE = {
    "model_config is a string": _with(model_config="tiny"),
    "step is 'abc'": _with(step="abc"),
    "vocab_size of 10**13": _model_config_field("vocab_size", 10**13),
    "n_layer is a string": _model_config_field("n_layer", "4"),
    "n_head of 0": _model_config_field("n_head", 0),
    "weights are not tensors": _with(model_state_dict={"transformer.wte.weight": [1, 2, 3]}),
    "history is garbage": _with(history={"train": [["x", None]]}),
    "elapsed time is NaN": _with(elapsed_seconds=float("nan")),
    "rng state is garbage": _with(rng_state={"torch": "seed"}),
    "final model outside its folder": _with(final_model="../../../etc/evil.pt"),
    "thread count of -1": _with(num_threads=-1),
    "precision of no known dtype": _with(precision={"device": "cpu", "dtype": "int4", "attention_by_matmuls": 0}),
    "data position is garbage": _with(data_position={"seed": "x"}),
}
# only a run that trains reads the optimizer state
HOSTILE_TO_TRAINING = {
    "optimizer with another number of parameter groups": _optimizer_with_one_group,
    "optimizer moment of another shape": _optimizer_moment_of_another_shape,
}


@pytest.fixture(scope="module")
def good_state():
    state = torch.load(GOOD, weights_only=True)
    load_checkpoint(GOOD)  # intact: every refusal below is the change's doing
    return state


@pytest.fixture(scope="module")
def small_vocab_file(module_tmp) -> Path:
    path = module_tmp.mktemp("text") / "small_vocab.txt"
    path.write_text(make_small_vocab_text(), encoding="utf-8")
    return path


def hostile_file(good_state, change, folder: Path) -> Path:
    state = {**good_state, "model_config": dict(good_state["model_config"]),
             "optimizer_state_dict": {"state": {k: dict(v) for k, v in good_state["optimizer_state_dict"]["state"].items()},
                                      "param_groups": [dict(g) for g in good_state["optimizer_state_dict"]["param_groups"]]}}
    change(state)
    path = folder / "hostile.pt"
    torch.save(state, path)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def entry_points(path: Path, corpus: Path, out: Path) -> dict:
    common = ["--device", "cpu", "--no-progress"]
    # the trainer's flags name only built-in presets: its function trains the fixture's own model
    good = load_checkpoint(GOOD)
    recipe = replace(TrainConfig.from_dict(good.train_config, model=ModelConfig.from_dict(good.model_config)),
                     data=str(corpus), out_dir=str(out), resume=str(path), max_steps=8)
    return {
        "trainer --resume": lambda: Model_smollm135_trainer.train(recipe),
        "continue_training": lambda: continue_training.main(
            ["--checkpoint", str(path), "--data", str(corpus), "--out-dir", str(out), "--steps", "1", *common]),
        "convert_to_hf": lambda: convert_to_hf.main(["--checkpoint", str(path), "--output-dir", str(out / "hf")]),
        "app": lambda: app.main(["--checkpoint", str(path), "--device", "cpu", "--port", str(free_port())]),
    }


def refused_in_one_line(capsys, script) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(script)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in captured.err + captured.out, \
        captured.err[-2000:]
    return lines[0]


@pytest.mark.parametrize("what", sorted(HOSTILE))
def test_a_hostile_checkpoint_is_one_line_in_every_script(what, good_state, small_vocab_file, tmp_path, capsys):
    path = hostile_file(good_state, HOSTILE[what], tmp_path)
    for name, script in entry_points(path, small_vocab_file, tmp_path / "out").items():
        line = refused_in_one_line(capsys, script)
        assert "hostile.pt" in line, (name, line)
        assert not list((tmp_path / "out").glob("**/*.pt")) and not (tmp_path / "out" / "hf").exists(), name


@pytest.mark.parametrize("what", sorted(HOSTILE_TO_TRAINING))
def test_a_foreign_optimizer_state_is_refused_before_training(what, good_state, small_vocab_file, tmp_path, capsys):
    path = hostile_file(good_state, HOSTILE_TO_TRAINING[what], tmp_path)
    for name in ("trainer --resume", "continue_training"):
        line = refused_in_one_line(capsys, entry_points(path, small_vocab_file, tmp_path / "out")[name])
        assert "hostile.pt" in line and "optimizer state" in line, (name, line)


def test_absurd_sizes_are_refused_before_anything_is_allocated(good_state, tmp_path):
    path = hostile_file(good_state, _model_config_field("vocab_size", 10**13), tmp_path)
    with pytest.raises(CheckpointError, match="describes about .* parameters, but the weights hold"):
        load_checkpoint(path)


@pytest.mark.slow
def test_auto_resume_falls_back_from_a_loadable_but_invalid_latest(corpus_file, tmp_path):
    train(tiny_train_config(corpus_file, tmp_path, max_steps=8, checkpoint_every=4, keep_checkpoints=3))
    latest = tmp_path / "checkpoints" / "latest.pt"
    state = torch.load(latest, weights_only=True)
    latest.unlink()  # a hard link to step_8: replace only latest.pt
    torch.save({**state, "step": "abc"}, latest)
    _, summary = train(tiny_train_config(corpus_file, tmp_path, max_steps=10, checkpoint_every=4))
    log = open(summary["log_path"]).read()
    assert "step is 'abc'" in log and "latest.pt.corrupt" in log
    assert "step_0000008.pt at step 8" in log and summary["steps"] == 10
