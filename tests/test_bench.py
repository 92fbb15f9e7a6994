"""The benchmarks' shared pieces keep working: the reference holds our weights, and a step runs on both."""

import pytest
import torch

from bench.harness import llama_state_dict, model_pair, token_batch, training_step
from smollm135_model import PRESETS


def test_reference_llama_holds_our_weights_where_the_layouts_coincide():
    ours, reference = model_pair(PRESETS["tiny"], torch.device("cpu"))
    expected = llama_state_dict(ours)
    assert set(expected) == set(reference.state_dict())
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


@pytest.mark.slow
def test_a_benchmark_training_step_runs_on_both_models():
    ours, reference = model_pair(PRESETS["tiny"], torch.device("cpu"))
    tokens = token_batch(2, 17, torch.device("cpu"))
    for model, side in ((ours, "ours"), (reference, "reference")):
        loss = training_step(model, side, tokens, torch.float32)()
        assert 10 < loss.item() < 12  # about ln(50,304) for fresh weights


@pytest.mark.slow
def test_the_scripts_behind_gpu_sh_and_generation_run_in_quick_mode_on_a_cpu(capsys):
    from bench import generation, recipe_projection, throughput

    cpu = ["--quick", "--device", "cpu", "--repeats", "1"]
    measured = throughput.main(cpu + ["--batch-size", "2", "--seq-len", "16", "--dtype", "float32"])
    assert measured["tokens_per_second"] > 0 and measured["mfu"] is None  # no known peak for a CPU
    projection = recipe_projection.main(["--quick", "--device", "cpu", "--steps", "4"])
    assert projection["projected_seconds"] > projection["wall_seconds"] > 0
    ratios = generation.main(cpu + ["--new-tokens", "4"])
    assert ratios["float32"] > 0
    assert "projected 5,000-step run" in capsys.readouterr().out


@pytest.mark.slow
def test_the_gguf_load_benchmark_finds_the_same_weights_on_both_sides(capsys):
    from bench import gguf_load

    measured = gguf_load.main(["--quick", "--device", "cpu", "--repeats", "1"])
    assert measured["same_weights"] and measured["load"] > 0
    assert "the same fp32 weights on both sides: yes" in capsys.readouterr().out


@pytest.mark.slow
def test_the_lora_benchmark_times_and_measures_both_sides_in_quick_mode(capsys):
    from bench import lora

    ratios = lora.main(["--quick", "--device", "cpu", "--repeats", "1", "--batch-size", "2", "--seq-len", "16"])
    assert set(ratios) == {"step time", "step peak memory", "total peak memory"}
    assert all(value > 0 for value in ratios.values())
    assert "65,536 trainable parameters" in capsys.readouterr().out  # rank 8 on the 4 tiny-rotary blocks
