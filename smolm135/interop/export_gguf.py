"""A rotary model as one GGUF file (llama architecture) for llama.cpp, ollama and transformers' GGUF loader.

Written through the `gguf` package's GGUFWriter and quantizer; no byte of the format is spelled here. The
tensors are the Llama layout's (smolm135/interop/llama_names.py) with q and k permuted to llama.cpp's rotary
convention (its converter's `permute`; transformers' GGUF loader undoes it). The tokenizer goes in as llama.cpp
describes a byte-level BPE: tokens, token types and merges, with the pre-tokenizer "gpt-2" for GPT-2's and
"smollm" for SmolLM's (as the SmolLM2 GGUF files describe theirs).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from smollm135_model import SmoLM135_Model

from smolm135.errors import UserError
from smolm135.runtime.fresh_process import run_fresh
from smolm135.interop.llama_names import (
    GGUF_BYTE_LEVEL_BPE,
    GGUF_GPT2_SPLIT,
    GGUF_SMOLLM_SPLIT,
    check_rotary,
    llama_cpp_rotated_heads,
    native_to_parts,
    permute_for_llama_cpp,
)
from smolm135.data.tokenizer import END_OF_TEXT, JsonTokenizer, gpt2_bpe_files, start_token_id

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# Max abs logit difference to the native fp32 model, as a fraction of the native logits' largest magnitude:
# f32 is the same arithmetic (the absolute 1e-4 of every export applies); f16 and bf16 round each weight to
# 11 and 8 significant bits, q8_0 stores blocks of 32 weights as 8-bit integers and one f16 scale.
RELATIVE_TOLERANCE = {"f32": 0.0, "f16": 0.01, "bf16": 0.05, "q8_0": 0.05}
GREEDY_STEPS = 16  # tokens greedy decoding must reproduce, up to near ties
GREEDY_CHECKED_TYPES = ("f32", "q8_0")  # greedy tokens are checked at these; f16 and bf16 by their logits


def gguf_file_name(folder_name: str, gguf_type: str) -> str:
    return f"{folder_name}-{gguf_type}.gguf"


# ------------------------------------------------------------------ tensors


def _encode(data: np.ndarray, gguf_type: str):
    """(array to write, its GGML type) for one fp32 tensor; norms (1-D) and rows that do not fill q8_0 blocks
    stay fp32, as llama.cpp's converter keeps them."""
    from gguf import GGMLQuantizationType, quants

    if data.ndim == 1 or gguf_type == "f32":
        return data, GGMLQuantizationType.F32
    if gguf_type == "f16":
        return data.astype(np.float16), GGMLQuantizationType.F16
    kind = GGMLQuantizationType.BF16 if gguf_type == "bf16" else GGMLQuantizationType.Q8_0
    if kind == GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
        return data.astype(np.float16), GGMLQuantizationType.F16
    return quants.quantize(data, kind), kind


# ------------------------------------------------------------------ tokenizer


def gpt2_vocabulary() -> tuple[list[str], list[str]]:
    """(tokens in id order, merges "a b") of GPT-2's BPE, from the offline files."""
    encoder_json, vocab_bpe = gpt2_bpe_files()
    encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    tokens = [token for token, _ in sorted(encoder.items(), key=lambda item: item[1])]
    merges = [line for line in vocab_bpe.read_text(encoding="utf-8").splitlines()[1:] if line]  # after #version
    return tokens, merges


def json_vocabulary(tokenizer: JsonTokenizer) -> tuple[list[str], list[str], str, dict[int, bool]]:
    """(tokens, merges, pre-tokenizer name, {added token id: special?}) of a byte-level BPE tokenizer.json;
    UserError for another kind."""
    data = json.loads(tokenizer.tokenizer_json)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"GGUF export takes byte-level BPE tokenizers, and this model's is {model.get('type')!r}")
    added = {token["id"]: bool(token.get("special")) for token in data.get("added_tokens", [])}
    vocab = dict(model["vocab"]) | {token["content"]: token["id"] for token in data.get("added_tokens", [])}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = json.dumps(data.get("pre_tokenizer"))
    # SmolLM splits digits one by one before the byte-level split: llama.cpp calls that pre-tokenizer "smollm"
    return tokens, merges, GGUF_SMOLLM_SPLIT if '"Digits"' in pre else GGUF_GPT2_SPLIT, added


