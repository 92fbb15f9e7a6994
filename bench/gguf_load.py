"""Loading a .gguf: ours (`load_pretrained`: the file parsed once) against transformers' GGUF loader (the model and
the tokenizer, each `from_pretrained(..., gguf_file=...)`, as `load_pretrained` did before).

    python -m bench.gguf_load                  # the built-in SmolLM2-135M-Instruct (Q4_1, 98 MB)
    python -m bench.gguf_load --gguf FILE      # any llama .gguf
    python -m bench.gguf_load --quick          # a tiny random model and a 1,024-token BPE, as q8_0 in a temporary folder

Both sides end with the same fp32 weights (checked after timing) and a fast tokenizer; ours also maps them to
the native names and builds its tokenizer record, which the reference leaves out.
"""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from bench.harness import median, parse_args, print_ratios, print_row, time_interleaved
from smollm135_model import PRESETS, SmoLM135_Model
from smolm135.data.shakespeare import shakespeare_text
from smolm135.errors import run_cli
from smolm135.interop.export_gguf import write_gguf
from smolm135.interop.pretrained import SMOLLM2_INSTRUCT, builtin_gguf_path, llama_state_dict_to_native, load_pretrained
from smolm135.runtime.probes import this_host
from smolm135.data.tokenizer import train_byte_level_bpe


def add_arguments(parser):
    parser.add_argument("--gguf", default=None, help=f"a llama .gguf file (default: the built-in {SMOLLM2_INSTRUCT})")


def tiny_gguf(folder: Path) -> Path:
    """The tiny rotary preset with a 1,024-token BPE learned from Shakespeare, as one q8_0 file."""
    tokenizer = train_byte_level_bpe([shakespeare_text()[:200_000]], 1024, "Shakespeare")
    torch.manual_seed(0)
    model = SmoLM135_Model(replace(PRESETS["tiny-rotary"], vocab_size=tokenizer.n_vocab))
    return write_gguf(model, tokenizer, folder / "tiny-q8_0.gguf", "q8_0", "tiny")


def main(argv=None) -> dict[str, float]:
    args = parse_args(__doc__, argv, add_arguments)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(this_host().line())
    with tempfile.TemporaryDirectory() as folder:
        path = tiny_gguf(Path(folder)) if args.quick else Path(args.gguf or builtin_gguf_path(SMOLLM2_INSTRUCT))
        loaded = {}

        def ours():
            loaded["ours"] = load_pretrained(str(path))

        def transformers_loader():
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                         local_files_only=True)
            AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
            loaded["transformers"] = model

        seconds = time_interleaved({"ours": ours, "transformers' GGUF loader": transformers_loader}, args.repeats,
                                   args.device)
        pretrained = loaded["ours"]
        theirs = llama_state_dict_to_native(dict(loaded["transformers"].state_dict()), pretrained.config, "transformers")
        same = all(torch.equal(tensor, theirs[name]) for name, tensor in pretrained.state_dict.items())
        print(f"loading {path.name} ({path.stat().st_size / 1e6:,.0f} MB), weights and tokenizer; the same fp32 "
              f"weights on both sides: {'yes' if same else 'NO'}")
    for label, values in seconds.items():
        print_row(label, values, "s")
    ratio = median(seconds["ours"]) / median(seconds["transformers' GGUF loader"])
    print_ratios("seconds", {"load": ratio}, "below 1: ours is faster")
    return {"load": ratio, "same_weights": same}


if __name__ == "__main__":
    run_cli(main)
