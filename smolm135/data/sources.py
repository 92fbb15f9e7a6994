"""Documents from the formats corpora come in: JSON Lines (.jsonl, .jsonl.gz), Parquet shards, and Hugging
Face datasets (a `save_to_disk` folder, or a Hub id `hf:NAME[:CONFIG][:SPLIT]` streamed by `datasets`).

`data.resolve_sources` turns --data into a list of sources: paths of files, or one dataset. `documents`
yields one source's documents one at a time (Parquet a record batch at a time, JSON Lines a line at a
time), so a corpus of any size tokenizes with flat memory. `content_files` and `HubDataset.content_id`
say what the token cache's key is computed over. Plain .txt files stay in data.py: a file is one document,
read in chunks.
"""
from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Union

from smolm135.errors import UserError, import_extra

TEXT_SUFFIX = ".txt"
TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
CORPUS_SUFFIXES = (TEXT_SUFFIX,) + TABLE_SUFFIXES
HUB_PREFIX = "hf:"
DEFAULT_TEXT_FIELD = "text"
DEFAULT_SPLIT = "train"
BATCH_ROWS = 1024  # rows decoded at a time from Parquet and datasets: a few MB of text at most
PROGRESS_EVERY_LINES = 256  # JSON Lines report progress this often (a tell() per line would cost)
HUB_TIMEOUT_SECONDS = 20


@dataclass(frozen=True)
class SavedDataset:
    """One split written by `datasets`' save_to_disk: a folder with state.json and Arrow files."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    def __str__(self) -> str:
        return str(self.folder)


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face Hub, streamed. `revision` is the commit read, fixed when --data is
    resolved, so that the token cache is keyed by the dataset's content and a new commit re-tokenizes."""

    repo_id: str
    config: str | None
    split: str
    revision: str

    @property
    def name(self) -> str:
        return HUB_PREFIX + ":".join(part for part in (self.repo_id, self.config, self.split) if part)

    def content_id(self) -> str:
        return f"{self.name}@{self.revision}"

    def __str__(self) -> str:
        return self.name


Source = Union[Path, SavedDataset, HubDataset]


def corpus_suffix(path: Path) -> str | None:
    """The corpus format of a file by its name (.jsonl.gz counts as one suffix), or None."""
    name = path.name.lower()
    return next((suffix for suffix in CORPUS_SUFFIXES if name.endswith(suffix)), None)


def is_text_file(source: Source) -> bool:
    return isinstance(source, Path) and corpus_suffix(source) in (TEXT_SUFFIX, None)


# ------------------------------------------------------------------ resolving --data


def dataset_source(data: str) -> SavedDataset | HubDataset | None:
    """`--data` as a Hugging Face dataset (a Hub id or a save_to_disk folder), or None for files. Reading either
    takes the `datasets` extra, asked for here, before anything is written."""
    if data.startswith(HUB_PREFIX):
        import_extra("datasets", "datasets", f"--data {data}")
        return hub_dataset(data)
    folder = Path(data)
    is_dataset_dict = (folder / "dataset_dict.json").is_file()
    if is_dataset_dict or ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()):
        import_extra("datasets", "datasets", f"--data {data} (a datasets save_to_disk folder)")
        return SavedDataset(folder / saved_split(folder) if is_dataset_dict else folder)
    return None


def saved_split(folder: Path) -> str:
    """The split of a save_to_disk DatasetDict to train on: `train`, or the only one there is."""
    splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
    if DEFAULT_SPLIT in splits:
        return DEFAULT_SPLIT
    if len(splits) == 1:
        return splits[0]
    raise UserError(f"{folder} holds the splits {', '.join(splits)} and none is called {DEFAULT_SPLIT!r}: point "
                    f"--data at one of its split folders, e.g. {folder / splits[0]}")


def hub_dataset(spec: str) -> HubDataset:
    """`hf:NAME[:CONFIG][:SPLIT]` -> the dataset at its current Hub commit; refused when offline."""
    parts = spec[len(HUB_PREFIX):].split(":")
    if not parts[0] or len(parts) > 3:
        raise UserError(f"cannot read the dataset id {spec!r}: write hf:NAME, hf:NAME:CONFIG or "
                        f"hf:NAME:CONFIG:SPLIT (e.g. hf:roneneldan/TinyStories::train)")
    repo_id, config, split = (parts + [None, None])[:3]
    return HubDataset(repo_id, config or None, split or DEFAULT_SPLIT, hub_revision(repo_id, spec))