def add_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    from gguf import TokenType

    if isinstance(tokenizer, JsonTokenizer):
        tokens, merges, pre, added = json_vocabulary(tokenizer)
        bos, eos = start_token_id(tokenizer), tokenizer.eos_token_id
        if tokenizer.chat_template:
            writer.add_chat_template(tokenizer.chat_template)
    else:
        tokens, merges, pre = *gpt2_vocabulary(), GGUF_GPT2_SPLIT
        bos = eos = tokens.index(END_OF_TEXT)
        added = {eos: True}
    # As llama.cpp's converter types them: an added token is matched whole in text, never built by merges;
    # a special one (chat markers, end of text) only where the caller parses special tokens.
    kinds = {True: TokenType.CONTROL, False: TokenType.USER_DEFINED}
    types = [kinds[added[i]] if i in added else TokenType.NORMAL for i in range(len(tokens))]
    # the embedding's padding rows get tokens no text produces, as llama.cpp's converter names them
    tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
    types += [TokenType.UNUSED] * (vocab_size - len(types))
    writer.add_tokenizer_model(GGUF_BYTE_LEVEL_BPE)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_pad_token_id(eos)
    writer.add_add_bos_token(False)


# ------------------------------------------------------------------ the file


def write_gguf(native: SmoLM135_Model, tokenizer, path: Path, gguf_type: str, name: str) -> Path:
    """One .gguf file of the model at `gguf_type` (one of GGUF_TYPES)."""
    from gguf import GGUFWriter, LlamaFileType

    cfg = native.config
    check_rotary(cfg, "GGUF export")
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(cfg.block_size)
    writer.add_embedding_length(cfg.n_embd)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.n_kv_head)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type({"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
                          "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}[gguf_type])
    add_tokenizer(writer, tokenizer, cfg.vocab_size)
    state = {k: v.detach().float() for k, v in native.state_dict().items()}
    for part, tensor in native_to_parts(state, cfg):
        heads = llama_cpp_rotated_heads(part.gguf, cfg)
        if heads:
            tensor = permute_for_llama_cpp(tensor, heads)
        data, kind = _encode(tensor.contiguous().numpy(), gguf_type)
        writer.add_tensor(part.gguf, data, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ------------------------------------------------------------------ the check: transformers' GGUF loader

_RELOAD_SCRIPT = r"""
import sys, traceback, torch
from transformers import AutoModelForCausalLM
out_path, folder, ids, *names = sys.argv[1:]
ids = torch.tensor([[int(i) for i in ids.split(",")]])
results = {}
for name in names:
    print(f"reading {name}", file=sys.stderr, flush=True)  # the last one named is the one that crashed
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
        with torch.no_grad():
            results[name] = {"logits": model(ids).logits[0]}
    except Exception as error:  # one unreadable file is that file's failure: the others are still checked
        results[name] = {"error": " ".join(traceback.format_exception_only(error)[-1].split())}  # one line
torch.save(results, out_path)
"""


def reload_gguf(paths: list[Path], input_ids: list[int]) -> dict[str, dict]:
    """For each file (all in one folder), {"logits": its (T, V) logits for `input_ids`} from transformers' GGUF
    loader, or {"error": why it did not load}, from one new process (starting one and importing transformers
    takes longer than reading a small model)."""
    def failure(output: list[str]) -> str:
        failed = next((line.split(" ", 1)[1] for line in reversed(output) if line.startswith("reading ")),
                      paths[0].name)
        return f"{paths[0].parent / failed} did not load through transformers' GGUF loader"

    return run_fresh(_RELOAD_SCRIPT, [str(paths[0].parent.resolve()), ",".join(map(str, input_ids)),
                                      *(p.name for p in paths)], failure)


# ------------------------------------------------------------------ greedy tokens, up to rounding


def native_greedy(native: SmoLM135_Model, input_ids: list[int], steps: int = GREEDY_STEPS) -> list[int]:
    ids = torch.tensor([input_ids])
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = native(ids)  # (1, T, V): recomputed in full, the plainest reference
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(input_ids):].tolist()


def greedy_departures(native_rows: torch.Tensor, chosen: list[int], limit: float) -> list[tuple[int, float]]:
    """The steps at which another runtime's greedy token is not the native model's, beyond rounding: (step, how
    far below the native best the native model scores that token) wherever that is more than `limit`, the
    type's logit limit.

    `native_rows` (steps, V) are the native logits each token was chosen from and `chosen` the runtime's
    choices from the same prefixes (both teacher-forced on one continuation, so a step's choice does not
    depend on an earlier one). Where the native model's two best are closer than the rounding of a type, a
    rounded copy may rightly pick the second (a fine-tuned SmolLM2-135M had 32.215 against 32.189, its q8_0
    logits within 0.63 of them): such a near tie is no departure; any other token is."""
    rows = native_rows.float()
    shortfall = rows.max(dim=-1).values - rows[torch.arange(len(chosen)), torch.tensor(chosen)]  # (steps,)
    return [(step, gap) for step, gap in enumerate(shortfall.tolist()) if gap > limit]
