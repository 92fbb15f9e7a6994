"""The benchmarks' shared pieces keep working: the reference holds our weights, and a step runs on both."""
import sys

import torch

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
from harness import llama_state_dict, model_pair, token_batch, training_step  # noqa: E402
from smollm135_model import PRESETS  # noqa: E402


def test_reference_llama_holds_our_weights_where_the_layouts_coincide():
    ours, reference = model_pair(PRESETS["tiny"], torch.device("cpu"))
    expected = llama_state_dict(ours)
    assert set(expected) == set(reference.state_dict())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_benchmark_training_step_runs_on_both_models():
    ours, reference = model_pair(PRESETS["tiny"], torch.device("cpu"))
    tokens = token_batch(2, 17, torch.device("cpu"))
    for model, side in ((ours, "ours"), (reference, "reference")):
        loss = training_step(model, side, tokens, torch.float32)()
        assert 10 < loss.item() < 12  # about ln(50,304) for fresh weights
