"""llama.cpp reads our GGUF files as we mean them: its tokenizer turns text into our ids (GPT-2's BPE and a
SmolLM-style tokenizer.json that splits digits one by one), its logits are the native model's within the
export's limits, and its greedy tokens are the native model's (up to ties closer than the rounding of
the file's type, by the export's own rule).

Needs llama-cpp-python, the optional extra `llamacpp` (it compiles llama.cpp); skipped without it.
"""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from smolm135.errors import extra_install
from smolm135.interop.convert import MAX_LOGIT_DIFFERENCE
from smollm135_model import PRESETS, padded_vocab_size
from smolm135.interop.export_gguf import RELATIVE_TOLERANCE, greedy_departures, native_greedy, write_gguf
from smolm135.data.tokenizer import END_OF_TEXT, GPT2TextTokenizer

from conftest import make_corpus_text, random_rotary_model, smollm_style_tokenizer

llama_cpp = pytest.importorskip(
    "llama_cpp", reason=f"the llamacpp extra is not installed ({extra_install('llamacpp')}, which compiles "
                        f"llama.cpp): GGUF exports are not checked against llama.cpp")

PROMPT = "To be, or not to be: that is the question."
TEXTS = ["Hello world, this is a test.", "In 2024 we sold 1234567 apples at $3.50 each (+12.5%).",
         "Ünïcödé ✓ 日本語 naïve café", "emoji 🤖🎉👍🏽", "def f(x):\n\treturn {'a': x ** 2}  # code\n",
         "  leading   spaces\n\n\n\ttabs \r\n trailing  ", "it's, we're, they'll, I'd, she's", ""]


def load_llama_cpp(path: Path, n_ctx: int = 128):
    """`path` in llama.cpp, with the logits of every position kept and an fp32 KV cache (its default, fp16,
    would round keys and values that our fp32 model keeps exact)."""
    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False,
                           n_threads=1, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def llama_cpp_tokens(llm, text: str, special: bool = False) -> list[int]:
    """llama.cpp's ids for `text`; `special`: the spellings of special tokens in it are those tokens."""
    return llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)


def llama_cpp_choices(llm, input_ids: list[int], continuation: list[int]) -> tuple[np.ndarray, list[int]]:
    """((T, V) logits of the prompt, llama.cpp's greedy choice after the prompt and after each token of
    `continuation` but the last), one decode step per token: teacher-forced, as the export checks its files."""
    llm.reset()
    llm.eval(input_ids)
    prompt_logits = np.array(llm.scores[:len(input_ids)])
    choices = []
    for token in continuation:
        choices.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([token])
    return prompt_logits, choices


# ------------------------------------------------------------------ GPT-2's tokenizer, the model's tokens


@pytest.fixture(scope="module")
def tiny_rotary():
    """The random tiny rotary model with sharp attention: at its init scale attention is nearly uniform, and
    the greedy tokens would not notice a rotary or attention mistake."""
    model = random_rotary_model()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("qkv_proj.weight"):
                parameter.mul_(5)  # q.k scores of order 5 instead of 0.05; v outweighs the residual
    return model


@pytest.fixture(scope="module", params=["f32", "q8_0"])
def gguf_in_llama_cpp(request, tiny_rotary, module_tmp):
    path = module_tmp.mktemp("gguf") / f"tiny-{request.param}.gguf"
    write_gguf(tiny_rotary, GPT2TextTokenizer(), path, request.param, path.stem)
    llm = load_llama_cpp(path)
    yield request.param, llm
    llm.close()  # now: left to interpreter exit, llama-cpp-python's cleanup fails noisily


def test_llama_cpp_tokenizes_text_into_our_gpt2_ids(gguf_in_llama_cpp):
    _, llm = gguf_in_llama_cpp
    tokenizer = GPT2TextTokenizer()
    for text in [*TEXTS, f"one{END_OF_TEXT}two"]:  # a special token's spelling in text is text, as ours
        assert llama_cpp_tokens(llm, text) == tokenizer.encode(text), text


def test_llama_cpp_greedy_tokens_are_the_native_models(gguf_in_llama_cpp, tiny_rotary):
    gguf_type, llm = gguf_in_llama_cpp
    input_ids = GPT2TextTokenizer().encode(PROMPT)
    greedy = native_greedy(tiny_rotary, input_ids)
    logits, choices = llama_cpp_choices(llm, input_ids, greedy)
    with torch.no_grad():  # the native logits along its own continuation
        expected = tiny_rotary(torch.tensor([input_ids + greedy]))[0][0]  # (T + steps, V)
    # the export's own limit for this type against transformers' GGUF loader holds for llama.cpp too
    limit = max(MAX_LOGIT_DIFFERENCE, RELATIVE_TOLERANCE[gguf_type] * expected.abs().max().item())
    assert np.abs(logits - expected[:len(input_ids)].numpy()).max() <= limit
    # each choice is the native best, or (q8_0 rounds weights and, in llama.cpp, activations) a near tie with
    # it: the export's rule
    assert greedy_departures(expected[len(input_ids) - 1:-1], choices, limit) == []


# ------------------------------------------------------------------ a SmolLM-style tokenizer.json


def test_llama_cpp_tokenizes_text_into_the_ids_of_a_smollm_style_tokenizer(tmp_path, request):
    tokenizer = smollm_style_tokenizer(make_corpus_text(400) + " ".join(TEXTS) + " 0123456789" * 10)
    model = random_rotary_model(config=replace(PRESETS["tiny-rotary"], vocab_size=padded_vocab_size(tokenizer.n_vocab)))
    path = write_gguf(model, tokenizer, tmp_path / "smollm-style.gguf", "f32", "smollm-style")
    from gguf import GGUFReader

    pre = GGUFReader(path).fields["tokenizer.ggml.pre"]
    assert bytes(pre.parts[pre.data[0]]).decode() == "smollm"
    llm = load_llama_cpp(path)
    request.addfinalizer(llm.close)
    # tokenizers matches every added token whole, special or not: llama.cpp does so when it parses specials
    chat = f"<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n<think>42{END_OF_TEXT}"
    for text in [*TEXTS, chat]:
        assert llama_cpp_tokens(llm, text, special=True) == tokenizer.encode(text), text
    assert tokenizer.encode(chat)[0] == tokenizer.token_id("<|im_start|>")
