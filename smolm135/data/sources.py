"""Records from the formats corpora and conversations come in: JSON Lines (.jsonl, .jsonl.gz), Parquet shards,
and Hugging Face datasets (a `save_to_disk` folder, or a Hub id `hf:NAME[:CONFIG][:SPLIT]` streamed by `datasets`).

`data.resolve_sources` turns --data into a list of sources: paths of files, or one dataset. `records` is the
one reader of each kind of table: it yields a source's records one at a time (Parquet and datasets a record
batch at a time, JSON Lines a line at a time), so a corpus of any size is read with flat memory; `documents`
takes the text column of them, data/chat.py the conversations. `hash_content` says what the token cache's
and the conversations' keys are computed over. Plain .txt files stay in corpus.py: a file is one document,
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

from smolm135.errors import UserError, import_extra, import_required

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


def is_json_lines(source: Source) -> bool:
    return isinstance(source, Path) and corpus_suffix(source) in (".jsonl", ".jsonl.gz")


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

HASH_BLOCK_BYTES = 4 << 20  # file bytes hashed at a time: a corpus of any size is keyed in flat memory


def content_files(source: Path | SavedDataset) -> list[Path]:
    """The files whose bytes are the source's content: the file itself, or a saved dataset's files."""
    if isinstance(source, SavedDataset):
        return sorted(p for p in source.folder.iterdir() if p.is_file())
    return [source]


def hash_content(digest, source: Source) -> None:
    """Add what `source` holds to a hashlib `digest`: the bytes of its files, or a Hub dataset's name and
    commit (fixed content, which would have to be downloaded whole to be hashed)."""
    digest.update(b"\0file\0")
    if isinstance(source, HubDataset):
        digest.update(source.content_id().encode())
        return
    for path in content_files(source):
        with open(path, "rb") as f:
            while block := f.read(HASH_BLOCK_BYTES):
                digest.update(block)


def source_size(source: Source) -> int | None:
    """Bytes on disk (the progress bar's unit), or None for a dataset streamed from the Hub."""
    if isinstance(source, HubDataset):
        return None
    return sum(p.stat().st_size for p in content_files(source))


# ------------------------------------------------------------------ reading records


class BadRecord(ValueError):
    """What is wrong with one record (the caller names the source and the record)."""


def stores_columns_apart(source: Source) -> bool:
    """Parquet files and saved datasets store each column apart: one column is read alone, and the column
    names are known from the metadata, before any record is read."""
    return isinstance(source, SavedDataset) or (isinstance(source, Path) and corpus_suffix(source) == ".parquet")


def column_names(source: Source) -> list[str]:
    """A table's columns: a Parquet file's schema, a saved dataset's features, else the first record's keys
    (JSON Lines, a Hub dataset); none when that record is no object, or there is none."""
    if isinstance(source, SavedDataset):
        return list(_load_saved(source).column_names)
    if stores_columns_apart(source):
        return list(_open_parquet(source).schema_arrow.names)
    for _, record in records(source):
        return list(record) if isinstance(record, dict) else []
    return []


def records(source: Source, columns: list[str] | None = None, advance: Callable[[float], object] = lambda n: None,
            decode: Callable[[bytes], str] | None = None) -> Iterator[tuple[int, object]]:
    """(record number, record) of a table-like source, in order, numbered from 1; a JSON Lines record's number
    is its line's (blank lines are no records). A record is a dict of its columns as pyarrow's to_pylist
    gives it (a list of structs is a list of dicts, each with every field of the struct, None where a row
    lacked one), or from JSON Lines whatever its line parses to, or a BadRecord when the line is no JSON.
    `columns` reads only those, where columns are stored apart. `advance(n)` is called as about n bytes of the
    source are read; `decode` turns JSON Lines' bytes into text, one line after the other (default: UTF-8,
    invalid bytes replaced with U+FFFD)."""
    if isinstance(source, HubDataset):
        return _hub_records(source)
    if isinstance(source, SavedDataset):
        return _saved_records(source, columns, advance)
    if corpus_suffix(source) == ".parquet":
        return _parquet_records(source, columns, advance)
    return _jsonl_records(source, advance, decode or _decode_replacing)


def _decode_replacing(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def _jsonl_records(path: Path, advance, decode: Callable[[bytes], str]) -> Iterator[tuple[int, object]]:
    compressed = corpus_suffix(path) == ".jsonl.gz"
    reported = 0
    try:
        with open(path, "rb") as raw:
            lines = gzip.GzipFile(fileobj=raw) if compressed else raw
            for line_number, line in enumerate(lines, 1):
                if line_number % PROGRESS_EVERY_LINES == 0:
                    advance(raw.tell() - reported)
                    reported = raw.tell()
                if line.strip():
                    yield line_number, _parse_json(decode(line))
            advance(raw.tell() - reported)
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise UserError(f"{path} is not a readable gzip file ({first_line(error)}): it may be truncated; "
                        f"download it again or remove it") from None


def _parse_json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return BadRecord(f"not valid JSON ({error.msg})")


def _arrow_rows(batches, advance, bytes_per_row: float) -> Iterator[dict]:
    """The rows of Arrow record batches or tables, one batch in memory at a time."""
    for batch in batches:
        advance(batch.num_rows * bytes_per_row)
        yield from batch.to_pylist()


def _open_parquet(path: Path):
    pq = import_required("pyarrow.parquet", f"reading the Parquet file {path}")
    from pyarrow import ArrowException

    try:
        return pq.ParquetFile(path)
    except (ArrowException, OSError) as error:
        raise _unreadable_parquet(path, error) from None


def _unreadable_parquet(path: Path, error: BaseException) -> UserError:
    return UserError(f"{path} is not a readable Parquet file ({first_line(error)}): it may be truncated; download it "
                     f"again or remove it")


def _parquet_records(path: Path, columns: list[str] | None, advance) -> Iterator[tuple[int, dict]]:
    parquet = _open_parquet(path)  # first: it says in one line when pyarrow is missing
    from pyarrow import ArrowException

    bytes_per_row = path.stat().st_size / max(1, parquet.metadata.num_rows)
    try:
        # one record batch at a time: memory holds a batch, never the file
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns, use_threads=False)
        yield from enumerate(_arrow_rows(batches, advance, bytes_per_row), 1)
    except (ArrowException, OSError) as error:
        raise _unreadable_parquet(path, error) from None


def _load_saved(source: SavedDataset):
    import datasets

    try:
        return datasets.load_from_disk(str(source.folder))
    except (OSError, ValueError) as error:
        raise UserError(f"{source.folder} is not a readable saved dataset ({first_line(error)}): save it again "
                        f"with datasets' save_to_disk") from None


def _saved_records(source: SavedDataset, columns: list[str] | None, advance) -> Iterator[tuple[int, dict]]:
    dataset = _load_saved(source)
    bytes_per_row = (source_size(source) or 0) / max(1, len(dataset))
    if columns is not None:
        dataset = dataset.select_columns(columns)
    # memory-mapped Arrow read as Arrow tables, so that rows come out exactly as a Parquet file's do
    tables = dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)
    return enumerate(_arrow_rows(tables, advance, bytes_per_row), 1)


