"""Supervised fine-tuning on conversations: rendered by the model's own template as transformers renders them,
the loss on the assistant's tokens only, conversations packed without attending across one another, bad
records named, held-out conversations judged, and a resumed run equal to an uninterrupted one."""
from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from smollm135_model import PRESETS
from smolm135.data.chat import (
    IGNORE_INDEX,
    SHAPES,
    Conversation,
    ConversationEncoder,
    Fitting,
    best_fit_rows,
    detect_shape,
    fit_to_window,
    load_chat_data,
    pack,
)
from smolm135.data.corpus import resolve_sources
from smolm135.errors import UserError
from smolm135.inference.chat_scoring import AnswersRight

from conftest import (
    CHAT_TEMPLATE,
    CHAT_VOCAB_SIZE,
    needs_datasets,
    random_rotary_model,
    save_tiny_chat_checkpoint,
    tiny_chat_backend,
    tiny_chat_tokenizer,
    tiny_train_config,
)
from hub_fakes import serve_hub_dataset

SYSTEM = {"role": "system", "content": "Answer briefly."}
TWO_TURNS = [{"role": "user", "content": "The cat sees the moon."},
             {"role": "assistant", "content": "A dog likes the river."},
             {"role": "user", "content": "Again?"},
             {"role": "assistant", "content": "The sailor finds a small boat!"}]
CHAT_MODEL = replace(PRESETS["tiny-rotary"], vocab_size=CHAT_VOCAB_SIZE)


@pytest.fixture(scope="module")
def chat_tokenizer():
    return tiny_chat_tokenizer()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def conversations(n: int, seed: int = 0) -> list[dict]:
    """Short made-up conversations of one to three turns, some with a system message."""
    rng = random.Random(seed)
    subjects, verbs, objects = ["The cat", "A dog", "The sailor"], ["sees", "likes", "finds"], ["the moon", "a boat"]
    records = []
    for index in range(n):
        messages = [SYSTEM] if index % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            messages += [{"role": "user", "content": f"Who {rng.choice(verbs)}?"},
                         {"role": "assistant", "content": f"{rng.choice(subjects)} {rng.choice(verbs)} "
                                                          f"{rng.choice(objects)}."}]
        records.append({"messages": messages})
    return records


# ------------------------------------------------------------------ the template, as transformers renders it


@pytest.mark.parametrize("messages", [TWO_TURNS, [SYSTEM] + TWO_TURNS], ids=["no system", "system"])
def test_a_conversation_tokenizes_as_transformers_apply_chat_template(chat_tokenizer, messages):
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tiny_chat_backend(), eos_token="<|im_end|>",
                                 bos_token="<|im_start|>")
    hf.chat_template = CHAT_TEMPLATE
    encoded = ConversationEncoder(chat_tokenizer).encode(Conversation(messages, "test"))
    assert encoded.ids.tolist() == hf.apply_chat_template(messages, tokenize=True)["input_ids"]


def test_the_loss_mask_holds_each_answer_and_its_end_of_turn_token_and_nothing_else(chat_tokenizer):
    encoded = ConversationEncoder(chat_tokenizer).encode(Conversation([SYSTEM] + TWO_TURNS, "test"))
    pieces = [chat_tokenizer.decode([token]) for token in encoded.ids.tolist()]
    text = "".join(pieces)
    expected = np.zeros(len(pieces), dtype=bool)
    position = 0
    for answer in ("A dog likes the river.<|im_end|>", "The sailor finds a small boat!<|im_end|>"):
        start = text.index(answer, position)
        ends = np.cumsum([len(piece) for piece in pieces])  # (L,) character end of each token
        expected |= (ends > start) & (ends <= start + len(answer))
        position = start + len(answer)
    assert encoded.assistant.tolist() == expected.tolist()  # token by token
    masked = "".join(piece for piece, kept in zip(pieces, encoded.assistant) if kept)
    assert masked == "A dog likes the river.<|im_end|>The sailor finds a small boat!<|im_end|>"
    # the answers' ends: just past each <|im_end|>, before the template's newline
    assert [pieces[end - 1] for end in encoded.answer_ends] == ["<|im_end|>", "<|im_end|>"]
    assert pieces[encoded.answer_ends[0]] == "\n" and not encoded.assistant[encoded.answer_ends[0]]


