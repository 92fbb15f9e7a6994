"""Text in, token batches out.

- `resolve_sources` turns `--data` (a file, a folder, a glob, or a Hugging Face dataset) into a list of
  sources: .txt files (each one document) and corpora of documents read by `sources.py` (.jsonl,
  .jsonl.gz, .parquet, datasets); the default `input.txt` (and the chat recipe's `plays_quiz.jsonl`) is
  written from Shakespeare's plays (shakespeare.py) when absent.
- `load_corpus` tokenizes once, streaming the text in chunks through the tokenizer on every core (threads:
  tiktoken and `tokenizers` release the GIL), into a memory-mapped file keyed by the corpus content and the
  tokenizer, holding ids in the smallest unsigned type for the vocabulary (uint16 for GPT-2 and SmolLM): a
  second run starts in seconds, a changed corpus or tokenizer is re-tokenized, and corpora far larger than
  memory never have to fit in it (bench/big_corpus.py measures both).
- `get_batch` is a pure function of (seed, step): the data position is the step, so resuming a run (or
  changing the number of processes) replays exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import codecs
import collections
import glob
import hashlib
import json
import mmap
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from smolm135.data import sources
from smolm135.runtime.disk import (
    make_room,
    remove_interrupted_writes,
    temporary_path,
    write_failure,
    write_text_atomically,
)
from smolm135.errors import UserError
from smolm135.data.shakespeare import write_default_corpus, write_play_quiz
from smolm135.data.sources import DEFAULT_TEXT_FIELD, Source
from smolm135.data.tokenizer import (
    END_OF_TEXT,
    GPT2TextTokenizer,
    JsonTokenizer,
    token_dtype,
    tokenizer_from_record,
    train_byte_level_bpe,
)

DEFAULT_DATA = "input.txt"
DEFAULT_CHAT_DATA = "plays_quiz.jsonl"
# What --data names that is written when absent: the default text, and the quiz the chat recipe trains on
BUILT_IN_DATA = {DEFAULT_DATA: write_default_corpus, DEFAULT_CHAT_DATA: write_play_quiz}
EMPTY_DATA = "--data is empty: pass a text, .jsonl or .parquet file, a folder or glob of them, or hf:NAME"
CACHE_FORMAT_VERSION = 1  # bump when the token file layout or document separation changes
READ_CHUNK_BYTES = 4 << 20  # text read at a time: with the pieces in flight, all that is in memory
ENCODE_PIECE_CHARS = 1 << 20  # text per tokenizer task (a thread encodes about 10 MB/s)
TOKEN_DTYPE = np.uint16  # GPT-2 ids < 65,536; other tokenizers get `token_dtype(their vocabulary)`


# ------------------------------------------------------------------ sources


def resolve_sources(data: str) -> list[Source]:
    """`--data` as a sorted list of sources: one file, every corpus file under a folder (.txt, .jsonl,
    .jsonl.gz, .parquet), a glob, or one Hugging Face dataset (hf:NAME[:CONFIG][:SPLIT], save_to_disk folder);
    each local file readable."""
    files = _find_sources(data)
    check_readable(files)
    return files


def _find_sources(data: str) -> list[Source]:
    if not data.strip():  # Path("") is the current folder: its files are not what anyone meant
        raise UserError(EMPTY_DATA)
    dataset = sources.dataset_source(data)
    if dataset is not None:
        return [dataset]
    path = Path(data)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and sources.corpus_suffix(p))
        if not files:
            raise UserError(f"folder {data} holds no .txt, .jsonl, .jsonl.gz or .parquet files: put some in it "
                            f"or point --data at a file")
        return files
    if glob.has_magic(data):
        files = sorted(Path(p) for p in glob.glob(data, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"no files match {data!r}: check the pattern (quote it so the shell does not expand it)")
        return files
    if data in BUILT_IN_DATA:
        return [BUILT_IN_DATA[data](path)]
    raise UserError(f"data file {data} does not exist: pass --data with a text, .jsonl or .parquet file, a folder "
                    f"or glob of them, or hf:NAME for a Hugging Face dataset")


# ------------------------------------------------------------------ checks before anything is written

# What the trainer reads of each text file to tell text from other bytes: enough to see a binary file's
# nature (a header, NULs, compressed data) and little enough to cost nothing next to tokenizing.
TEXT_SNIFF_BYTES = 1 << 20
# UTF-8 text has no NUL bytes, and a few undecodable bytes are typos of an old encoding (they become U+FFFD
# with a warning); more than this share of them is not text in UTF-8 (random bytes: about 45%).
MOST_UNDECODABLE = 0.01


def read_head(path: Path, size: int) -> bytes:
    """The first `size` bytes of a --data file; a file that cannot be read is a UserError, not a traceback."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError as error:
        raise UserError(f"cannot read the data file {path}: {error.strerror or error}; check its permissions "
                        f"(or pass another --data)") from None


