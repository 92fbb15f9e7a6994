"""Figure 4: tokenization throughput of our data pipeline against plain tiktoken on the same text.

    python -m bench.tokenization          # Shakespeare's plays (the default corpus), about 5 MB
    python -m bench.tokenization --quick  # the first tenth of it

Ours is `data.load_corpus` on a fresh cache folder: hashing the file, streaming it through the GPT-2
tokenizer's batch encoder in safe pieces, and writing the uint16 token file. The reference is what a
script does by hand, two ways: read the file and `encode_ordinary_batch` its lines with as many threads,
or `encode_ordinary` the whole text at once (one thread, but no per-line overhead); the ratio is taken
against the faster of the two. "Ours, cached" is the trainer's second run: the token file is memory-mapped.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

from bench.harness import median, parse_args, print_ratios, print_row, time_interleaved
from smolm135.data.corpus import load_corpus
from smolm135.data.shakespeare import shakespeare_text
from smolm135.errors import run_cli
from smolm135.runtime.probes import this_host
from smolm135.data.tokenizer import get_tokenizer


def main(argv=None) -> dict[str, float]:
    args = parse_args(__doc__, argv)
    print(this_host().line())
    threads = os.cpu_count() or 1  # what load_corpus uses by default
    encoder = get_tokenizer()
    text = shakespeare_text()
    if args.quick:
        text = text[: len(text) // 10]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.txt"
        path.write_text(text, encoding="utf-8")
        fresh_cache_numbers = itertools.count()
        warm_cache = Path(folder) / "warm"
        load_corpus(str(path), warm_cache, show_progress=False)
        counts = {}

        def ours():
            counts["ours"] = len(load_corpus(str(path), Path(folder) / f"cache{next(fresh_cache_numbers)}",
                                             show_progress=False).tokens)

        def ours_cached():
            counts["ours, cached"] = len(load_corpus(str(path), warm_cache, show_progress=False).tokens)

        def tiktoken_batch():
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            counts["tiktoken batch of lines"] = sum(map(len, encoder.encode_ordinary_batch(lines, num_threads=threads)))

        def tiktoken_whole():
            counts["tiktoken whole text"] = len(encoder.encode_ordinary(path.read_text(encoding="utf-8")))

        candidates = {"ours": ours, "ours, cached": ours_cached, "tiktoken batch of lines": tiktoken_batch,
                      "tiktoken whole text": tiktoken_whole}
        seconds = time_interleaved(candidates, args.repeats, args.device)
    print(f"tokenization of {len(text.encode()) / 1e6:.1f} MB of text with {threads} threads "
          f"(tokens: {', '.join(f'{k} {v:,}' for k, v in counts.items())}):")
    for label, values in seconds.items():
        print_row(label, [counts[label] / s / 1e6 for s in values], "M tokens/s")
    reference = min(median(seconds["tiktoken batch of lines"]), median(seconds["tiktoken whole text"]))
    ratio = reference / median(seconds["ours"])
    print_ratios("tokens/s against the faster plain tiktoken", {"fresh cache": ratio}, "above 1: ours is faster")
    return {"fresh cache": ratio}


if __name__ == "__main__":
    run_cli(main)
