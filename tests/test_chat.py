"""Chat with a model that has a chat template: the conversation rendered by the template, the reply streamed
until the end-of-turn token, the oldest turns left out when the context is too small; no chat for GPT-2."""
from __future__ import annotations

import itertools

import pytest
import torch

from smolm135.inference import demo as app
from smollm135_model import build_model
from smolm135.errors import UserError
from smolm135.inference.generation import fit_conversation
from smolm135.data.tokenizer import GPT2TextTokenizer, JsonTokenizer, render_chat

from conftest import CHAT_TEMPLATE, CHAT_VOCAB_SIZE, save_tiny_chat_checkpoint, tiny_chat_backend, tiny_chat_tokenizer

HISTORY = [{"role": "user", "content": "The cat sees the moon."},
           {"role": "assistant", "content": "A dog likes the river."}]


@pytest.fixture(scope="module")
def chat_tokenizer() -> JsonTokenizer:
    return tiny_chat_tokenizer()


def chat_model(tokenizer, **overrides) -> app.NativeTextModel:
    torch.manual_seed(0)
    model = build_model("tiny-rotary", vocab_size=CHAT_VOCAB_SIZE, **overrides).eval()
    info = app.ModelInfo("chat.pt", "native checkpoint", model.num_parameters()["total"], model.config.block_size)
    return app.NativeTextModel(model, info, tokenizer)


def ends_turn_after(text_model, n_tokens: int, monkeypatch, end_token: str = "<|im_end|>") -> list[torch.Tensor]:
    """Make the untrained model end its turn as its `n_tokens`-th new token (its logits pushed towards
    `end_token` from then on); returns the inputs of every forward pass."""
    end_id = text_model.tokenizer.token_id(end_token)
    forward, fed = text_model.model.forward, []

    def forced(idx, *args, **kwargs):
        fed.append(idx.clone())
        logits, loss = forward(idx, *args, **kwargs)
        if len(fed) >= n_tokens:
            logits[..., end_id] += 1e4
        return logits, loss

    monkeypatch.setattr(text_model.model, "forward", forced)
    return fed


def last(steps):
    *_, final = steps
    return final


# ------------------------------------------------------------------ the tokenizer's side


def test_the_tokenizer_renders_a_conversation_as_transformers_does(chat_tokenizer):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tiny_chat_backend(), eos_token="<|im_end|>",
                                 bos_token="<|im_start|>")
    hf.chat_template = CHAT_TEMPLATE
    assert chat_tokenizer.has_chat_template and chat_tokenizer.end_token_ids == (2, 0)  # end of turn first
    assert chat_tokenizer.chat_prompt(HISTORY) == hf.apply_chat_template(HISTORY, add_generation_prompt=True,
                                                                         tokenize=False)


def test_gpt2_has_no_chat_template_and_says_so_in_one_line():
    tokenizer = GPT2TextTokenizer()
    assert not tokenizer.has_chat_template
    with pytest.raises(UserError, match="no chat template"):
        tokenizer.chat_prompt(HISTORY)


def test_a_template_runs_sandboxed_and_its_refusal_is_a_user_error():
    with pytest.raises(UserError, match="refused"):
        render_chat("{{ ''.__class__.__mro__[1].__subclasses__() }}", HISTORY)
    with pytest.raises(UserError, match="roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", HISTORY)


def test_the_oldest_turns_are_left_out_first_until_the_conversation_fits():
    turns = [{"role": role, "content": str(n)} for n in range(6) for role in ("user", "assistant")][:-1]
    def encode(messages):
        return [0] * (10 * len(messages))  # ten tokens a message

    ids, fitting, notes = fit_conversation(turns, encode, max_new_tokens=30, context_length=64)
    assert len(ids) == 30 and fitting == 30  # the last three messages: the last turn and the new message
    assert "oldest 8 messages were left out" in notes[0] and len(notes) == 1
    ids, fitting, notes = fit_conversation(turns[:3], encode, max_new_tokens=30, context_length=64)
    assert len(ids) == 30 and notes == []  # fits whole: nothing said
    ids, fitting, notes = fit_conversation([{"role": "user", "content": "long"}], lambda _: [0] * 200, 30, 64)
    assert len(ids) == 34 and "only its last 34 tokens" in notes[0]  # one message alone: cut like any prompt


# ------------------------------------------------------------------ the demo's chat


