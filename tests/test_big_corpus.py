"""Tokenizing corpora larger than memory: bounded pieces, a lazy pipeline, the same tokens as whole-text
encoding. (bench/big_corpus.py measures the throughput and the memory on hundreds of MB.)"""
from concurrent.futures import ThreadPoolExecutor

from smolm135.data import corpus as data
from smolm135.data.corpus import _map_in_order, _split_for_encoding, load_corpus
from smolm135.data.tokenizer import END_OF_TEXT, END_OF_TEXT_ID, get_tokenizer

from conftest import make_corpus_text


def test_text_without_whitespace_is_still_cut_into_bounded_pieces():
    text = "word " * 300 + "x" * 5000 + " tail"
    pieces, tail = _split_for_encoding(text, 700)
    assert "".join(pieces) + tail == text
    assert all(len(piece) <= 700 for piece in pieces) and len(tail) <= 700


def test_the_pipeline_reads_ahead_only_a_bounded_number_of_pieces():
    consumed = []

    def pieces():
        for index in range(100):
            consumed.append(index)
            yield index

    with ThreadPoolExecutor(2) as pool:
        for produced, value in enumerate(_map_in_order(pool, lambda x: x * 2, pieces(), max_pending=4)):
            assert value == produced * 2
            assert len(consumed) <= produced + 4  # never the whole corpus in memory at once
    assert len(consumed) == 100


def test_many_threads_and_tiny_pieces_give_the_tokens_of_the_whole_text(tmp_path, monkeypatch):
    text = make_corpus_text(400) + "x" * 3000 + " " + make_corpus_text(100, seed=2)
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    monkeypatch.setattr(data, "READ_CHUNK_BYTES", 1000)
    monkeypatch.setattr(data, "ENCODE_PIECE_CHARS", 300)
    corpus = load_corpus(str(tmp_path / "c.txt"), tmp_path / "cache", show_progress=False, num_threads=4)
    encoder = get_tokenizer()
    assert encoder.decode(list(corpus.tokens)) == text
    # only the seams cut inside the 3,000 x's may differ from encoding the whole text at once
    assert list(corpus.tokens[:1000]) == encoder.encode_ordinary(text)[:1000]


def test_end_of_text_written_in_the_corpus_is_plain_text_not_the_document_separator(tmp_path):
    text = f"one document {END_OF_TEXT} still the same document\n"
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    corpus = load_corpus(str(tmp_path / "c.txt"), tmp_path / "cache", show_progress=False)
    assert list(corpus.tokens) == get_tokenizer().encode_ordinary(text)
    assert END_OF_TEXT_ID not in corpus.tokens