def _stream_hub(source: HubDataset):
    import datasets

    try:
        return datasets.load_dataset(source.repo_id, source.config, split=source.split, revision=source.revision,
                                     streaming=True)
    except (OSError, ValueError) as error:  # unknown config or split: the message lists the valid ones
        raise UserError(f"cannot stream {source.name} ({first_line(error)})") from None


def _hub_records(source: HubDataset) -> Iterator[tuple[int, dict]]:
    # rows as datasets gives them, which for text and lists of structs is as to_pylist gives them (every
    # datasets release the extra allows streams rows; not all of them stream Arrow batches)
    return enumerate(_stream_hub(source), 1)


# ------------------------------------------------------------------ reading documents


def check_text_field(sources: list[Source], text_field: str) -> None:
    """Fail before any tokenizing when a Parquet shard or saved dataset lacks the column (cheap: metadata
    only), rather than after hours on the shards before it."""
    for source in filter(stores_columns_apart, sources):
        _require_column(source, column_names(source), text_field)


def documents(source: Source, text_field: str, advance: Callable[[float], object] = lambda n: None,
              decode: Callable[[bytes], str] | None = None) -> Iterator[str]:
    """The texts of a table-like source, in order; rows whose field is null are skipped. `advance` and
    `decode` as for `records`."""
    columns = None
    if stores_columns_apart(source):  # only the text's column is read
        check_text_field([source], text_field)
        columns = [text_field]
    for number, record in records(source, columns, advance, decode):
        text = _text_of(record, f"{source} line {number}" if is_json_lines(source) else str(source), text_field)
        if text is not None:
            yield text


def _text_of(record, where: str, text_field: str) -> str | None:
    """The text of one record, or None where its field is null."""
    if isinstance(record, BadRecord):
        raise UserError(f"{where} is {record}: fix or remove that line")
    if not isinstance(record, dict):
        raise UserError(f"{where} is not a JSON object: JSON Lines corpora hold one object per line, e.g. "
                        f'{{"{text_field}": "..."}}')
    if text_field not in record:
        _require_column(where, list(record), text_field)
    value = record[text_field]
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: column {text_field!r} holds {type(value).__name__} values, not text: pass "
                        f"--text-field with the column that holds the text")
    return value


def _require_column(where_from, columns: list[str], text_field: str) -> None:
    if text_field not in columns:
        raise UserError(f"{where_from} has no column {text_field!r} (its columns: "
                        f"{', '.join(map(str, columns)) or 'none'}): pass --text-field with the one that holds the text")
