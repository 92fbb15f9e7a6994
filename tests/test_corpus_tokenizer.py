"""A byte-level BPE learned from the corpus (--tokenizer corpus, or auto for a model whose vocabulary is smaller
than GPT-2's): learned from the training text only, cached, recorded in checkpoints, used by every script."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from smolm135.inference.evaluate import main as evaluate_main
from smolm135.training.trainer import train
from smollm135_model import PRESETS
from smolm135.data import corpus as data
from smolm135.checkpoint import load_checkpoint
from smolm135.data.corpus import corpus_tokenizer
from smolm135.data.tokenizer import END_OF_TEXT, GPT2TextTokenizer

from conftest import REPO_ROOT, make_corpus_text, tiny_train_config

SMALL_VOCAB = replace(PRESETS["tiny"], vocab_size=512)


def test_it_learns_from_the_text_before_the_validation_split(tmp_path):
    # a word that fills the corpus's last 10% only: seen by the tokenizer, it would be one token
    path = tmp_path / "corpus.txt"
    path.write_text(make_corpus_text(2000) + " zyxwvut" * 600, encoding="utf-8")  # 6% of the text
    tokenizer = corpus_tokenizer(str(path), tmp_path / "cache", 400, val_fraction=0.1)
    assert tokenizer.n_vocab <= 400
    assert len(tokenizer.encode(" zyxwvut")) > 2
    assert len(tokenizer.encode(" remembers")) == 1  # the grammar's words are
    assert tokenizer.document_separator_id == tokenizer.token_id(END_OF_TEXT) == 0
    assert "learned from corpus.txt" in tokenizer.description


@pytest.mark.parametrize("text", ["Ünïcödé ✓ 日本語", "emoji 🤖🎉", "def f(x):\n\treturn x ** 2\n", "  spaces \r\n\n"])
def test_any_text_round_trips_and_counts_its_bytes(corpus_file, tmp_path, text):
    tokenizer = corpus_tokenizer(str(corpus_file), tmp_path, 300, val_fraction=0.1)
    ids = tokenizer.encode(text)  # characters the corpus never had are bytes
    assert tokenizer.decode(ids) == text
    assert tokenizer.text_bytes(ids) == len(text.encode("utf-8"))


def test_it_is_cached_by_content_and_a_damaged_cache_is_learned_again(corpus_file, tmp_path, monkeypatch):
    first = corpus_tokenizer(str(corpus_file), tmp_path, 300, val_fraction=0.1)
    (cached,) = tmp_path.glob("tokenizer_*.json")
    monkeypatch.setattr(data, "train_byte_level_bpe", lambda *a, **k: pytest.fail("learned again"))
    assert corpus_tokenizer(str(corpus_file), tmp_path, 300, val_fraction=0.1).fingerprint == first.fingerprint
    monkeypatch.undo()
    cached.write_text('{"tokenizer_json": "not a tokenizer"', encoding="utf-8")
    assert corpus_tokenizer(str(corpus_file), tmp_path, 300, val_fraction=0.1).fingerprint == first.fingerprint
    assert corpus_tokenizer(str(corpus_file), tmp_path, 320, val_fraction=0.1).n_vocab == 320  # another size
    assert len(list(tmp_path.glob("tokenizer_*.json"))) == 2 and not list(tmp_path.glob("*.tmp*"))


@pytest.fixture(scope="module")
def small_vocab_run(corpus_file, module_tmp):
    """The tiny preset with a 512-token vocabulary: --tokenizer auto learns a BPE of that size."""
    out_dir = module_tmp.mktemp("small-vocab")
    _, summary = train(tiny_train_config(corpus_file, out_dir, preset="tiny-512", model=SMALL_VOCAB,
                                             max_steps=20))
    return out_dir, summary


@pytest.mark.slow
def test_a_small_vocabulary_trains_on_a_learned_bpe_that_the_checkpoint_records(small_vocab_run):
    out_dir, summary = small_vocab_run
    assert summary["final_val_loss"] < summary["initial_val_loss"] - 0.5
    tokenizer = load_checkpoint(summary["final_model_path"]).build_tokenizer()  # weights_only, no other file
    assert not isinstance(tokenizer, GPT2TextTokenizer) and 257 < tokenizer.n_vocab <= 512  # the grammar has few words
    assert f"a byte-level BPE learned from corpus.txt ({tokenizer.n_vocab} tokens)" in summary_log(summary)
    assert len(list((out_dir / "cache").glob("tokenizer_*.json"))) == 1
    assert tokenizer.fingerprint == corpus_tokenizer(summary_data(summary), out_dir / "cache", 512, 0.1).fingerprint


def summary_log(summary) -> str:
    from pathlib import Path

    return Path(summary["log_path"]).read_text(encoding="utf-8")


def summary_data(summary) -> str:
    return load_checkpoint(summary["final_model_path"]).train_config["data"]


@pytest.mark.slow
def test_the_recorded_tokenizer_serves_evaluate_and_continue(small_vocab_run, tmp_path):
    _, summary = small_vocab_run
    held_out = tmp_path / "held_out.txt"
    held_out.write_text(make_corpus_text(40, seed=3), encoding="utf-8")
    (result,) = evaluate_main([summary["final_model_path"], "--data", str(held_out), "--context", "32",
                               "--stride", "32", "--device", "cpu", "--dtype", "float32", "--no-progress"])
    assert "its own" in result.tokenizer and 0 < result.score.bits_per_byte < 4
    continued = subprocess.run([sys.executable, str(REPO_ROOT / "continue_training.py"), "--checkpoint",
                                summary["final_model_path"], "--data", summary_data(summary), "--steps", "2",
                                "--device", "cpu", "--no-progress", "--out-dir", str(tmp_path)],
                               capture_output=True, text=True, timeout=300)
    assert continued.returncode == 0, continued.stderr[-2000:]
    assert "a byte-level BPE learned from corpus.txt" in continued.stdout


@pytest.mark.slow
def test_the_learned_tokenizer_goes_into_the_export_and_its_card(small_vocab_run, tmp_path):
    from smolm135.interop.convert import convert

    _, summary = small_vocab_run
    folder = convert(summary["final_model_path"], tmp_path / "hf", say=lambda _: None)  # verified in a fresh process
    assert (folder / "tokenizer.json").is_file()
    card = (folder / "README.md").read_text()  # text from a file is escaped in markdown
    assert "The tokenizer is a byte\\-level BPE learned from corpus\\.txt (" in card
