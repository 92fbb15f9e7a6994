"""The host probes: a precision or kernel is taken only where this host measures it faster, the answer is
remembered per host and model shape, and the choice is said on the console."""
import json
from dataclasses import fields

import pytest
import torch

from smollm135_model import CpuKernels, ModelConfig, build_model
from smolm135.runtime import probes
from smolm135.runtime.device import choose_precision

from conftest import tiny_train_config

SMALL = ModelConfig(vocab_size=256, block_size=32, n_layer=2, n_head=2, n_embd=32, intermediate_size=64)
CPU = torch.device("cpu")


def fake_host(flags, known=True):
    return probes.Host("Test CPU 9000", 2, 2, tuple(flags), known, "AVX2", torch.__version__, "MKL 2024.2")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(probes.CACHE_DIR_ENV, str(tmp_path))
    return tmp_path / probes.CACHE_FILE


def test_the_host_line_names_the_cpu_cores_isa_torch_and_blas():
    host = probes.this_host()
    line = host.line()
    assert host.cpu_model in line and f"{host.cores} cores" in line
    assert f"torch {torch.__version__}" in line and "BLAS" in line and host.capability in line
    assert "ISA avx2 amx_bf16" in fake_host(["avx2", "amx_bf16"]).line()
    assert "flags unknown" in fake_host([], known=False).line()


def test_an_answer_is_measured_once_then_read_from_the_cache_file(cache):
    measured = []

    def measure():
        measured.append(1)
        return {"fast": True}

    assert probes.remembered("question", measure) == {"fast": True}
    assert probes.remembered("question", measure) == {"fast": True}
    assert len(measured) == 1
    assert list(json.loads(cache.read_text()).values()) == [{"fast": True}]
    assert probes.remembered("another question", measure) == {"fast": True} and len(measured) == 2


def test_a_corrupt_or_unwritable_cache_only_means_measuring_again(cache, monkeypatch):
    cache.write_text("{not json")
    assert probes.remembered("question", lambda: {"answer": 1}) == {"answer": 1}
    assert json.loads(cache.read_text())  # rewritten whole
    monkeypatch.setenv(probes.CACHE_DIR_ENV, str(cache / "not a folder"))
    assert probes.remembered("question", lambda: {"answer": 2}) == {"answer": 2}


def test_answers_hold_only_for_the_host_they_were_measured_on(cache, monkeypatch):
    monkeypatch.setattr(probes, "this_host", lambda: fake_host(["avx2"]))
    probes.remembered("question", lambda: {"host": "first"})
    monkeypatch.setattr(probes, "this_host", lambda: fake_host(["avx2", "avx512_bf16"]))
    assert probes.remembered("question", lambda: {"host": "second"}) == {"host": "second"}


def test_auto_on_a_cpu_without_native_bf16_is_fp32_without_measuring(cache, monkeypatch):
    monkeypatch.setattr(probes, "this_host", lambda: fake_host(["avx2", "fma"]))
    monkeypatch.setattr(probes, "_measure_training_precision", lambda *args: pytest.fail("measured"))
    precision = choose_precision("auto", CPU, SMALL, 16)
    assert precision.dtype == torch.float32
    assert precision.reason == "fp32: this CPU has no fast bf16"
    assert not precision.bf16_attention_by_matmuls


@pytest.mark.parametrize("flags, known", [(["avx512_bf16"], True), (["amx_bf16"], True), ([], False)])
@pytest.mark.parametrize("speedup, expected", [(1.4, torch.bfloat16), (1.04, torch.float32), (1 / 1.6, torch.float32)])
def test_auto_takes_bf16_only_where_this_host_measures_it_faster(cache, monkeypatch, flags, known, speedup, expected):
    """1.04x faster is within the probe's noise: fp32, the more exact, is kept."""
    monkeypatch.setattr(probes, "this_host", lambda: fake_host(flags, known))
    monkeypatch.setattr(probes, "_measure_training_precision", lambda *args: {
        "fp32_seconds": 2.0, "bf16_seconds": 2.0 / speedup, "bf16_attention_by_matmuls": True})
    precision = choose_precision("auto", CPU, SMALL, 16)
    assert precision.dtype == expected
    if expected == torch.bfloat16:
        assert precision.reason == "bf16: 1.4x faster than fp32 here"
    else:
        assert precision.reason.startswith("fp32: bf16 took")
    assert precision.bf16_attention_by_matmuls  # measured, so known for --dtype bfloat16 too
    assert choose_precision("bfloat16", CPU, SMALL, 16).dtype == torch.bfloat16  # asked for: taken
    assert choose_precision("float32", CPU, SMALL, 16).dtype == torch.float32


@pytest.mark.parametrize("screen", [True, False])
def test_the_training_precision_probe_times_both_precisions_and_both_attention_kernels(cache, screen):
    answer = probes._measure_training_precision(SMALL, 16, screen=screen)
    assert answer["fp32_seconds"] > 0 and answer["bf16_seconds"] > 0
    assert isinstance(answer["bf16_attention_by_matmuls"], bool)


def test_the_decode_probe_answers_in_kernel_choices_and_leaves_the_model_as_it_was(cache):
    model = build_model(SMALL)
    model.use_cpu_kernels(split_products=True)
    before = {name: p.clone() for name, p in model.named_parameters()}
    answer = probes.cpu_decode_kernels(model)
    assert set(answer) == {"split_products", "decode_attention_by_matmuls"} <= {f.name for f in fields(CpuKernels)}
    assert all(isinstance(value, bool) for value in answer.values())
    assert model.training and model.cpu_kernels == CpuKernels(split_products=True)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert probes.cpu_decode_kernels(model) == answer  # remembered
    assert len(json.loads(cache.read_text())) == 1


@pytest.mark.slow
def test_the_trainer_says_which_precision_auto_chose_and_why(corpus_file, tmp_path, monkeypatch, cache):
    from smolm135.training.trainer import train

    monkeypatch.setattr(probes, "this_host", lambda: fake_host(["avx2"]))
    cfg = tiny_train_config(corpus_file, tmp_path / "run", dtype="auto", max_steps=1, eval_every=100,
                            checkpoint_every=100, sample_every=100)
    _, summary = train(cfg)
    log = open(summary["log_path"]).read()
    assert "precision float32" in log and "--dtype auto: fp32: this CPU has no fast bf16" in log
