import shutil

import pytest

from smolm135.data import tokenizer
from smolm135.data.tokenizer import END_OF_TEXT_ID, get_tokenizer


def test_gpt2_ids_for_the_reference_sentence():
    assert get_tokenizer().encode("Hello world, this is a test.") == [15496, 995, 11, 428, 318, 257, 1332, 13]


def test_vocabulary_and_end_of_text():
    encoder = get_tokenizer()
    assert encoder.n_vocab == 50257
    assert encoder.encode("<|endoftext|>", allowed_special="all") == [END_OF_TEXT_ID]


@pytest.mark.parametrize("text", ["Ünïcödé ✓ 日本語", "emoji 🤖🎉", "def f(x):\n\treturn x ** 2\n", "  spaces   \n\n\n"])
def test_round_trip_on_varied_text(text):
    encoder = get_tokenizer()
    assert encoder.decode(encoder.encode_ordinary(text)) == text


def test_a_tampered_bpe_file_is_refused(tmp_path, monkeypatch):
    encoder_json, vocab_bpe = tokenizer.gpt2_bpe_files()
    shutil.copy(encoder_json, tmp_path / "encoder.json")
    (tmp_path / "vocab.bpe").write_text(vocab_bpe.read_text(encoding="utf-8") + "x y\n", encoding="utf-8")
    monkeypatch.setattr(tokenizer, "gpt2_bpe_files", lambda: (tmp_path / "encoder.json", tmp_path / "vocab.bpe"))
    tokenizer.get_tokenizer.cache_clear()
    try:
        with pytest.raises(ValueError, match="[Hh]ash"):
            tokenizer.get_tokenizer()
    finally:
        tokenizer.get_tokenizer.cache_clear()
