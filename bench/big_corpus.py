"""A corpus of hundreds of MB: how fast it tokenizes next to tiktoken itself, and whether memory stays flat.

    python -m bench.big_corpus                  # 300 MB corpus, 60 training steps
    python -m bench.big_corpus --quick          # 30 MB, 30 steps: a smoke run in about a minute
    python -m bench.big_corpus --size-mb 1000 --threads 8

Generates the corpus (Shakespeare's lines, reshuffled block by block) in a temporary folder and deletes it
afterwards. Three measurements, side by side in one run:

1. tiktoken's own throughput: `encode_ordinary_batch` on the same pieces with the same thread count,
   counting only the time inside tiktoken (no reading, no writing);
2. `data.load_corpus` end to end (hashing, reading, decoding, encoding, writing the uint16 token file), in a
   fresh process whose peak resident memory is reported next to the corpus size;
3. the trainer (tiny preset) reading the memory-mapped token file, evicted from the page cache first as
   if it were larger than memory: resident memory sampled from outside while it trains, split into
   anonymous memory (the process's own) and file pages (the mapped token file and libraries: page cache,
   shared and reclaimable), and the bytes it read from storage.

The last line is the throughput ratio load_corpus / tiktoken.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from smolm135.data import corpus as data
from smolm135.checkpoint import TRAINING
from smolm135.errors import CommandLineParser, run_cli
from smolm135.runtime.probes import this_host
from smolm135.data.shakespeare import shakespeare_text
from smolm135.data.tokenizer import get_tokenizer

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000


def write_corpus(path: Path, size_mb: int, seed: int = 0) -> int:
    """About size_mb MB of English verse, written block by block (the benchmark itself stays small)."""
    lines = shakespeare_text().splitlines(keepends=True)
    rng = random.Random(seed)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size_mb * MB:
            rng.shuffle(lines)
            block = "".join(lines)[: size_mb * MB - written]
            f.write(block)
            written += len(block.encode("utf-8"))
    return path.stat().st_size


def tiktoken_seconds(path: Path, threads: int) -> tuple[float, int]:
    """Seconds spent inside tiktoken's encode_ordinary_batch on the corpus's pieces, and the token count."""
    encoder = get_tokenizer()
    seconds, n_tokens, pending = 0.0, 0, ""
    with open(path, encoding="utf-8") as f:
        while block := f.read(data.READ_CHUNK_BYTES):
            pieces, pending = data._split_for_encoding(pending + block, data.ENCODE_PIECE_CHARS)
            started = time.perf_counter()
            encoded = encoder.encode_ordinary_batch(pieces, num_threads=threads)
            seconds += time.perf_counter() - started
            n_tokens += sum(map(len, encoded))
    started = time.perf_counter()
    n_tokens += len(encoder.encode_ordinary(pending))
    return seconds + time.perf_counter() - started, n_tokens


# Runs in a fresh process, so that its peak resident memory is load_corpus's alone.
LOAD_CORPUS = """
import json, resource, sys, time
from smolm135.data import corpus as data
from smolm135.data.shakespeare import shakespeare_text
from smolm135.data.tokenizer import get_tokenizer
get_tokenizer()  # built once per process, outside the timing as in the tiktoken measurement
started = time.perf_counter()
data._hash_sources([__import__("pathlib").Path({path!r})])
hash_seconds = time.perf_counter() - started
started = time.perf_counter()
corpus = data.load_corpus({path!r}, {cache!r}, show_progress=False, num_threads={threads})
seconds = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "hash_seconds": hash_seconds, "n_tokens": len(corpus.tokens),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6}}))
"""


def load_corpus_in_fresh_process(path: Path, cache: Path, threads: int) -> dict:
    code = LOAD_CORPUS.format(root=str(REPO_ROOT), path=str(path), cache=str(cache), threads=threads)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def memory_mb(pid: int) -> dict | None:
    """A process's resident memory from /proc (Linux), in MB: total, anonymous, file-backed pages; and the
    bytes it has read from storage (not from the page cache)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    fields = {line.split(":")[0]: int(line.split()[1]) for line in (status + io).splitlines()
              if line.startswith(("VmRSS", "Rss", "read_bytes"))}
    if "VmRSS" not in fields:
        return None
    return {"rss": fields["VmRSS"] / 1e3, "anon": fields.get("RssAnon", 0) / 1e3,
            "file": fields.get("RssFile", 0) / 1e3, "read": fields.get("read_bytes", 0) / 1e6}


