"""One generation policy: the same sampling defaults, the same start token and the same way of fitting a prompt
into the context in the native `generate`, the trainer's samples, the demo, the exported generation config and
the model card; and one causal mask for every attention path."""
import inspect
import json
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import GenerationConfig

from smolm135.inference import demo as app
from conftest import REPO_ROOT, smollm_style_tokenizer
from smolm135.interop.convert import (build_generation_config, build_hf_tokenizer, hf_model_from_native,
                                      special_token_ids)
from modeling_smolm135 import SmoLM135Config, attention_mask_for_sdpa
from smollm135_model import PRESETS, SmoLM135_Model, build_model, causal_mask, fit_to_context
from smolm135.checkpoint import TrainingFacts
from smolm135.inference.generation import SAMPLING, continue_text, decode_bytes, fit_prompt
from smolm135.interop.model_card import render_model_card
from smolm135.data.tokenizer import END_OF_TEXT, GPT2TextTokenizer, JsonTokenizer, get_tokenizer, start_token_id
from smolm135.training.config import TrainConfig

LONG_PROMPT = " ".join(["the old king follows a small boat down the river at night"] * 6)  # about 70 tokens


@pytest.fixture(scope="module")
def short_context_model():
    """One layer, a 32-token context: long prompts need fitting."""
    torch.manual_seed(0)
    return build_model("tiny", n_layer=1, block_size=32).eval()


def native_text_model(model):
    info = app.ModelInfo(source="test", kind="native checkpoint", parameters=model.num_parameters()["total"],
                         context_length=model.config.block_size)
    return app.NativeTextModel(model, info)


def test_generate_the_demo_the_export_and_the_card_share_one_set_of_sampling_defaults(tmp_path):
    policy = (SAMPLING.temperature, SAMPLING.top_k, SAMPLING.top_p)
    for method in (SmoLM135_Model.generate, SmoLM135_Model.generate_stream):
        parameters = inspect.signature(method).parameters
        assert tuple(parameters[name].default for name in ("temperature", "top_k", "top_p")) == policy
    assert (app.TEMPERATURE.default, app.TOP_K.default, app.TOP_P.default) == policy
    settings = app.GenerationSettings()
    assert (settings.temperature, settings.top_k, settings.top_p) == policy

    build_generation_config(SmoLM135Config.from_model_config(PRESETS["tiny"])).save_pretrained(tmp_path)
    exported = json.loads((tmp_path / "generation_config.json").read_text())
    assert exported["do_sample"] is True
    assert (exported["temperature"], exported["top_k"], exported["top_p"]) == policy

    card = render_model_card(PRESETS["tiny"], 1000, TrainingFacts(), "me/model", "model", "mit", False)
    assert re.findall(r"temperature[ =]([\d.]+)", card) == [str(SAMPLING.temperature)] * 2
    assert re.findall(r"top[-_]k[ =](\d+)", card) == [str(SAMPLING.top_k)] * 2
    assert re.findall(r"top[-_]p[ =]([\d.]+)", card) == [str(SAMPLING.top_p)] * 2


def test_the_exported_generation_config_sets_no_length_so_a_callers_max_length_holds(tmp_path):
    torch.manual_seed(0)
    hf_model = hf_model_from_native(build_model("tiny", n_layer=1))
    build_generation_config(hf_model.config).save_pretrained(tmp_path)
    assert not {"max_new_tokens", "max_length"} & json.loads((tmp_path / "generation_config.json").read_text()).keys()
    hf_model.generation_config = GenerationConfig.from_pretrained(tmp_path)
    input_ids = torch.randint(0, 50257, (1, 5))
    # an evaluation harness asks for a total length; a stored max_new_tokens would silently win over it
    out = hf_model.generate(input_ids, max_length=9, do_sample=False)
    assert out.shape == (1, 9)


def test_an_empty_prompt_starts_from_the_end_of_text_token_everywhere(short_context_model):
    assert start_token_id(get_tokenizer()) == start_token_id(build_hf_tokenizer(32)) == 50256

    started_from = []

    class Recording(app.NativeTextModel):
        def stream(self, prompt_ids, settings):
            started_from.append(prompt_ids)
            yield from super().stream(prompt_ids, settings)

    text_model = native_text_model(short_context_model)
    list(app.generate_text(Recording(text_model.model, text_model.info), "", 3))
    assert started_from == [[50256]]

    assert continue_text(short_context_model, GPT2TextTokenizer(), "", 3, seed=0).startswith(END_OF_TEXT)


