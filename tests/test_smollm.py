"""The SmolLM family: rotary positions in the one architecture, the published presets, and parity with
transformers' Llama holding the same weights."""
import pytest
import torch

from smollm135_model import PRESETS, ModelConfig, SmoLM135_Model, build_model


@pytest.fixture(scope="module")
def rotary_model():
    torch.manual_seed(0)
    return build_model("tiny-rotary").eval()


@pytest.mark.parametrize("preset, theta, context", [("smollm2-135m", 100_000.0, 8192), ("smollm-135m", 10_000.0, 2048)])
def test_smollm_presets_have_the_published_layout_and_parameter_count(preset, theta, context):
    cfg = PRESETS[preset]
    assert (cfg.vocab_size, cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.intermediate_size) == (
        49152, 30, 576, 9, 3, 1536)
    assert (cfg.position_embedding, cfg.rope_theta, cfg.block_size, cfg.norm_eps) == ("rotary", theta, context, 1e-5)
    with torch.device("meta"):  # shapes only: no memory, no init time
        counts = SmoLM135_Model(cfg).num_parameters()
    assert counts == {"token_embedding": 49152 * 576, "position_embedding": 0,
                      "non_embedding": 134_515_008 - 49152 * 576, "total": 134_515_008}


def test_rotary_models_have_no_position_embedding(rotary_model):
    assert "wpe" not in rotary_model.transformer
    assert not any("wpe" in name for name in rotary_model.state_dict())


def test_configs_saved_before_rotary_existed_load_as_learned_positions():
    old = PRESETS["tiny"].to_dict()
    del old["position_embedding"], old["rope_theta"]
    cfg = ModelConfig.from_dict(old)
    assert cfg.position_embedding == "learned" and cfg == PRESETS["tiny"]


def test_unknown_position_embedding_is_refused():
    with pytest.raises(ValueError, match="position_embedding"):
        build_model("tiny", position_embedding="alibi")


def test_rotary_attention_depends_only_on_relative_positions(rotary_model):
    x = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        logits, _ = rotary_model(x)
        shifted, _ = rotary_model(x, position_ids=torch.arange(100, 120))
    torch.testing.assert_close(shifted, logits, rtol=1e-4, atol=1e-4)  # the same sequence further on
    with torch.no_grad():
        other_order, _ = rotary_model(x.flip(1))
    assert not torch.allclose(other_order.flip(1)[:, -1], logits[:, -1], atol=1e-3)  # order still matters


def test_rotary_greedy_generation_is_identical_with_and_without_the_kv_cache(rotary_model):
    prompt = torch.randint(0, 50257, (3, 7))
    cached = rotary_model.generate(prompt, max_new_tokens=25, temperature=0)
    uncached = rotary_model.generate(prompt, max_new_tokens=25, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached) and cached.shape == (3, 32)


def test_rotary_cached_decoding_computes_the_logits_of_the_full_forward(rotary_model):
    from smollm135_model import KVCache

    sequence = torch.randint(0, 50257, (2, 12))
    cache = KVCache(rotary_model.config, 2, 12, "cpu", torch.float32)
    with torch.no_grad():
        full, _ = rotary_model(sequence)
        rotary_model(sequence[:, :8], kv_cache=cache)
        for position in range(8, 12):
            step, _ = rotary_model(sequence[:, position:position + 1], kv_cache=cache)
            torch.testing.assert_close(step[:, 0], full[:, position], rtol=1e-4, atol=1e-4)


def test_rotary_chunked_loss_and_gradient_checkpointing_match_the_plain_loss():
    torch.manual_seed(0)
    model = build_model("tiny-rotary")
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    _, plain = model(x, y)
    plain.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    for checkpointed in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = checkpointed
        _, fused = model(x, y, return_logits=False)
        fused.backward()
        torch.testing.assert_close(fused, plain)
        for expected, p in zip(plain_grads, model.parameters()):
            torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)


def test_rotary_bf16_attention_by_matmuls_matches_sdpa(rotary_model, monkeypatch):
    import smollm135_model

    model = build_model("tiny-rotary").to(torch.bfloat16).eval()
    x = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        by_matmuls, _ = model(x)
        monkeypatch.setattr(smollm135_model, "MATMUL_ATTENTION_MAX_LENGTH", 0)
        by_sdpa, _ = model(x)
    torch.testing.assert_close(by_matmuls.float(), by_sdpa.float(), rtol=5e-2, atol=5e-2)