def evict_from_page_cache(folder: Path) -> None:
    """Drop the token files' pages from the page cache, so training reads them from storage as it would a
    corpus larger than memory (Linux; elsewhere a no-op)."""
    if hasattr(os, "posix_fadvise"):
        for token_file in folder.glob("*.bin"):
            fd = os.open(token_file, os.O_RDONLY)
            os.fsync(fd)  # dirty pages (the file was just written) cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def train_and_sample_memory(path: Path, out_dir: Path, steps: int) -> dict:
    """Train the tiny preset on the token file and sample the trainer's memory from outside while it trains.
    Each step allocates and frees its activations, so single samples jump; the peak over the first third of
    the steps against the peak over the last third shows whether anything accumulates."""
    command = [sys.executable, str(REPO_ROOT / "Model_smollm135_trainer.py"), "--data", str(path), "--out-dir",
               str(out_dir), "--preset", "tiny", "--device", "cpu", "--dtype", "float32", "--max-steps", str(steps),
               "--batch-size", "8", "--seq-len", "64", "--eval-every", str(10 * steps), "--eval-batches", "2",
               "--sample-every", str(10 * steps), "--sample-tokens", "4", "--checkpoint-every", str(10 * steps),
               "--no-progress"]
    trainer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    training = threading.Event()  # set once the corpus is mapped and the model built
    finished = threading.Event()  # set at the final evaluation
    output = []

    def follow_output():
        for line in trainer.stdout:
            output.append(line)
            if line.startswith("step 0: validation loss"):
                training.set()
            if line.startswith(f"step {steps}: validation loss"):
                finished.set()
        trainer.wait()

    reader = threading.Thread(target=follow_output, daemon=True)
    reader.start()
    samples = []
    while reader.is_alive():
        sample = memory_mb(trainer.pid)
        if sample and training.is_set() and not finished.is_set():
            samples.append(sample)
        time.sleep(0.02)
    if trainer.returncode != 0 or len(samples) < 6:
        raise SystemExit(f"the training run failed or was too short to sample (exit {trainer.returncode}):\n"
                         + "".join(output[-20:]))
    third = len(samples) // 3
    first, last = samples[:third], samples[-third:]
    return {"n_samples": len(samples), "storage_read_mb": samples[-1]["read"] - samples[0]["read"],
            "first": {key: max(s[key] for s in first) for key in samples[0]},
            "last": {key: max(s[key] for s in last) for key in samples[0]}}


def run_benchmark(size_mb: int, steps: int, threads: int) -> float:
    with tempfile.TemporaryDirectory(prefix="smolm135_big_corpus_") as tmp:
        tmp = Path(tmp)
        corpus_path = tmp / "corpus.txt"
        print(this_host().line())
        print(f"writing a {size_mb} MB corpus to {corpus_path} ...", flush=True)
        corpus_bytes = write_corpus(corpus_path, size_mb)

        print(f"tiktoken encode_ordinary_batch, {threads} threads ...", flush=True)
        tiktoken_s, tiktoken_tokens = tiktoken_seconds(corpus_path, threads)
        print(f"data.load_corpus, {threads} threads, in a fresh process ...", flush=True)
        cache_dir = TRAINING.under(tmp / "out").cache_dir  # where the trainer below looks for the token file
        ours = load_corpus_in_fresh_process(corpus_path, cache_dir, threads)
        token_file_mb = ours["n_tokens"] * 2 / MB
        print(f"training the tiny preset for {steps} steps on the token file, sampling its memory ...", flush=True)
        evict_from_page_cache(cache_dir)
        memory = train_and_sample_memory(corpus_path, tmp / "out", steps)

    tiktoken_rate = corpus_bytes / MB / tiktoken_s
    ours_rate = corpus_bytes / MB / ours["seconds"]
    print()
    print(f"corpus: {corpus_bytes / MB:,.0f} MB of text, {ours['n_tokens']:,} tokens "
          f"({token_file_mb:,.0f} MB token file); {threads} threads on {data.available_cpus()} CPUs")
    print(f"{'':34}{'seconds':>9}{'MB/s':>9}{'Mtok/s':>9}")
    print(f"{'tiktoken encode_ordinary_batch':34}{tiktoken_s:9.1f}{tiktoken_rate:9.1f}"
          f"{tiktoken_tokens / 1e6 / tiktoken_s:9.2f}")
    print(f"{'load_corpus (end to end)':34}{ours['seconds']:9.1f}{ours_rate:9.1f}"
          f"{ours['n_tokens'] / 1e6 / ours['seconds']:9.2f}")
    print(f"  of which hashing the corpus for the cache key: {ours['hash_seconds']:.1f} s")
    print(f"same token count as tiktoken: {ours['n_tokens'] == tiktoken_tokens}")
    print(f"peak resident memory while tokenizing: {ours['peak_rss_mb']:,.0f} MB "
          f"(corpus {corpus_bytes / MB:,.0f} MB)")
    first, last = memory["first"], memory["last"]
    print(f"trainer memory, peak over the first third of {steps} steps -> over the last third "
          f"({memory['n_samples']} samples): resident {first['rss']:,.0f} -> {last['rss']:,.0f} MB, "
          f"of which anonymous {first['anon']:,.0f} -> {last['anon']:,.0f} MB and token-file pages "
          f"{first['file']:,.0f} -> {last['file']:,.0f} MB")
    print(f"read from storage by the trainer over its {steps} steps: {memory['storage_read_mb']:,.1f} MB of the "
          f"{token_file_mb:,.0f} MB token file (evicted from the page cache before training)")
    ratio = ours_rate / tiktoken_rate
    print(f"throughput ratio load_corpus / tiktoken: {ratio:.2f}")
    return ratio


def main(argv: list[str] | None = None) -> float:
    parser = CommandLineParser(__doc__)
    parser.add_argument("--size-mb", type=int, default=300, help="size of the generated corpus (default 300)")
    parser.add_argument("--steps", type=int, default=60, help="training steps while memory is sampled (default 60)")
    parser.add_argument("--threads", type=int, default=data.available_cpus(), help="tokenizer threads (default: all CPUs)")
    parser.add_argument("--quick", action="store_true", help="30 MB and 30 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mb, args.steps = 30, 30
    return run_benchmark(args.size_mb, args.steps, args.threads)


if __name__ == "__main__":
    run_cli(main)