def test_targets_are_the_answers_tokens_or_every_token_with_loss_on_all(chat_tokenizer):
    encoded = ConversationEncoder(chat_tokenizer).encode(Conversation(TWO_TURNS, "test"))
    length = len(encoded.ids) - 1
    assistant_only = pack([encoded], length, "assistant", pad_id=0)
    everything = pack([encoded], length, "all", pad_id=0)
    targets = assistant_only.targets[0]
    assert (targets[encoded.assistant[1:]] == encoded.ids[1:][encoded.assistant[1:]]).all()
    assert (targets[~encoded.assistant[1:]] == IGNORE_INDEX).all()
    assert everything.targets[0].tolist() == encoded.ids[1:].tolist()
    assert assistant_only.inputs[0].tolist() == encoded.ids[:-1].tolist()


# ------------------------------------------------------------------ the shapes of records


def test_the_shape_of_records_is_told_by_their_columns(tmp_path):
    rows = {"messages": {"messages": TWO_TURNS},
            "prompt/completion": {"prompt": "The cat?", "completion": "Sees the moon."},
            "instruction/input/output (Alpaca)": {"instruction": "Say it.", "input": "cat", "output": "The cat."}}
    for name, row in rows.items():
        path = write_jsonl(tmp_path / f"{len(name)}.jsonl", [row])
        assert detect_shape([path]).name == name
        assert detect_shape([path], "text") is None
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "The cat sees the moon."}])
    assert detect_shape([text]) is None
    with pytest.raises(UserError, match="holds no conversations"):
        detect_shape([text], "chat")


def test_prompt_completion_and_alpaca_records_become_conversations(chat_tokenizer, tmp_path):
    records = [{"prompt": "Who sees the moon?", "completion": "The cat."}] * 3
    data = load_chat_data([write_jsonl(tmp_path / "pc.jsonl", records)], SHAPES[1], chat_tokenizer, 64, "assistant",
                          0.3, False)
    assert data.sample_messages == [{"role": "user", "content": "Who sees the moon?"}]
    alpaca = [{"instruction": "Name an animal.", "input": "small", "output": "The cat."}] * 3
    data = load_chat_data([write_jsonl(tmp_path / "a.jsonl", alpaca)], SHAPES[2], chat_tokenizer, 64, "assistant",
                          0.3, False)
    assert data.sample_messages == [{"role": "user", "content": "Name an animal.\n\nsmall"}]


# ------------------------------------------------------------------ bad records


