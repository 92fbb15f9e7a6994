"""--report-to: the numbers of the run's log also go to TensorBoard, wandb or trackio, from the main process
only; a backend that is not installed is a one-line refusal before anything is written."""
import re
import sys

import pytest

from smolm135.training import trainer as Model_smollm135_trainer
from smolm135.errors import run_cli
from smolm135.training.tracking import Tracker, start_tracker
from smolm135.training.log import RunLog

from conftest import needs_extra, tiny_train_config

STEP_LINE = re.compile(r"step (\d+)/\d+ \| loss ([\d.]+) \| lr ([\d.e+-]+) \| grad_norm ([\d.]+)")
VAL_LINE = re.compile(r"step (\d+): validation loss ([\d.]+) \(([\d.]+) bits per byte\)")


class RecordingTracker(Tracker):
    def __init__(self):
        self.logged = []

    def log(self, scalars, step):
        self.logged.append((step, scalars))


@pytest.mark.slow
@needs_extra("tensorboard")
def test_tensorboard_receives_the_numbers_of_the_log(corpus_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_train_config(corpus_file, tmp_path, max_steps=4, eval_every=2, checkpoint_every=4, sample_every=100,
                            report_to="tensorboard")
    _, summary = Model_smollm135_trainer.train(cfg)
    log_path = tmp_path / "logs" / f"{summary['log_path'].rsplit('/', 1)[1]}"
    log = log_path.read_text(encoding="utf-8")
    events = EventAccumulator(str(log_path.with_suffix(""))).Reload()
    scalars = {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    train_lines = STEP_LINE.findall(log)
    val_lines = VAL_LINE.findall(log)
    assert [int(step) for step, *_ in train_lines] == [1, 2, 3, 4] and [s for s, *_ in val_lines] == ["0", "2", "4"]
    for step, loss, lr, grad_norm in train_lines:
        assert scalars["train/loss"][int(step)] == pytest.approx(float(loss), abs=1e-4)
        assert scalars["train/lr"][int(step)] == pytest.approx(float(lr), rel=1e-3)
        assert scalars["train/grad_norm"][int(step)] == pytest.approx(float(grad_norm), abs=1e-3)
        assert scalars["train/tokens_seen"][int(step)] == int(step) * cfg.batch_size * cfg.seq_len
    for step, loss, bits_per_byte in val_lines:
        assert scalars["val/loss"][int(step)] == pytest.approx(float(loss), abs=1e-4)
        assert scalars["val/bits_per_byte"][int(step)] == pytest.approx(float(bits_per_byte), abs=1e-4)
    assert summary["final_val_bpb"] == pytest.approx(scalars["val/bits_per_byte"][4], abs=1e-4)


def test_only_the_main_process_reports():
    quiet, main = RunLog(None, writes=False), RunLog(None, writes=True)
    quiet.tracker, main.tracker = RecordingTracker(), RecordingTracker()
    for log in (quiet, main):
        log.track(3, {"train/loss": 1.5})
    assert quiet.tracker.logged == [] and main.tracker.logged == [(3, {"train/loss": 1.5})]


def test_a_backend_that_is_not_installed_is_one_line_before_anything_is_written(corpus_file, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if the extra were not installed
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: Model_smollm135_trainer.main(["--preset", "tiny", "--device", "cpu", "--dtype", "float32",
                                                      "--data", str(corpus_file), "--report-to", "tensorboard",
                                                      "--max-steps", "1"]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and 'pip install -e ".[tensorboard]"' in lines[0], lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", [pytest.param(name, marks=needs_extra(name)) for name in ("wandb", "trackio")])
def test_wandb_and_trackio_take_the_same_scalars(backend, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.delenv("TRACKIO_SPACE_ID", raising=False)
    tracker = start_tracker(backend, tmp_path / "run", "training_test", {"lr": 1e-3})
    tracker.log({"train/loss": 2.5, "train/lr": 1e-3}, step=1)
    tracker.close()
    assert backend != "wandb" or any((tmp_path / "run").rglob("*.wandb"))
