"""--chat-template chatml: a model without a chat template (GPT-2's tokenizer, or a BPE learned from text) takes
ChatML's template and its two special tokens, after its vocabulary; its embedding gains their rows and keeps every
other row bitwise; its checkpoints carry both, so continuing, scoring, the demo and the exports use them unasked."""
from __future__ import annotations

import pytest

from smolm135.data.chat import Conversation, ConversationEncoder
from smolm135.data.tokenizer import (
    CHATML_TEMPLATE,
    GPT2TextTokenizer,
    get_tokenizer,
    start_token_id,
    tokenizer_from_record,
    train_byte_level_bpe,
    with_chat_template,
)

from conftest import make_corpus_text

SCRATCH_VOCAB_SIZE = 320  # the learned BPE fills every row: ChatML's tokens need new ones
CONVERSATION = [{"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "The cat sees the moon."},
                {"role": "assistant", "content": "A dog likes the river."},
                {"role": "user", "content": "What does <|im_start|> mean?"},  # the marker's text, typed by a user
                {"role": "assistant", "content": "The sailor finds a small boat!"}]


@pytest.fixture(scope="module")
def gpt2_chatml():
    return with_chat_template(GPT2TextTokenizer(), "chatml")


def learned_bpe(vocab_size: int = SCRATCH_VOCAB_SIZE):
    return train_byte_level_bpe([make_corpus_text(4000)], vocab_size, origin="a byte-level BPE learned from corpus.txt")


# ------------------------------------------------------------------ the tokenizer


def test_chatml_adds_its_two_tokens_after_gpt2s_vocabulary_whose_ids_stay(gpt2_chatml):
    assert [gpt2_chatml.token_id(token) for token in ("<|im_start|>", "<|im_end|>")] == [50257, 50258]
    assert gpt2_chatml.n_vocab == 50259 and gpt2_chatml.chat_template == CHATML_TEMPLATE
    assert gpt2_chatml.eos_token == "<|im_end|>" and gpt2_chatml.end_token_ids == (50258, 50256)  # turn, then text
    assert gpt2_chatml.document_separator_id == start_token_id(gpt2_chatml) == 50256
    for text in ["The cat sees the moon.", "héllo wörld 🙂 東京 \r\n\tf(x) { x**2; }", "  two  spaces\n\n", "<|endoftext"]:
        assert gpt2_chatml.encode(text) == get_tokenizer().encode_ordinary(text), text
    assert gpt2_chatml.chat_prompt(CONVERSATION[1:2]) == "<|im_start|>user\nThe cat sees the moon.<|im_end|>\n" \
                                                         "<|im_start|>assistant\n"


def test_chatml_adds_its_two_tokens_after_a_learned_vocabulary_and_the_record_keeps_them():
    before = learned_bpe()
    after = with_chat_template(before, "chatml")
    assert before.n_vocab == SCRATCH_VOCAB_SIZE and not before.has_chat_template
    assert [after.token_id(token) for token in ("<|im_start|>", "<|im_end|>")] == [320, 321]
    assert after.encode(make_corpus_text(20)) == before.encode(make_corpus_text(20))
    assert "learned from corpus.txt with ChatML's <|im_start|> and <|im_end|> (322 tokens)" in after.description
    rebuilt = tokenizer_from_record(after.to_record())
    assert rebuilt.fingerprint == after.fingerprint and rebuilt.chat_template == CHATML_TEMPLATE


def test_a_chatml_conversation_tokenizes_as_the_export_does_and_only_answers_carry_loss(gpt2_chatml):
    from smolm135.interop.convert import build_hf_tokenizer

    encoded = ConversationEncoder(gpt2_chatml).encode(Conversation(CONVERSATION, "test"))
    exported = build_hf_tokenizer(512, gpt2_chatml)  # the tokenizer convert_to_hf.py saves
    assert encoded.ids.tolist() == exported.apply_chat_template(CONVERSATION, tokenize=True)["input_ids"]
    # the marker's text in a message is the marker, for transformers as for the model's own rendering
    assert encoded.ids.tolist().count(50257) == len(CONVERSATION) + 1
    pieces = [gpt2_chatml.decode([token]) for token in encoded.ids.tolist()]
    masked = "".join(piece for piece, kept in zip(pieces, encoded.assistant) if kept)
    assert masked == "A dog likes the river.<|im_end|>The sailor finds a small boat!<|im_end|>"
    assert [pieces[end - 1] for end in encoded.answer_ends] == ["<|im_end|>", "<|im_end|>"]
    assert not encoded.assistant[encoded.answer_ends[0]]  # the newline after <|im_end|> is the template's
