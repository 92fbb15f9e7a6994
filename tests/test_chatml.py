"""--chat-template chatml: a model without a chat template (GPT-2's tokenizer, or a BPE learned from text) takes
ChatML's template and its two special tokens, after its vocabulary; its embedding gains their rows and keeps every
other row bitwise; its checkpoints carry both, so continuing, scoring, the demo and the exports use them unasked."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from smollm135_model import PRESETS, SmoLM135_Model, with_new_token_rows
from smolm135.checkpoint import Checkpoint, TrainingFacts, load_checkpoint, save_atomic
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

from conftest import make_corpus_text, random_rotary_model, tiny_train_config

SCRATCH_VOCAB_SIZE = 320  # the learned BPE fills every row: ChatML's tokens need new ones
SCRATCH_MODEL = replace(PRESETS["tiny-rotary"], vocab_size=SCRATCH_VOCAB_SIZE)
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


def save_scratch_checkpoint(path: Path, tokenizer=None) -> Path:
    """An untrained tiny-rotary model whose tokenizer (a learned BPE) has no chat template, as a from-scratch
    run leaves it."""
    torch.manual_seed(0)
    tokenizer = tokenizer if tokenizer is not None else learned_bpe()
    checkpoint = Checkpoint.from_facts(SmoLM135_Model(SCRATCH_MODEL), TrainingFacts(), "test",
                                       tokenizer=tokenizer.to_record())
    return save_atomic(checkpoint, path)


def write_conversations(path: Path, n: int = 40) -> Path:
    subjects, verbs, objects = ["The cat", "A dog", "The sailor"], ["sees", "likes", "finds"], ["the moon", "a boat"]
    lines = [{"messages": [{"role": "user", "content": f"Who {verbs[i % 3]}?"},
                           {"role": "assistant", "content": f"{subjects[i % 3]} {verbs[i % 2]} {objects[i % 2]}."}]}
             for i in range(n)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------ the tokenizer


def test_chatml_adds_its_two_tokens_after_gpt2s_vocabulary_whose_ids_stay(gpt2_chatml):
    assert [gpt2_chatml.token_id(token) for token in ("<|im_start|>", "<|im_end|>")] == [50257, 50258]
    assert gpt2_chatml.n_vocab == 50259 and gpt2_chatml.chat_template == CHATML_TEMPLATE
    assert gpt2_chatml.eos_token == "<|im_end|>" and gpt2_chatml.end_token_ids == (50258, 50256)  # turn, then text
    assert gpt2_chatml.document_separator_id == start_token_id(gpt2_chatml) == 50256
    texts = ["The cat sees the moon.", "héllo wörld 🙂 東京 \r\n\tf(x) { x**2; }", "  two  spaces\n\n", "<|endoftext"]
    for text in texts:  # the same ids as tiktoken's GPT-2, whatever the text
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


# ------------------------------------------------------------------ the embedding


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("n_tokens, vocab_size", [(320, 384), (300, 320)], ids=["grown", "in the padding"])
def test_new_token_rows_start_as_the_mean_and_old_rows_and_logits_stay_bitwise(tied, n_tokens, vocab_size):
    config = replace(SCRATCH_MODEL, tie_word_embeddings=tied)
    model = random_rotary_model(config=config)
    new_ids = [n_tokens, n_tokens + 1]
    grown = SmoLM135_Model(replace(config, vocab_size=vocab_size)).eval()
    grown.load_state_dict(with_new_token_rows(model.state_dict(), n_tokens, new_ids, vocab_size))
    for name in ("transformer.wte.weight", "lm_head.weight"):
        old, new = model.state_dict()[name], grown.state_dict()[name]  # (V, C), (vocab_size, C)
        assert torch.equal(new[:n_tokens], old[:n_tokens]), name
        assert torch.equal(new[new_ids], old[:n_tokens].mean(dim=0).expand(2, -1)), name
    for name, tensor in model.state_dict().items():  # every other weight is untouched
        if name not in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(grown.state_dict()[name], tensor), name
    idx = torch.randint(0, n_tokens, (2, 16))
    with torch.no_grad():
        before, _ = model(idx)  # (2, 16, V)
        after, _ = grown(idx)  # (2, 16, vocab_size)
    assert torch.equal(after[..., :n_tokens], before[..., :n_tokens])


@pytest.mark.parametrize("bpe_size, rows, keeps_optimizer", [(320, 384, False), (300, 320, True)],
                         ids=["grown", "in the padding"])
def test_a_checkpoint_takes_the_tokens_and_keeps_optimizer_moments_only_where_they_fit(tmp_path, bpe_size, rows,
                                                                                       keeps_optimizer):
    tokenizer = learned_bpe(bpe_size)
    checkpoint = load_checkpoint(save_scratch_checkpoint(tmp_path / "scratch.pt", tokenizer))
    checkpoint.optimizer_state_dict = {"state": {}, "param_groups": []}
    grown = checkpoint.with_added_tokens(with_chat_template(tokenizer, "chatml"), tokenizer.n_vocab)
    assert grown.model_config["vocab_size"] == rows and grown.build_tokenizer().chat_template == CHATML_TEMPLATE
    assert (grown.optimizer_state_dict is not None) == keeps_optimizer
    embedding = grown.model_state_dict["transformer.wte.weight"]  # (rows, C)
    assert torch.equal(embedding[:bpe_size], checkpoint.model_state_dict["transformer.wte.weight"][:bpe_size])
    assert grown.build_model().config.vocab_size == rows


# ------------------------------------------------------------------ runs


@pytest.mark.slow
def test_a_from_scratch_checkpoint_fine_tunes_on_chatml_and_resumes_with_the_same_command(tmp_path):
    from smolm135.training.trainer import train

    start = save_scratch_checkpoint(tmp_path / "scratch.pt")
    cfg = tiny_train_config(write_conversations(tmp_path / "chat.jsonl"), tmp_path / "out", preset="tiny-rotary",
                            model=SCRATCH_MODEL, init_from=str(start), chat_template="chatml", max_steps=2,
                            seq_len=64, batch_size=4, eval_every=2, eval_batches=1, checkpoint_every=2,
                            sample_tokens=4)
    _, summary = train(cfg)
    log = Path(summary["log_path"]).read_text(encoding="utf-8")
    assert "--chat-template chatml: the tokenizer is now a byte-level BPE learned from corpus.txt with ChatML's" in log
    assert "ids 320-321 added, in an embedding of 384 rows; their rows start as the mean" in log
    final = load_checkpoint(summary["final_model_path"])
    assert final.model_config["vocab_size"] == 384 and final.build_tokenizer().chat_template == CHATML_TEMPLATE
    _, resumed = train(replace(cfg, max_steps=4))  # the same command, further: the run's own checkpoint
    assert resumed["start_step"] == 2 and resumed["steps"] == 4


@pytest.mark.slow
def test_a_chatml_run_from_scratch_continues_scores_chats_and_exports_without_the_flag(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from smolm135.inference import demo
    from smolm135.inference.evaluate import evaluate
    from smolm135.interop.convert import convert
    from smolm135.training.continuation import continue_training
    from smolm135.training.trainer import train

    data = write_conversations(tmp_path / "chat.jsonl")
    _, summary = train(tiny_train_config(data, tmp_path / "out", preset="tiny-rotary", chat_template="chatml",
                                         max_steps=2, seq_len=32, batch_size=4, eval_every=2, eval_batches=1,
                                         checkpoint_every=2, sample_tokens=4))
    _, continued = continue_training(summary["final_model_path"], steps=1, out_dir=str(tmp_path / "out"),
                                     data=str(data), device="cpu", dtype="float32", progress=False)
    checkpoint = continued["final_model_path"]
    tokenizer = load_checkpoint(checkpoint).build_tokenizer()
    assert tokenizer.chat_template == CHATML_TEMPLATE and tokenizer.n_vocab == 50259

    [result] = evaluate([checkpoint], str(data), device="cpu", dtype="float32", show_progress=False,
                        say=lambda _: None)
    assert result.score.tokens > 0 and result.score.bits_per_byte > 0  # scored on the answers, through ChatML

    text_model = demo.load_model(checkpoint=checkpoint, device="cpu")  # a Chat tab, ending replies at <|im_end|>
    assert "chat" in {fn.api_name for fn in demo.build_demo(text_model).fns.values()}
    assert text_model.end_token_ids == (50258, 50256)
    ends_turn_after_three_tokens(text_model, monkeypatch)
    *_, (conversation, status) = demo.chat_reply(text_model, "Who sees?", [], 20, 0, 50, 0.95, 0)
    assert "3 new tokens" in status and conversation[-1]["content"] and "<|im_end|>" not in conversation[-1]["content"]

    folder = convert(checkpoint, tmp_path / "hf", say=lambda _: None)  # verified in a fresh process
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == CHATML_TEMPLATE and config["eos_token"] == "<|im_end|>"
    exported = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert [exported.convert_tokens_to_ids(token) for token in ("<|im_start|>", "<|im_end|>")] == [50257, 50258]
    ours = ConversationEncoder(tokenizer).encode(Conversation(CONVERSATION, "test")).ids.tolist()
    assert exported.apply_chat_template(CONVERSATION, tokenize=True)["input_ids"] == ours
    prompt = CONVERSATION[:2]
    assert exported.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)["input_ids"] == \
        tokenizer.encode(tokenizer.chat_prompt(prompt))


def ends_turn_after_three_tokens(text_model, monkeypatch) -> None:
    """The untrained model's logits pushed towards <|im_end|> from its third new token on."""
    forward, calls = text_model.model.forward, []

    def ending(idx, *args, **kwargs):
        calls.append(idx.shape)
        logits, loss = forward(idx, *args, **kwargs)  # (1, T, V)
        if len(calls) >= 3:
            logits[..., 50258] += 1e4
        return logits, loss

    monkeypatch.setattr(text_model.model, "forward", ending)
