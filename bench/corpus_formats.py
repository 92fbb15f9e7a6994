"""Tokenization throughput of a Parquet corpus (and JSON Lines) against plain text of the same content.

    python -m bench.corpus_formats          # Shakespeare's plays cut into paragraph documents, about 5 MB
    python -m bench.corpus_formats --quick  # the first tenth of them
    python -m bench.corpus_formats --memory # also peak memory on 1x and 8x the Parquet corpus

Both sides are `data.load_corpus` on a fresh cache folder. The documents are Shakespeare's paragraphs
(a few hundred bytes each, shorter than a typical web document, so the per-document cost shows); the
text side is one .txt file of the same paragraphs joined by blank lines, the Parquet side one row per
paragraph in row groups of 1,000, the JSON Lines side one object per line. The last line is the ratio
parquet / text of tokens per second.
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.big_corpus import load_corpus_in_fresh_process
from bench.harness import median, parse_args, print_ratios, print_row, time_interleaved
from smolm135.data.corpus import available_cpus, load_corpus
from smolm135.data.shakespeare import shakespeare_text
from smolm135.errors import run_cli


def host_line() -> str:
    """The CPU model and the cores this process may use, from /proc/cpuinfo where there is one."""
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"host: {model}, {available_cpus()} cores available, load average {os.getloadavg()[0]:.1f}"


def paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


def write_formats(documents: list[str], folder: Path) -> dict[str, Path]:
    paths = {"text": folder / "corpus.txt", "parquet": folder / "corpus.parquet", "jsonl": folder / "corpus.jsonl"}
    paths["text"].write_text("\n\n".join(documents), encoding="utf-8")
    pq.write_table(pa.table({"text": documents}), paths["parquet"], row_group_size=1000)
    with open(paths["jsonl"], "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in documents)
    return paths


def peak_memory(documents: list[str], folder: Path, copies: int) -> dict:
    """load_corpus's peak resident memory on `copies` copies of the documents as one Parquet file."""
    path = folder / f"corpus_x{copies}.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
        for _ in range(copies):
            writer.write_table(pa.table({"text": documents}), row_group_size=1000)
    return {"parquet_mb": path.stat().st_size / 1e6,
            **load_corpus_in_fresh_process(path, folder / f"memory_cache{copies}", available_cpus())}


def add_arguments(parser):
    parser.add_argument("--memory", action="store_true", help="also peak memory on 1x and 8x the Parquet corpus")


def main(argv=None) -> dict[str, float]:
    args = parse_args(__doc__, argv, add_arguments)
    documents = paragraphs(shakespeare_text())
    if args.quick:
        documents = documents[: len(documents) // 10]
    with tempfile.TemporaryDirectory() as folder:
        paths = write_formats(documents, Path(folder))
        fresh_caches = itertools.count()
        counts = {}

        def tokenize(kind: str):
            def run():
                cache = Path(folder) / f"cache{next(fresh_caches)}"
                counts[kind] = len(load_corpus(str(paths[kind]), cache, show_progress=False).tokens)
            return run

        seconds = time_interleaved({kind: tokenize(kind) for kind in paths}, args.repeats, args.device)
        sizes = {kind: path.stat().st_size for kind, path in paths.items()}
        memory = {copies: peak_memory(documents, Path(folder), copies) for copies in (1, 8)} if args.memory else {}
    print(host_line() + " (a shared machine: rounds vary)")
    print(f"{len(documents):,} documents, {sizes['text'] / 1e6:.1f} MB of text; files: "
          + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))
    for kind, values in seconds.items():
        print_row(f"{kind} ({counts[kind]:,} tokens)", [counts[kind] / s / 1e6 for s in values], "M tokens/s")
    for copies, figures in memory.items():
        print(f"  load_corpus on {copies}x the Parquet corpus ({figures['parquet_mb']:.0f} MB, {figures['n_tokens']:,} "
              f"tokens), fresh process: peak resident memory {figures['peak_rss_mb']:,.0f} MB")
    rate = {kind: counts[kind] / median(values) for kind, values in seconds.items()}
    ratios = {"parquet": rate["parquet"] / rate["text"], "jsonl": rate["jsonl"] / rate["text"]}
    print_ratios("tokens/s against the same text as one .txt file", ratios, "1: as fast as plain text")
    return ratios


if __name__ == "__main__":
    run_cli(main)