@pytest.mark.parametrize("record, problem", [
    ({"messages": [{"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "Hi"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "Hi"}]}, "is empty"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "Hi"}]}, "content is int"),
    ({"messages": [{"role": "user", "content": "raise"}, {"role": "assistant", "content": "Hi"}]}, "refused"),
    ({"prompt": "Hi", "completion": None}, "lacks the field 'completion'"),
], ids=["role", "no assistant", "empty", "not text", "template", "missing field"])
def test_a_bad_record_is_one_line_naming_its_file_and_number_or_is_skipped_and_counted(tmp_path, record, problem):
    template = ("{% for m in messages %}{% if m['content'] == 'raise' %}{{ raise_exception('no such question') }}"
                "{% endif %}{% endfor %}" + CHAT_TEMPLATE)
    tokenizer = replace_template(tiny_chat_tokenizer(), template)
    good = {"prompt": "Who?", "completion": "The cat."} if "prompt" in record else {"messages": TWO_TURNS}
    path = write_jsonl(tmp_path / "data.jsonl", [good, good, record, good])
    shape = detect_shape([path])
    with pytest.raises(UserError) as error:
        load_chat_data([path], shape, tokenizer, 64, "assistant", 0.3, False)
    message = str(error.value)
    assert f"{path} record 3: " in message and problem in message and "--skip-bad-records" in message
    assert "\n" not in message
    data = load_chat_data([path], shape, tokenizer, 64, "assistant", 0.3, True)
    assert data.bad.count == 1 and data.train.conversations + data.val.conversations == 3


def replace_template(tokenizer, template: str):
    from smolm135.data.tokenizer import JsonTokenizer

    return JsonTokenizer(tokenizer.tokenizer_json, tokenizer.eos_token, tokenizer.bos_token, template)


# ------------------------------------------------------------------ conversations from Hugging Face datasets


def save_dataset(folder: Path, records: list) -> Path:
    from datasets import Dataset

    Dataset.from_list(records).save_to_disk(str(folder))
    return folder


def chat_data(files: list, tokenizer, skip_bad: bool = False):
    return load_chat_data(files, detect_shape(files, "chat"), tokenizer, 64, "assistant", 0.25, skip_bad)


def assert_same_windows(data, expected) -> None:
    for split in ("train", "val"):
        for array in ("inputs", "targets", "segments", "answer_bytes"):
            np.testing.assert_array_equal(getattr(getattr(data, split), array),
                                          getattr(getattr(expected, split), array), err_msg=f"{split} {array}")
    assert data.shape == expected.shape and data.sample_messages == expected.sample_messages


def messages_records() -> list[dict]:
    records = conversations(12)
    records[1]["messages"][0]["name"] = "Ann"  # in Arrow every message then has a name, None but here
    return records


def alpaca_records() -> list[dict]:
    records = [{"instruction": f"Name animal {i}.", "input": "small" if i % 2 else "", "output": "The cat."}
               for i in range(12)]
    del records[5]["input"]  # a key a JSON record lacks is a null in the dataset
    return records


@needs_datasets
@pytest.mark.parametrize("make_records", [messages_records, alpaca_records], ids=["messages", "alpaca"])
def test_a_saved_dataset_of_conversations_gives_the_windows_of_the_same_jsonl(chat_tokenizer, tmp_path, make_records):
    from smolm135.training.chat import conversation_shape

    records = make_records()
    expected = chat_data([write_jsonl(tmp_path / "chat.jsonl", records)], chat_tokenizer)
    folder = save_dataset(tmp_path / "chats", records)
    files = resolve_sources(str(folder))
    assert detect_shape(files) == expected.shape
    assert conversation_shape(tiny_train_config(folder, tmp_path / "out")) == expected.shape
    data = chat_data(files, chat_tokenizer)
    assert_same_windows(data, expected)
    assert data.summary(64) == [line.replace("chat.jsonl", "chats") for line in expected.summary(64)]
    other = chat_data(resolve_sources(str(save_dataset(tmp_path / "other", records[1:]))), chat_tokenizer)
    assert other.key != data.key


@needs_datasets
def test_messages_a_dataset_stores_field_by_field_read_as_a_list_of_messages(chat_tokenizer, tmp_path):
    from datasets import Dataset, Features, Sequence, Value

    records = conversations(12)
    expected = chat_data([write_jsonl(tmp_path / "chat.jsonl", records)], chat_tokenizer)
    by_field = [{"messages": {field: [message[field] for message in record["messages"]]  # one list per field
                              for field in ("role", "content")}} for record in records]
    features = Features({"messages": Sequence({"role": Value("string"), "content": Value("string")})})
    Dataset.from_list(by_field, features=features).save_to_disk(str(tmp_path / "chats"))
    assert_same_windows(chat_data(resolve_sources(str(tmp_path / "chats")), chat_tokenizer), expected)


@needs_datasets
def test_a_hub_dataset_of_conversations_gives_the_windows_of_the_same_jsonl_keyed_by_its_commit(chat_tokenizer,
                                                                                                 tmp_path, monkeypatch):
    from datasets import Dataset

    records = messages_records()
    expected = chat_data([write_jsonl(tmp_path / "chat.jsonl", records)], chat_tokenizer)
    serve_hub_dataset(monkeypatch, "me/chats", Dataset.from_list(records), sha="a" * 40)
    data = chat_data(resolve_sources("hf:me/chats"), chat_tokenizer)
    assert_same_windows(data, expected)
    assert data.name == "hf:me/chats:train"
    serve_hub_dataset(monkeypatch, "me/chats", Dataset.from_list(records), sha="b" * 40)
    assert chat_data(resolve_sources("hf:me/chats"), chat_tokenizer).key != data.key  # a new commit: new data


@needs_datasets
def test_a_bad_record_in_a_saved_dataset_is_one_line_naming_the_dataset_and_record_number(chat_tokenizer, tmp_path):
    records = conversations(5)
    records[2] = {"messages": [{"role": "user", "content": "Who sees the moon?"}]}
    folder = save_dataset(tmp_path / "chats", records)
    files = resolve_sources(str(folder))
    with pytest.raises(UserError) as error:
        chat_data(files, chat_tokenizer)
    message = str(error.value)
    assert f"{folder} record 3: it has no assistant turn" in message and "--skip-bad-records" in message
    assert "\n" not in message
    assert chat_data(files, chat_tokenizer, skip_bad=True).bad.count == 1


# ------------------------------------------------------------------ windows


def test_a_long_conversation_is_cut_after_its_last_answer_that_fits(chat_tokenizer):
    encoded = ConversationEncoder(chat_tokenizer).encode(Conversation(TWO_TURNS, "test"))
    fitting = Fitting()
    first_end, second_end = encoded.answer_ends
    cut = fit_to_window(encoded, second_end - 2, fitting)  # room for the first answer only
    assert len(cut.ids) == first_end and cut.answer_ends == [first_end] and fitting.cut == 1
    assert fit_to_window(encoded, first_end - 2, fitting) is None and fitting.dropped == 1
    assert fit_to_window(encoded, second_end + 5, fitting) is encoded


def test_best_fit_packs_tightly_and_keeps_every_item_once():
    lengths = [5, 3, 7, 2, 8, 1, 4]
    rows = best_fit_rows(lengths, 10)
    assert sorted(item for row in rows for item in row) == list(range(len(lengths)))
    assert all(sum(lengths[item] for item in row) <= 10 for row in rows)
    assert len(rows) == 3  # 30 tokens in rows of 10: no waste


def test_a_packed_conversation_computes_as_it_does_alone(chat_tokenizer):
    encoder = ConversationEncoder(chat_tokenizer)
    encoded = [encoder.encode(Conversation(messages, "test")) for messages in
               (TWO_TURNS, [SYSTEM] + TWO_TURNS[:2], [TWO_TURNS[0], TWO_TURNS[3]])]
    seq_len = sum(len(c.ids) - 1 for c in encoded) + 7  # all three in one row, and some padding
    windows = pack(encoded, seq_len, "assistant", pad_id=0)
    assert len(windows) == 1
    for position_embedding in ("rotary", "learned"):
        config = replace(CHAT_MODEL, position_embedding=position_embedding, block_size=seq_len)
        model = random_rotary_model(config=config)
        with torch.no_grad():
            packed, _ = model(torch.from_numpy(windows.inputs), document_ids=torch.from_numpy(windows.segments))
            for segment in range(3):
                where = np.flatnonzero(windows.segments[0] == segment)
                alone, _ = model(torch.from_numpy(windows.inputs[:, where]))
                torch.testing.assert_close(packed[:, where], alone, rtol=1e-5, atol=1e-5)


def test_without_document_ids_the_forward_is_unchanged():
    model = random_rotary_model()
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        plain, _ = model(idx)
        one_document, _ = model(idx, document_ids=torch.zeros(2, 16, dtype=torch.long))
    torch.testing.assert_close(plain, one_document, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ training on conversations


def chat_run_config(tmp_path: Path, **overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "chat.jsonl", conversations(40))
    start = save_tiny_chat_checkpoint(tmp_path / "start.pt")
    values = dict(preset="tiny-rotary", model=CHAT_MODEL, init_from=str(start), max_steps=4, seq_len=96,
                  batch_size=4, eval_every=2, eval_batches=2, sample_every=2, checkpoint_every=2, sample_tokens=8)
    return tiny_train_config(data, tmp_path / "out", **{**values, **overrides})


@pytest.mark.slow
def test_a_chat_run_is_judged_on_held_out_answers_and_resumes_bitwise_equal(tmp_path):
    from smolm135.training.trainer import train

    whole, summary = train(chat_run_config(tmp_path / "whole"))
    log = Path(summary["log_path"]).read_text()
    assert "conversations (messages)" in log and "of the computed training tokens carry loss" in log
    assert "step 0: validation loss" in log and "bits per assistant byte" in log
    assert log.count("user: Who ") == 3  # the held-out question answered at steps 0, 2 and 4
    assert log.count("answers word for word") == 3
    assert summary["final_val_loss"] < summary["initial_val_loss"]
    assert 0 <= summary["initial_answers_right"] <= 1 and 0 <= summary["final_answers_right"] <= 1

    parts = chat_run_config(tmp_path / "parts", max_steps=2)
    train(parts)
    resumed, summary = train(replace(parts, max_steps=4))
    assert summary["start_step"] == 2
    assert "initial_answers_right" not in summary and "final_answers_right" in summary  # no step 0 in this run
    for name, tensor in whole.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_a_model_without_a_chat_template_refuses_conversations(tmp_path):
    from smolm135.training.trainer import train

    data = write_jsonl(tmp_path / "chat.jsonl", conversations(10))
    with pytest.raises(UserError, match="no chat template") as error:
        train(tiny_train_config(data, tmp_path / "out"))
    assert "\n" not in str(error.value) and "pass --chat-template chatml to give it one" in str(error.value)
    assert not (tmp_path / "out" / "checkpoints").exists() or not any((tmp_path / "out" / "checkpoints").iterdir())


# ------------------------------------------------------------------ evaluate.py on conversations


def test_evaluate_scores_conversations_on_their_answers(chat_tokenizer, tmp_path):
    from smolm135.inference import evaluate as evaluate

    records = conversations(6)
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    checkpoint = save_tiny_chat_checkpoint(tmp_path / "chat.pt")
    lines = []
    [result] = evaluate.evaluate([str(checkpoint)], str(data), device="cpu", dtype="float32", show_progress=False,
                                 say=lines.append)
    answers = [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]
    assert result.score.text_bytes == sum(len(answer.encode()) for answer in answers)
    assert result.score.tokens == sum(int(ConversationEncoder(chat_tokenizer).encode(
        Conversation(r["messages"], "")).assistant.sum()) for r in records)
    assert "bits per assistant byte" in lines[0] and "answers word for word" in lines[0]
    assert result.answers.answers == len(answers)
    with pytest.raises(UserError, match="has no column 'text'"):
        evaluate.evaluate([str(checkpoint)], str(data), device="cpu", dtype="float32", show_progress=False,
                          data_format="text")


def test_an_answer_is_right_when_every_token_and_its_end_of_turn_is_the_most_likely_one():
    from smolm135.inference.chat_scoring import answers_right

    i = IGNORE_INDEX
    targets = torch.tensor([[i, 5, 6, i, i, 7, i],
                            [i, i, 8, 9, i, i, i]])  # (B, T): answers [5, 6], [7], [8, 9]
    predicted = torch.tensor([[0, 5, 6, 0, 0, 1, 0],
                              [0, 0, 8, 9, 0, 0, 0]])  # the second answer's only token missed
    assert answers_right(predicted, targets) == AnswersRight(2, 3)
    one_token_off = predicted.clone()
    one_token_off[0, 2] = 4
    assert answers_right(one_token_off, targets) == AnswersRight(1, 3)
    # packed conversations: two answers that touch, in two conversations, are two answers
    segments = torch.tensor([[0] * 7, [0, 0, 0, 1, 1, 1, 1]])
    assert answers_right(predicted, targets, segments) == AnswersRight(3, 4)


def test_evaluate_counts_the_answers_a_model_would_give_word_for_word(chat_tokenizer, tmp_path):
    """A model that knows the right answers (its logits peak on each true next token) gives them all; one
    that misses a single token of one answer loses that answer alone."""
    from smolm135.inference.chat_scoring import score_conversations

    records = conversations(6)
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    answers = sum(m["role"] == "assistant" for r in records for m in r["messages"])

    def knowing(wrong_at: int | None):
        calls = []

        def logits(ids):  # (1, L) -> (1, L, V): peaks on the next token of the rendered conversation
            calls.append(None)
            target = torch.cat([ids[0, 1:], ids[0, :1]])  # the last position's target is not scored
            out = torch.zeros(1, ids.shape[1], chat_tokenizer.n_vocab)
            out[0, torch.arange(ids.shape[1]), target] = 1.0
            if wrong_at is not None and len(calls) == 1:
                out[0, wrong_at] = 0.0
                out[0, wrong_at, (target[wrong_at] + 1) % chat_tokenizer.n_vocab] = 1.0
            return out
        return logits

    shape = detect_shape([data])
    _, right, _ = score_conversations(knowing(None), chat_tokenizer, [data], shape, 512, torch.device("cpu"),
                                      show_progress=False)
    assert right == AnswersRight(answers, answers)
    first = ConversationEncoder(chat_tokenizer).encode(Conversation(records[0]["messages"], ""))
    last_answer_token = int(np.flatnonzero(first.assistant)[-1]) - 1  # the position that predicts it
    _, right, _ = score_conversations(knowing(last_answer_token), chat_tokenizer, [data], shape, 512,
                                      torch.device("cpu"), show_progress=False)
    assert right == AnswersRight(answers - 1, answers)


@needs_datasets
def test_evaluate_scores_a_saved_chat_dataset_as_the_same_jsonl(tmp_path):
    from smolm135.inference import evaluate as evaluate

    records = conversations(6)
    checkpoint = save_tiny_chat_checkpoint(tmp_path / "chat.pt")
    scores = []
    for data in (write_jsonl(tmp_path / "chat.jsonl", records), save_dataset(tmp_path / "chats", records)):
        lines = []
        [result] = evaluate.evaluate([str(checkpoint)], str(data), device="cpu", dtype="float32", show_progress=False,
                                     say=lines.append)
        assert "bits per assistant byte" in lines[0]
        scores.append(result.score)
    assert scores[1] == scores[0]


def test_chatterbot_corpus_becomes_a_messages_file_the_trainer_reads(tmp_path):
    pytest.importorskip("chatterbot_corpus")
    from smolm135.data.chat_corpus import write_chatterbot_jsonl

    path = write_chatterbot_jsonl(tmp_path / "chatterbot.jsonl")
    assert detect_shape([path]).name == "messages"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(records) > 1000
    for record in records:  # user first, turns alternate, an answer last, every content a string
        roles = [message["role"] for message in record["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert all(isinstance(message["content"], str) and message["content"] for message in record["messages"])


def test_format_and_loss_on_flags_name_their_choices():
    from smolm135.training.config import TrainConfig, validate

    with pytest.raises(UserError) as error:
        validate(TrainConfig(preset="tiny", format="xml", loss_on="user"))
    assert "--format must be one of auto, text, chat (got xml)" in str(error.value)
    assert "--loss-on must be one of assistant, all (got user)" in str(error.value)


def test_evaluation_scores_every_held_out_row_or_rows_spread_over_them_all():
    from types import SimpleNamespace

    from smolm135.training.chat import evaluation_rows

    chat = SimpleNamespace(val=[None] * 10)  # rows are packed longest first: the first ones alone would mislead
    assert evaluation_rows(chat, 16).tolist() == list(range(10))
    assert evaluation_rows(chat, 4).tolist() == [0, 2, 5, 7]