def test_a_model_with_its_own_tokenizer_starts_from_its_bos_else_its_separator_in_the_demo_and_the_export(
        short_context_model):
    with_bos = smollm_style_tokenizer("some text to learn from, 123 and 456. " * 20)
    without_bos = JsonTokenizer(with_bos.tokenizer_json, eos_token="<|im_end|>")
    assert start_token_id(with_bos) == with_bos.token_id("<|im_start|>")
    assert start_token_id(without_bos) == without_bos.document_separator_id == without_bos.token_id(END_OF_TEXT)
    info = native_text_model(short_context_model).info
    for tokenizer in (with_bos, without_bos):
        demo_start = app.NativeTextModel(short_context_model, info, tokenizer).start_token_id
        assert demo_start == special_token_ids(tokenizer)["bos_token_id"] == start_token_id(tokenizer)


@pytest.mark.slow
def test_the_demo_the_trainer_and_generate_fit_a_long_prompt_the_same_way(short_context_model):
    encoder = get_tokenizer()
    prompt_ids = encoder.encode_ordinary(LONG_PROMPT)
    assert len(prompt_ids) > 40
    cfg = TrainConfig(sample_prompt=LONG_PROMPT, sample_tokens=20, seed=5)
    # a 32-token context and 20 new tokens: the prompt keeps half the context, the new tokens get the rest
    assert fit_prompt(prompt_ids, 20, 32)[:2] == (prompt_ids[-16:], 16)

    continuation, status = list(app.generate_text(native_text_model(short_context_model), LONG_PROMPT, 20,
                                               SAMPLING.temperature, SAMPLING.top_k, SAMPLING.top_p, seed=5))[-1]
    assert "only its last 16 tokens" in status and "16 new tokens in" in status
    assert continuation  # the demo streams the continuation alone: the prompt stays in its box
    trainer_text = continue_text(short_context_model, GPT2TextTokenizer(), cfg.sample_prompt, cfg.sample_tokens,
                                 seed=cfg.seed)
    assert trainer_text == encoder.decode(prompt_ids[-16:]) + continuation

    # generate never cuts its caller's prompt, and a fitted prompt is never cut further
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streamed = list(short_context_model.generate_stream(torch.tensor([prompt_ids[-16:]]), max_new_tokens=16))
    assert len(streamed) == 16
    with pytest.warns(UserWarning, match="context length"):
        assert len(list(short_context_model.generate_stream(torch.tensor([prompt_ids[-20:]]), max_new_tokens=16))) == 12


@pytest.mark.parametrize("context_length", [1, 2, 7, 32])
def test_fitting_keeps_the_whole_prompt_when_told_and_never_overflows_the_context(context_length):
    for prompt_length in range(1, 2 * context_length + 3):
        for max_new_tokens in range(0, 2 * context_length + 3):
            kept, new = fit_to_context(prompt_length, max_new_tokens, context_length)
            assert 1 <= kept <= prompt_length and 0 <= new <= max_new_tokens
            assert kept + new <= max(context_length, kept)
            if prompt_length + max_new_tokens <= context_length:
                assert (kept, new) == (prompt_length, max_new_tokens)  # nothing cut when it all fits
            whole, room = fit_to_context(prompt_length, max_new_tokens, context_length, min_prompt_length=prompt_length)
            assert whole == prompt_length and room == max(0, min(max_new_tokens, context_length - prompt_length))


def test_padding_rows_of_the_embedding_decode_to_nothing():
    encoder = get_tokenizer()
    ids = encoder.encode_ordinary("The king")
    assert decode_bytes(encoder, [*ids, 50300, *ids]) == encoder.decode_bytes(ids + ids)


def test_one_causal_mask_is_bottom_right_aligned_for_every_attention_path():
    mask = causal_mask(2, 5)
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    assert torch.equal(causal_mask(4, 4), torch.ones(4, 4, dtype=torch.bool).tril())
    padding = torch.ones(1, 5, dtype=torch.long)
    padding[0, 0] = 0
    assert torch.equal(attention_mask_for_sdpa(padding, 2)[0, 0], mask & padding.bool())


@pytest.mark.slow
def test_importing_the_demo_changes_no_environment_variable():
    env = {key: value for key, value in os.environ.items() if not key.startswith("GRADIO_")}
    script = "import os; before = dict(os.environ); import app; print(dict(os.environ) == before)"
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.stdout.strip() == "True", result.stderr[-2000:]
    assert app.build_demo(None).analytics_enabled is False