def test_chat_streams_the_templated_reply_and_stops_at_the_end_of_turn(chat_tokenizer, monkeypatch):
    text_model = chat_model(chat_tokenizer)
    fed = ends_turn_after(text_model, 4, monkeypatch)
    steps = list(app.chat_reply(text_model, "The sailor finds a small boat.", HISTORY, 20, 0, 50, 0.95, 0))
    conversation, status = steps[-1]
    messages = HISTORY + [{"role": "user", "content": "The sailor finds a small boat."}]
    # the prompt is the template's rendering, its special tokens read as such
    assert fed[0][0].tolist() == chat_tokenizer.encode(chat_tokenizer.chat_prompt(messages))
    prompt_ids = fed[0][0].tolist()
    assert prompt_ids.count(1) == 4 and prompt_ids.count(2) == 3  # <|im_start|> x 3 messages + the reply's
    # three tokens of reply, then <|im_end|>: the fourth new token ends the turn, and is no text
    assert "4 new tokens" in status and len(fed) == 4
    assert conversation[:-1] == messages and conversation[-1]["role"] == "assistant"
    reply = conversation[-1]["content"]
    assert reply and "<|im_end|>" not in reply
    replies = [conversation[-1]["content"] for conversation, _ in steps[1:]]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(replies))  # streamed


def test_completion_stops_at_the_end_of_a_text_too(chat_tokenizer, monkeypatch):
    text_model = chat_model(chat_tokenizer)
    ends_turn_after(text_model, 3, monkeypatch, end_token="<|endoftext|>")  # the second of its end tokens
    text, status = last(app.generate_text(text_model, "The cat sees", 20, 0, 50, 0.95, 0))
    assert "3 new tokens" in status and "<|endoftext|>" not in text


def test_chat_leaves_out_the_oldest_turns_when_the_context_is_too_small(chat_tokenizer, monkeypatch):
    text_model = chat_model(chat_tokenizer, block_size=96)
    fed = ends_turn_after(text_model, 3, monkeypatch)
    history = HISTORY * 3  # three turns of 45 tokens each; the new message takes 27
    conversation, status = last(app.chat_reply(text_model, "Hello again.", history, 16, 0, 50, 0.95, 0))
    new_message = [{"role": "user", "content": "Hello again."}]
    kept = fed[0][0].tolist()
    assert len(kept) + 16 <= 96 and "oldest 4 messages were left out" in status
    assert kept == chat_tokenizer.encode(chat_tokenizer.chat_prompt(HISTORY + new_message))
    assert conversation[:-1] == history + new_message  # the page keeps the whole conversation


def test_chat_checks_what_a_client_sends(chat_tokenizer):
    text_model = chat_model(chat_tokenizer)
    assert last(app.chat_reply(text_model, "   ", HISTORY))[1] == "Write a message first."
    sent = [{"role": "system", "content": "leak"}, "junk",
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]  # Gradio 6's message format
    conversation, status = last(app.chat_reply(text_model, "Hello", sent, 2, -5, 0, 1.0, 0))
    assert conversation[:2] == [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello"}]
    assert "Temperature -5 is outside 0..2: used 0" in status and "2 new tokens" in status


def test_a_native_checkpoint_with_a_template_gets_a_chat_tab_and_gpt2_none(chat_tokenizer, tmp_path):
    text_model = app.load_model(checkpoint=save_tiny_chat_checkpoint(tmp_path / "chat.pt", chat_tokenizer),
                                device="cpu")
    assert text_model.has_chat_template and text_model.end_token_ids == (2, 0)
    gpt2 = app.NativeTextModel(build_model("tiny").eval(), app.ModelInfo("gpt2.pt", "native checkpoint", 1, 512))
    for model, has_chat in ((text_model, True), (gpt2, False)):
        demo = app.build_demo(model)
        api_names = {fn.api_name for fn in demo.fns.values()}
        components = {component["type"] for component in demo.config["components"]}
        assert ("chat" in api_names) == has_chat and ("chatbot" in components) == has_chat
        assert "generate" in api_names
    assert last(app.chat_reply(gpt2, "Hi", []))[1].startswith("This model has no chat template")


def test_a_hugging_face_folder_with_a_template_chats_too(chat_tokenizer, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tiny_chat_backend(), eos_token="<|im_end|>",
                                           bos_token="<|im_start|>")
    hf_tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=CHAT_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                 bos_token_id=1, eos_token_id=[2, 0])).save_pretrained(tmp_path)
    hf_tokenizer.save_pretrained(tmp_path)
    text_model = app.load_model(model=str(tmp_path), device="cpu")
    messages = HISTORY + [{"role": "user", "content": "Hi"}]
    assert text_model.has_chat_template
    assert text_model.chat_prompt_ids(messages) == chat_tokenizer.encode(chat_tokenizer.chat_prompt(messages))
    conversation, status = last(app.chat_reply(text_model, "Hi", HISTORY, 5, 0, 50, 0.95, 0))
    assert conversation[-1]["role"] == "assistant" and "new tokens in" in status
