"""float16 training, as on GPUs without bf16: dynamic loss scaling, skipped overflows, the scale in checkpoints.

CPU autocast runs float16 too (slowly), so these run here with the trainer's device check bypassed."""
import pytest
import torch

from smolm135.training import trainer
from smolm135.runtime.device import DTYPES, Precision, pick_dtype

from conftest import tiny_train_config

INITIAL_SCALE = 2.0 ** 22  # high enough that the first steps' float16 gradients overflow


class HighInitialScale(torch.amp.GradScaler):
    def __init__(self, device, enabled):
        super().__init__(device, init_scale=INITIAL_SCALE, enabled=enabled)


def test_auto_precision_is_float16_on_a_gpu_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert pick_dtype("auto", torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16


@pytest.mark.slow
def test_float16_overflows_skip_the_update_halve_the_scale_and_resume_exactly(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setattr(trainer, "choose_precision", lambda requested, *args: Precision(DTYPES[requested]))
    monkeypatch.setattr(torch.amp, "GradScaler", HighInitialScale)

    def config(name, max_steps):
        return tiny_train_config(corpus_file, tmp_path / name, dtype="float16", max_steps=max_steps,
                                 lr_decay_steps=6, warmup_steps=1, batch_size=2, seq_len=16, eval_every=100,
                                 eval_batches=1, checkpoint_every=3, sample_every=100, sample_tokens=2)

    _, straight = trainer.train(config("straight", 6))
    log = open(straight["log_path"]).read()
    assert "precision float16" in log
    assert "float16 gradients overflowed at loss scale 4.1943e+06; update skipped, scale halved" in log
    skipped = log.count("update skipped, scale halved")
    saved = torch.load(straight["final_model_path"], weights_only=True)
    assert 1 <= skipped < 6
    assert len(saved["history"]["train"]) == 6 - skipped  # the skipped steps changed nothing
    assert saved["grad_scaler_state_dict"]["scale"] == INITIAL_SCALE / 2 ** skipped
    assert all(torch.isfinite(tensor).all() for tensor in saved["model_state_dict"].values())

    trainer.train(config("resumed", 3))
    _, resumed = trainer.train(config("resumed", 6))  # continues from step 3 with the saved scale
    again = torch.load(resumed["final_model_path"], weights_only=True)
    assert again["history"]["train"] == saved["history"]["train"]
    assert again["grad_scaler_state_dict"] == saved["grad_scaler_state_dict"]
    for key, tensor in saved["model_state_dict"].items():
        assert torch.equal(tensor, again["model_state_dict"][key]), key