def hub_offline() -> bool:
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_revision(repo_id: str, spec: str) -> str:
    """The commit sha of a Hub dataset: one small request, which also tells whether the Hub is reachable."""
    fix = "download it where there is a network (datasets' save_to_disk, or its .parquet/.jsonl files) and pass that with --data"
    if hub_offline():
        raise UserError(f"--data {spec} streams from the Hugging Face Hub, but the Hub is switched off here "
                        f"(HF_HUB_OFFLINE): {fix}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError, RepositoryNotFoundError

    try:
        return HfApi().dataset_info(repo_id, timeout=HUB_TIMEOUT_SECONDS).sha
    except RepositoryNotFoundError:
        raise UserError(f"there is no dataset {repo_id!r} on the Hugging Face Hub (or it is private): "
                        f"check the name in --data {spec}") from None
    except (OSError, HTTPError) as error:
        raise UserError(f"cannot reach the Hugging Face Hub for --data {spec} ({first_line(error)}): {fix}") from None


def first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ------------------------------------------------------------------ what the cache key covers


def content_files(source: Path | SavedDataset) -> list[Path]:
    """The files whose bytes are the source's content: the file itself, or a saved dataset's files."""
    if isinstance(source, SavedDataset):
        return sorted(p for p in source.folder.iterdir() if p.is_file())
    return [source]


def source_size(source: Source) -> int | None:
    """Bytes on disk (the progress bar's unit), or None for a dataset streamed from the Hub."""
    if isinstance(source, HubDataset):
        return None
    return sum(p.stat().st_size for p in content_files(source))


# ------------------------------------------------------------------ reading documents


def check_text_field(sources: list[Source], text_field: str) -> None:
    """Fail before any tokenizing when a Parquet shard or saved dataset lacks the column (cheap: metadata
    only), rather than after hours on the shards before it."""
    for source in sources:
        if isinstance(source, Path) and corpus_suffix(source) == ".parquet":
            _require_column(source, _open_parquet(source).schema_arrow.names, text_field)
        elif isinstance(source, SavedDataset):
            _require_column(source, _load_saved(source).column_names, text_field)


def documents(source: Source, text_field: str, advance: Callable[[float], object] = lambda n: None,
              decode: Callable[[bytes], str] | None = None) -> Iterator[str]:
    """The texts of a table-like source, in order; rows whose field is null are skipped. `advance(n)` is
    called as about n bytes of the source are read; `decode` turns JSON Lines' bytes into text, one line
    after the other (default: UTF-8, invalid bytes replaced with U+FFFD)."""
    if isinstance(source, HubDataset):
        return _hub_documents(source, text_field)
    if isinstance(source, SavedDataset):
        return _saved_documents(source, text_field, advance)
    if corpus_suffix(source) == ".parquet":
        return _parquet_documents(source, text_field, advance)
    return _jsonl_documents(source, text_field, advance, decode or _decode_replacing)


def _decode_replacing(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def _jsonl_documents(path: Path, text_field: str, advance, decode: Callable[[bytes], str]) -> Iterator[str]:
    compressed = corpus_suffix(path) == ".jsonl.gz"
    reported = 0
    try:
        with open(path, "rb") as raw:
            lines = gzip.GzipFile(fileobj=raw) if compressed else raw
            for line_number, line in enumerate(lines, 1):
                if line_number % PROGRESS_EVERY_LINES == 0:
                    advance(raw.tell() - reported)
                    reported = raw.tell()
                if not line.strip():
                    continue
                try:
                    record = json.loads(decode(line))
                except json.JSONDecodeError as error:
                    raise UserError(f"{path} line {line_number} is not valid JSON ({error.msg}): fix or remove "
                                    f"that line") from None
                if not isinstance(record, dict):
                    raise UserError(f"{path} line {line_number} is not a JSON object: JSON Lines corpora hold one "
                                    f'object per line, e.g. {{"{text_field}": "..."}}')
                if text_field not in record:
                    _require_column(path, list(record), text_field, where=f" line {line_number}")
                value = record[text_field]
                if value is not None:
                    yield _as_text(value, path, text_field)
            advance(raw.tell() - reported)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise UserError(f"{path} is not a readable gzip file ({first_line(error)}): it may be truncated; "
                        f"download it again or remove it") from None


def _open_parquet(path: Path):
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise UserError(f"{path} is not a readable Parquet file ({first_line(error)}): it may be truncated; "
                        f"download it again or remove it") from None


def _parquet_documents(path: Path, text_field: str, advance) -> Iterator[str]:
    import pyarrow

    parquet = _open_parquet(path)
    _require_column(path, parquet.schema_arrow.names, text_field)
    bytes_per_row = path.stat().st_size / max(1, parquet.metadata.num_rows)
    try:
        # one record batch of one column at a time: memory holds a batch, never the file
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=[text_field], use_threads=False):
            advance(batch.num_rows * bytes_per_row)
            for value in batch.column(0).to_pylist():
                if value is not None:
                    yield _as_text(value, path, text_field)
    except (pyarrow.ArrowException, OSError) as error:
        raise UserError(f"{path} is not a readable Parquet file ({first_line(error)}): it may be truncated; "
                        f"download it again or remove it") from None


def _load_saved(source: SavedDataset):
    import datasets

    try:
        return datasets.load_from_disk(str(source.folder))
    except (OSError, ValueError) as error:
        raise UserError(f"{source.folder} is not a readable saved dataset ({first_line(error)}): save it again "
                        f"with datasets' save_to_disk") from None


def _saved_documents(source: SavedDataset, text_field: str, advance) -> Iterator[str]:
    dataset = _load_saved(source)
    _require_column(source.folder, dataset.column_names, text_field)
    bytes_per_row = (source_size(source) or 0) / max(1, len(dataset))
    for batch in dataset.select_columns([text_field]).iter(batch_size=BATCH_ROWS):  # memory-mapped Arrow
        values = batch[text_field]
        advance(len(values) * bytes_per_row)
        yield from (_as_text(value, source.folder, text_field) for value in values if value is not None)


def _hub_documents(source: HubDataset, text_field: str) -> Iterator[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(source.repo_id, source.config, split=source.split,
                                        revision=source.revision, streaming=True)
    except (OSError, ValueError) as error:  # unknown config or split: the message lists the valid ones
        raise UserError(f"cannot stream {source.name} ({first_line(error)})") from None
    for row in dataset:
        if text_field not in row:
            _require_column(source.name, list(row), text_field)
        if row[text_field] is not None:
            yield _as_text(row[text_field], source.name, text_field)


def _require_column(where_from, columns: list[str], text_field: str, where: str = "") -> None:
    if text_field not in columns:
        raise UserError(f"{where_from}{where} has no column {text_field!r} (its columns: "
                        f"{', '.join(map(str, columns)) or 'none'}): pass --text-field with the one that holds the text")


def _as_text(value, where_from, text_field: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where_from}: column {text_field!r} holds {type(value).__name__} values, not text: pass "
                        f"--text-field with the column that holds the text")
    return value
