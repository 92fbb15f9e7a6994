"""A checkpoint from anywhere is checked before anything is built from it: a field of the wrong kind or an
absurd size is one line naming the file, in every script that reads checkpoints."""
import shutil
import socket
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from smolm135.inference import demo as app
from smolm135.training import continuation as continue_training
from smolm135.interop import convert as convert_to_hf
from smolm135.inference import evaluate as evaluate
from smolm135.training import trainer as Model_smollm135_trainer
from smolm135.training.trainer import train
from smollm135_model import ModelConfig, SmoLM135_Model
from smolm135.checkpoint import CheckpointError, load_checkpoint
from smolm135.errors import run_cli
from smolm135.training.config import TrainConfig

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


def _first_moments(**changes):
    """The first parameter's optimizer state with `changes`: a tensor, or a function of the one it replaces
    (None deletes the entry)."""
    def change(state):
        moments = state["optimizer_state_dict"]["state"][0]
        for key, value in changes.items():
            if value is None:
                del moments[key]
            else:
                moments[key] = value(moments[key]) if callable(value) else value
    return change


def _first_weight(change_tensor):
    def change(state):
        weights = dict(state["model_state_dict"])
        name = next(iter(weights))
        weights[name] = change_tensor(weights[name])
        state["model_state_dict"] = weights
    return change


def _with_nan(tensor):
    tensor = tensor.clone()
    tensor.view(-1)[0] = float("nan")
    return tensor