def check_not_empty(data: str, files: list[Source]) -> None:
    if all(sources.source_size(p) == 0 for p in files):
        raise UserError(f"data {data} is empty: put some text in it")


def check_readable(files: list[Source]) -> None:
    """Every local file of the sources opens for reading."""
    for source in files:
        if not isinstance(source, sources.HubDataset):
            for path in sources.content_files(source):
                read_head(path, 0)


def not_text_reason(head: bytes) -> str | None:
    """Why `head` (the start of a file) is not UTF-8 text, or None when it is."""
    if b"\0" in head:
        return "it holds NUL bytes"
    counter = _ReplacementCounter()
    counter.decoder()(head)  # not final: a character cut at the end of `head` is not counted
    if counter.count > MOST_UNDECODABLE * len(head):
        return f"{counter.count / len(head):.0%} of its first {len(head):,} bytes are not valid UTF-8"
    return None


def check_looks_like_text(files: list[Source], allow_binary: bool) -> None:
    """Refuse text files whose beginning is not UTF-8 text (an image, an archive, UTF-16, random bytes): they
    would train on U+FFFD and byte soup. `allow_binary` trains on them anyway."""
    if allow_binary:
        return
    for path in filter(sources.is_text_file, files):
        reason = not_text_reason(read_head(path, TEXT_SNIFF_BYTES))
        if reason:
            raise UserError(f"the data file {path} does not look like text ({reason}): re-save it as UTF-8 text, "
                            f"or pass --allow-binary to train on it with its undecodable bytes replaced by U+FFFD")


def most_tokens(files: list[Source]) -> int | None:
    """An upper bound on the tokens of text files (a byte-level token spans at least one byte, plus one
    separator per document), known before tokenizing; None when some source is not plain text (compressed
    or streamed)."""
    if not all(map(sources.is_text_file, files)):
        return None
    return sum(sources.source_size(path) for path in files) + len(files)


# ------------------------------------------------------------------ tokenization

# A split point that no GPT-2 pre-token crosses: after a non-space character that is followed by exactly
# one whitespace character and then a non-space one ("word| word", "word|\nWord"). Chunks split there
# tokenize exactly as the whole text does (tested), so streaming changes no token.
_SAFE_SPLIT = re.compile(r"\S(?=\s\S)")


def _safe_split_point(text: str, start: int, limit: int) -> int:
    """Largest index in (start, limit] where `text` can be cut without changing its tokenization; `start`
    if there is none. Looks back one 64 KB window at a time: ordinary text has a split point in the first."""
    window_end = limit
    while window_end > start:
        window_start = max(start, window_end - 65536)
        last = start
        for match in _SAFE_SPLIT.finditer(text, window_start, window_end):
            last = match.end()
        if last > start:
            return last
        window_end = window_start
    return start


def _split_for_encoding(text: str, piece_chars: int) -> tuple[list[str], str]:
    """Cut text into pieces of about piece_chars at safe points; returns (pieces, tail for the next read)."""
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        cut = _safe_split_point(text, start, start + piece_chars)
        if cut == start:  # a whole piece without whitespace: cut anyway so memory stays bounded (only
            cut = start + piece_chars  # the tokens at this one seam can differ from whole-text encoding)
        pieces.append(text[start:cut])
        start = cut
    return pieces, text[start:]


class _ReplacementCounter:
    """Decodes UTF-8 as errors="replace" does (U+FFFD for each undecodable sequence) and counts the bytes
    replaced, without registering a codecs error handler for the whole process: the `surrogateescape`
    decoder turns each undecodable byte into a lone surrogate, which valid UTF-8 never yields, and each run
    of them is decoded again with "replace" (a run holds whole errors, so the result is the same)."""

    ESCAPED = re.compile("[\udc80-\udcff]+")

    def __init__(self):
        self.count = 0

    def decoder(self) -> Callable[..., str]:
        """A fresh incremental decoder (one per file), called as decode(block, final=False)."""
        escaping = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        return lambda block, final=False: self.ESCAPED.sub(self._replace, escaping.decode(block, final))

    def _replace(self, run: re.Match) -> str:
        undecodable = run.group().encode("utf-8", errors="surrogateescape")  # the original bytes
        self.count += len(undecodable)
        return undecodable.decode("utf-8", errors="replace")


def _hash_sources(files: list[Source], text_field: str = DEFAULT_TEXT_FIELD, tokenizer_fingerprint: str = "gpt2") -> str:
    digest = hashlib.sha256(f"smolm135-tokens-v{CACHE_FORMAT_VERSION}-{tokenizer_fingerprint}".encode())
    for source in files:
        sources.hash_content(digest, source)
    if not all(map(sources.is_text_file, files)):  # the column read is part of the content
        digest.update(b"\0text_field\0" + text_field.encode())
    return digest.hexdigest()


def _text_pieces(files: list[Source], counter: _ReplacementCounter, bar: tqdm,
                 text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[str | None]:
    """The corpus as pieces of about ENCODE_PIECE_CHARS characters, read READ_CHUNK_BYTES at a time;
    None marks the end of one document (a text file, or a record of a table) and the start of the next."""
    for file_index, path in enumerate(files):
        if file_index:
            yield None
        if not sources.is_text_file(path):
            yield from _document_pieces(sources.documents(path, text_field, bar.update,
                                                             lambda line: counter.decoder()(line, final=True)))
            continue
        decode = counter.decoder()
        pending = ""
        with open(path, "rb") as f:
            while block := f.read(READ_CHUNK_BYTES):
                bar.update(len(block))
                pieces, pending = _split_for_encoding(pending + decode(block), ENCODE_PIECE_CHARS)
                yield from pieces
        pending += decode(b"", final=True)
        if pending:
            yield pending


def _document_pieces(documents: Iterator[str]) -> Iterator[str | None]:
    """Documents as pieces of at most about ENCODE_PIECE_CHARS, None between documents."""
    for index, document in enumerate(documents):
        if index:
            yield None
        if len(document) <= ENCODE_PIECE_CHARS:  # most documents: no need to look for split points
            yield document
            continue
        pieces, tail = _split_for_encoding(document, ENCODE_PIECE_CHARS)
        yield from pieces
        if tail:
            yield tail


def _batched(pieces: Iterator[str | None], batch_chars: int) -> Iterator[list[str | None]]:
    """Consecutive pieces grouped up to about batch_chars, so that a corpus of many short documents costs
    one tokenizer task per batch and not one per document."""
    batch, size = [], 0
    for piece in pieces:
        batch.append(piece)
        size += len(piece) if piece else 1
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _map_in_order(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, max_pending: int) -> Iterator:
    """pool.map that reads `items` lazily, keeping at most max_pending in flight: Executor.map would read
    the whole corpus into memory up front."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= max_pending:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _encode_files(files: list[Source], out_path: Path, num_threads: int, show_progress: bool,
                  text_field: str = DEFAULT_TEXT_FIELD, tokenizer=None) -> dict:
    """Stream every file through the tokenizer into a raw file of `token_dtype(tokenizer.n_vocab)` ids;
    documents are separated by the tokenizer's end-of-text token. Returns what the metadata needs. Reading
    and writing overlap with encoding on num_threads threads; memory holds one read chunk and
    2 x num_threads pieces, whatever the corpus size."""
    tokenizer = tokenizer or GPT2TextTokenizer()
    dtype = token_dtype(tokenizer.n_vocab)
    separator = np.array([tokenizer.document_separator_id] if tokenizer.document_separator_id is not None else [],
                         dtype=dtype)

    def encode(piece: str | None) -> np.ndarray:
        if piece is None:
            return separator
        # ids straight into numpy, no Python int per token; special-token spellings in the text stay text
        return tokenizer.encode_to_numpy(piece).astype(dtype)  # (n,)

    def encode_batch(batch: list[str | None]) -> np.ndarray:
        if isinstance(tokenizer, GPT2TextTokenizer) and len(batch) > 1 and not any(
                piece and END_OF_TEXT in piece for piece in batch):
            # many short documents: one tokenizer call with end-of-text allowed as the special token
            # between them, which tokenizes exactly as piece by piece (tested) at less cost per document
            joined = "".join(END_OF_TEXT if piece is None else piece for piece in batch)
            return tokenizer.encoding.encode_to_numpy(joined, allowed_special={END_OF_TEXT}).astype(dtype)  # (n,)
        return np.concatenate([encode(piece) for piece in batch])  # (n,)

    sizes = [sources.source_size(source) for source in files]
    total_bytes = None if None in sizes else sum(sizes)
    counter = _ReplacementCounter()
    n_tokens, max_id = 0, 0
    with open(out_path, "wb") as out, ThreadPoolExecutor(num_threads) as pool, \
            tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not show_progress,
                 leave=False) as bar:
        batches = _batched(_text_pieces(files, counter, bar, text_field), ENCODE_PIECE_CHARS)
        for ids in _map_in_order(pool, encode_batch, batches, 2 * num_threads):
            if len(ids):
                out.write(ids.tobytes())
                n_tokens += len(ids)
                max_id = max(max_id, int(ids.max()))
    return {"n_tokens": n_tokens, "max_token_id": max_id, "replaced_bytes": counter.count, "dtype": dtype.name}


def available_cpus() -> int:
    """CPUs this process may run on (a container or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Corpus:
    tokens: np.ndarray  # (N,) uint16, memory-mapped
    sources: list[Source]
    key: str
    max_token_id: int
    replaced_bytes: int
    from_cache: bool
    tokenizer: object = None  # what made the ids (GPT2TextTokenizer or JsonTokenizer)

    @property
    def name(self) -> str:
        return self.sources[0].name if len(self.sources) == 1 else f"{len(self.sources)} files"


def load_corpus(data: str, cache_dir: str | os.PathLike, show_progress: bool = True,
                num_threads: int | None = None, quiet: bool = False, text_field: str = DEFAULT_TEXT_FIELD,
                tokenizer=None) -> Corpus:
    """Tokenize `data` once with `tokenizer` (default: GPT-2) and return its tokens memory-mapped from
    `cache_dir` (reused while the content and tokenizer are unchanged). `text_field` is the column holding
    the text in .jsonl/.parquet/datasets. `quiet` keeps warnings off the console (the other processes of a
    torchrun run)."""
    tokenizer = tokenizer or GPT2TextTokenizer()
    files = resolve_sources(data)
    check_not_empty(data, files)
    key = _hash_sources(files, text_field, tokenizer.fingerprint)
    cache_dir = Path(cache_dir)
    token_path = cache_dir / f"tokens_{key[:20]}.bin"
    meta_path = token_path.with_suffix(".json")
    dtype = token_dtype(tokenizer.n_vocab)
    meta, damage = read_cache(token_path, meta_path, key, dtype)
    from_cache = meta is not None
    if damage and not quiet:
        print(f"token cache {token_path.name} is damaged ({damage}): tokenizing {data} again")
    if meta is None:
        meta = _build_cache(files, key, cache_dir, token_path, meta_path, num_threads, show_progress, text_field,
                            tokenizer)
    if meta["replaced_bytes"] and not quiet:
        print(f"warning: {meta['replaced_bytes']} bytes of {data} are not valid UTF-8 and were replaced "
              f"with U+FFFD; re-save the file as UTF-8 to keep them")
    if meta["n_tokens"] == 0:
        raise UserError(f"data {data} holds no tokens: put some text in it")
    tokens = np.memmap(token_path, dtype=meta.get("dtype", np.dtype(TOKEN_DTYPE).name), mode="r",
                       shape=(meta["n_tokens"],))
    _advise_random_access(tokens)
    return Corpus(tokens, files, key, meta["max_token_id"], meta["replaced_bytes"], from_cache, tokenizer)


def _build_cache(files: list[Source], key: str, cache_dir: Path, token_path: Path, meta_path: Path,
                 num_threads: int | None, show_progress: bool, text_field: str, tokenizer) -> dict:
    """Tokenize into `token_path` and describe it in `meta_path`, each written to a temporary file and
    renamed: a kill leaves the previous state or the new one, and the metadata is written last."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create the token cache folder {cache_dir}: {error.strerror}; "
                        f"choose a writable --out-dir") from None
    remove_interrupted_writes(cache_dir, (token_path.name, meta_path.name))
    tmp_path, tmp_meta = temporary_path(token_path), temporary_path(meta_path)
    sources.check_text_field(files, text_field)
    try:
        meta = _encode_files(files, tmp_path, num_threads or available_cpus(), show_progress, text_field, tokenizer)
        meta.update(key=key, sources=[p.name for p in files], format_version=CACHE_FORMAT_VERSION,
                    sample_sha256=sample_digest(tmp_path))
        meta_path.unlink(missing_ok=True)  # no metadata describes a token file while it is being replaced
        os.replace(tmp_path, token_path)
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, meta_path)
    except UserError:  # a corrupt shard or a missing column part-way through
        tmp_path.unlink(missing_ok=True)
        raise
    except OSError as error:
        tmp_path.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
        raise UserError(_cache_write_failure(f"the token cache {token_path}", token_path, error)) from None
    return meta


def _cache_write_failure(what: str, path: Path, error: OSError, needed_bytes: int | None = None) -> str:
    """A cache that could not be written, in one sentence: the disk and its space, or the file size limit."""
    return (write_failure(what, path.parent, error, needed_bytes)
            + f"; {make_room(error, 'another --out-dir')} and run again")


# A damaged cache must be noticed without reading a corpus of many GB on every start: the size check
# catches truncation, and a digest of SAMPLE_BLOCKS blocks spread over the file catches overwritten content.
SAMPLE_BLOCKS, SAMPLE_BLOCK_BYTES = 256, 4096


def sample_digest(path: Path) -> str:
    """sha256 of the file's size and of SAMPLE_BLOCKS blocks at evenly spaced offsets (all of a small file)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= SAMPLE_BLOCKS * SAMPLE_BLOCK_BYTES:
            digest.update(f.read())
        else:
            stride = (size - SAMPLE_BLOCK_BYTES) // (SAMPLE_BLOCKS - 1)
            for block in range(SAMPLE_BLOCKS):
                f.seek(block * stride)
                digest.update(f.read(SAMPLE_BLOCK_BYTES))
    return digest.hexdigest()


_META_FIELDS = {"n_tokens": int, "max_token_id": int, "replaced_bytes": int, "key": str, "dtype": str,
                "format_version": int, "sample_sha256": str}


def read_cache(token_path: Path, meta_path: Path, key: str,
               dtype=np.dtype(TOKEN_DTYPE)) -> tuple[dict | None, str | None]:
    """(metadata, None) for an intact cache; (None, what is wrong) for a damaged one; (None, None) when
    there is none. Checks the metadata's fields, then the token file against them."""
    if not meta_path.exists():
        return None, None
    if not token_path.exists():
        return None, "its token file is missing"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None, "its metadata is not readable JSON"
    if not isinstance(meta, dict) or any(type(meta.get(name)) is not kind for name, kind in _META_FIELDS.items()):
        return None, "its metadata lacks fields or has the wrong types"
    dtype = np.dtype(dtype)  # the tokenizer's: token_dtype(its vocabulary)
    if meta["key"] != key or meta["format_version"] != CACHE_FORMAT_VERSION or meta["dtype"] != dtype.name:
        return None, "its metadata describes another corpus or format"
    if not 0 <= meta["max_token_id"] <= np.iinfo(dtype).max or meta["n_tokens"] < 0:
        return None, "its metadata holds impossible values"
    size = token_path.stat().st_size
    if size != meta["n_tokens"] * dtype.itemsize:
        return None, f"the token file has {size:,} bytes, its metadata says {meta['n_tokens']:,} tokens"
    if sample_digest(token_path) != meta["sample_sha256"]:
        return None, "the token file's content does not match its checksum"
    return meta, None


def _advise_random_access(tokens: np.memmap) -> None:
    """Batches read short windows at random offsets: say so to the kernel, so that a page fault reads the
    4 KB page it needs and not the 128 KB around it (32x less I/O on a cold cache, and the trainer maps
    only the pages it reads). numpy keeps the mapping in `_mmap`; where it or madvise is missing, skip."""
    mapping = getattr(tokens, "_mmap", None)
    if mapping is not None and hasattr(mapping, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)


# ------------------------------------------------------------------ a tokenizer learned from the corpus

TOKENIZER_TEXT_BYTES = 64 << 20  # at most this much text trains a corpus tokenizer (well under a minute)
# The split is by tokens, the tokenizer's text by bytes: stopping this much short of the split keeps the
# validation text out of the tokenizer whatever the bytes per token at the end of the corpus.
TOKENIZER_SPLIT_MARGIN = 0.95


def corpus_tokenizer(data: str, cache_dir: str | os.PathLike, vocab_size: int, val_fraction: float,
                     text_field: str = DEFAULT_TEXT_FIELD) -> JsonTokenizer:
    """A byte-level BPE of `vocab_size` tokens learned from the beginning of `data`, never from its last
    `val_fraction` (the validation text), cached in `cache_dir` by content and size like the token cache."""
    files = resolve_sources(data)
    key = _hash_sources(files, text_field, f"bpe-{vocab_size}-held-out-{val_fraction}")
    path = Path(cache_dir) / f"tokenizer_{key[:20]}.json"
    if path.exists():
        try:
            cached = tokenizer_from_record(json.loads(path.read_text(encoding="utf-8")))
            if isinstance(cached, JsonTokenizer):
                return cached
            print(f"the cached tokenizer {path.name} is not a learned one: learning it again")
        except Exception as error:  # noqa: BLE001 - any error of json, tokenizers or the fields: learn it again
            print(f"the cached tokenizer {path.name} is damaged ({type(error).__name__}): learning it again")
    name = files[0].name if len(files) == 1 else f"{len(files)} files"
    tokenizer = train_byte_level_bpe(_tokenizer_training_text(files, text_field, val_fraction), vocab_size,
                                     origin=f"a byte-level BPE learned from {name}")
    record = json.dumps(tokenizer.to_record())
    try:
        write_text_atomically(path, record)
    except OSError as error:
        raise UserError(_cache_write_failure(f"the tokenizer {path}", path, error, len(record))) from None
    return tokenizer


def _tokenizer_training_text(files: list[Source], text_field: str, val_fraction: float) -> list[str]:
    """At most TOKENIZER_TEXT_BYTES of the corpus's beginning, all before its validation split. The end of a
    stream is known only on reaching it, so a little more is read; whether the corpus ended there (then it is
    all of it) or not (then it is longer), its first (1 - val_fraction) x margin lies before the split."""
    before_split = (1 - val_fraction) * TOKENIZER_SPLIT_MARGIN
    read_limit = min(4 * TOKENIZER_TEXT_BYTES, TOKENIZER_TEXT_BYTES / before_split)
    pieces, sizes, n_read = [], [], 0
    with tqdm(disable=True) as bar:
        for piece in _text_pieces(files, _ReplacementCounter(), bar, text_field):
            if piece is not None:
                pieces.append(piece)
                sizes.append(len(piece.encode("utf-8")))
                n_read += sizes[-1]
                if n_read >= read_limit:
                    break
    keep = min(TOKENIZER_TEXT_BYTES, int(n_read * before_split))
    kept = []
    for piece, size in zip(pieces, sizes):
        if size >= keep:  # the last one, cut in proportion (a few bytes either way do not matter here)
            kept.append(piece[:len(piece) * keep // size])
            break
        kept.append(piece)
        keep -= size
    return kept


# ------------------------------------------------------------------ batches


def split_train_val(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last `val_fraction` of the corpus for validation (views, no copy)."""
    n_val = int(len(tokens) * val_fraction)
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:]


def batch_offsets(n_tokens: int, seq_len: int, n_rows: int, seed: int, stream: int, index: int) -> np.ndarray:
    """Start offsets of `n_rows` windows, a pure function of (seed, stream, index): no hidden state."""
    rng = np.random.default_rng([seed, stream, index])
    return rng.integers(0, n_tokens - seq_len, size=n_rows)


def local_rows(micro_step: int, rank: int, world_size: int, batch_size: int) -> slice:
    """The rows of a global batch that one process trains on in one micro-step. Rows are dealt micro-step
    by micro-step across processes, so every split of the same global batch into processes x micro-steps
    x batch_size covers the same rows, each once: the step's gradient does not depend on the split."""
    start = (micro_step * world_size + rank) * batch_size
    return slice(start, start + batch_size)


def get_batch(tokens: np.ndarray, offsets: np.ndarray, seq_len: int, device: torch.device):
    """Windows of seq_len + 1 tokens at `offsets` -> inputs x and next-token targets y, (B, T) int64."""
    windows = tokens[offsets[:, None] + np.arange(seq_len + 1)]  # (B, T+1) gathered from the memmap
    batch = torch.from_numpy(windows.astype(np.int64))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch[:, :-1], batch[:, 1:]


TRAIN_STREAM, VAL_STREAM = 0, 1