def _with_infinity(tensor):
    tensor = tensor.clone()
    tensor.view(-1)[-1] = float("-inf")
    return tensor


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
    # weights and optimizer moments are finite floats
    "weights with a NaN": _first_weight(_with_nan),
    "weights with an infinity": _first_weight(_with_infinity),
    "integer weights": _first_weight(lambda tensor: tensor.round().long()),
    "optimizer moment with a NaN": _first_moments(exp_avg_sq=_with_nan),
    "optimizer moment of integers": _first_moments(exp_avg=lambda tensor: tensor.long()),
    # the fused AdamW kernel reads past the end of a smaller moment: the process died (SIGSEGV) mid-step
    "optimizer moment with no dimensions": _first_moments(exp_avg=torch.zeros(())),
    "optimizer step count of many numbers": _first_moments(step=torch.zeros(3)),
    "negative optimizer step count": _first_moments(step=torch.tensor(-5.0)),
    # progress the recipe (4 steps of 4 x 16 tokens, of 4 at most) cannot have made
    "step beyond the recipe's max_steps": _with(step=10**30),
    "tokens beyond what the steps can take": _with(tokens_seen=10**30),
    "more losses than steps": _with(history={"train": [[1, 5.0]] * 100, "val": []}),
    "a loss of a step beyond the step": _with(history={"train": [[10**30, 5.0]], "val": []}),
    "more skipped updates than steps": _with(nonfinite_in_a_row=10**6),
    "tokenizer record of broken JSON": _with(tokenizer={"kind": "tokenizer.json", "tokenizer_json": "{1: 2}"}),
}
# only a run that trains reads the optimizer state
HOSTILE_TO_TRAINING = {
    "optimizer with another number of parameter groups": _optimizer_with_one_group,
    "optimizer moment of another shape": _optimizer_moment_of_another_shape,
    "optimizer moment of another parameter's shape": _first_moments(exp_avg=torch.zeros(16)),  # a norm gain's
    "optimizer moment of another precision": _first_moments(exp_avg=lambda tensor: tensor.double()),
    "optimizer state without a moment": _first_moments(exp_avg_sq=None),
    "optimizer state that is not tensors": _first_moments(exp_avg=[0.0] * 4),
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


def fixture_recipe(corpus: Path, out: Path, **changes) -> TrainConfig:
    """The fixture's own recipe and model, 4 steps further (the trainer's flags name only built-in presets)."""
    good = load_checkpoint(GOOD)
    return replace(TrainConfig.from_dict(good.train_config, model=ModelConfig.from_dict(good.model_config)),
                   data=str(corpus), out_dir=str(out), **{"max_steps": 8, **changes})


def entry_points(path: Path, corpus: Path, out: Path) -> dict:
    common = ["--device", "cpu", "--no-progress"]
    recipe = fixture_recipe(corpus, out, resume=str(path))
    return {
        "trainer --resume": lambda: Model_smollm135_trainer.train(recipe),
        "trainer --init-from": lambda: Model_smollm135_trainer.train(replace(recipe, resume="never",
                                                                            init_from=str(path))),
        "continue_training": lambda: continue_training.main(
            ["--checkpoint", str(path), "--data", str(corpus), "--out-dir", str(out), "--steps", "1", *common]),
        "convert_to_hf": lambda: convert_to_hf.main(["--checkpoint", str(path), "--output-dir", str(out / "hf")]),
        "app": lambda: app.main(["--checkpoint", str(path), "--device", "cpu", "--port", str(free_port())]),
        "evaluate": lambda: evaluate.main([str(path), "--data", str(corpus), *common]),
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
    for name in ("trainer --resume", "trainer --init-from", "continue_training"):
        line = refused_in_one_line(capsys, entry_points(path, small_vocab_file, tmp_path / "out")[name])
        assert "hostile.pt" in line and "optimizer state" in line, (name, line)


def test_absurd_sizes_are_refused_before_anything_is_allocated(good_state, tmp_path):
    path = hostile_file(good_state, _model_config_field("vocab_size", 10**13), tmp_path)
    with pytest.raises(CheckpointError, match="describes about .* parameters, but the weights hold"):
        load_checkpoint(path)


def test_progress_fields_of_none_read_as_their_defaults(good_state, tmp_path):
    path = hostile_file(good_state, _with(tokens_seen=None, elapsed_seconds=None, nonfinite_in_a_row=None), tmp_path)
    progress = load_checkpoint(path).progress
    read = (progress.step, progress.tokens_seen, progress.elapsed_seconds, progress.nonfinite_in_a_row)
    assert read == (4, 0, 0.0, 0)


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


# every kind of refused checkpoint, those only the run's optimizer can tell included
@pytest.mark.parametrize("what", ["optimizer moment with no dimensions", "weights with a NaN",
                                  "step beyond the recipe's max_steps", *sorted(HOSTILE_TO_TRAINING)])
def test_auto_resume_sets_a_hostile_latest_aside_and_goes_on_from_the_intact_step(what, good_state, small_vocab_file,
                                                                                  tmp_path):
    checkpoints = tmp_path / "out" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copyfile(GOOD, checkpoints / "step_0000004.pt")
    hostile_file(good_state, {**HOSTILE, **HOSTILE_TO_TRAINING}[what], tmp_path).rename(checkpoints / "latest.pt")
    _, summary = train(fixture_recipe(small_vocab_file, tmp_path / "out", resume="auto", max_steps=5))
    log = open(summary["log_path"]).read()
    assert "latest.pt.corrupt" in log and "step_0000004.pt at step 4" in log, log
    assert summary["steps"] == 5 and Path(summary["final_model_path"]).is_file()


def _nan_loss_in_training(monkeypatch):
    original_forward = SmoLM135_Model.forward

    def forward(self, idx, targets=None, **kwargs):
        logits, loss = original_forward(self, idx, targets, **kwargs)
        return logits, loss * float("nan") if targets is not None and self.training else loss

    monkeypatch.setattr(SmoLM135_Model, "forward", forward)


@pytest.mark.slow
def test_a_run_whose_every_update_is_skipped_is_an_error_without_a_final_model(small_vocab_file, tmp_path, capsys,
                                                                              monkeypatch):
    _nan_loss_in_training(monkeypatch)  # 4 steps, fewer than the 5 in a row that stop a run on their own
    out = tmp_path / "out"
    line = refused_in_one_line(capsys, entry_points(GOOD, small_vocab_file, out)["trainer --resume"])
    assert "every update of this run (4 of 4) was skipped" in line, line
    assert not list(out.glob("models/*.pt"))
    assert all(torch.load(path, weights_only=True).get("final_model") is None  # no re-run writes one either
               for path in out.glob("checkpoints/*.pt"))


def _without_optimizer_state(state):
    del state["optimizer_state_dict"]


@pytest.mark.slow
def test_resuming_weights_without_optimizer_state_says_the_optimizer_starts_fresh(good_state, small_vocab_file,
                                                                                 tmp_path, capsys):
    path = hostile_file(good_state, _without_optimizer_state, tmp_path)
    for name in ("trainer --resume", "continue_training"):
        out = tmp_path / name.replace(" ", "_")
        entry_points(path, small_vocab_file, out)[name]()
        said = ("hostile.pt holds no optimizer state: training goes on with a fresh optimizer (its moments at zero) "
                "at step 4")
        assert said in capsys.readouterr().out, name
        assert said in "".join(log.read_text() for log in out.glob("logs/*.log")), name
