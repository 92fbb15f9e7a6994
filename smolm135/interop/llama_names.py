"""The one table between the native weight names and the Llama layout's: transformers' `LlamaForCausalLM` names
and llama.cpp's GGUF names. Importing a Llama model (smolm135/interop/pretrained.py) and exporting one
(smolm135/interop/export_llama.py, smolm135/interop/export_gguf.py) read the same rows, in opposite directions.

A native tensor is one or more Llama tensors stacked along dim 0: `qkv_proj` is q, k, v and `gate_up_proj` is
gate, up, in that order (the order in which the native layers split them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from smollm135_model import ModelConfig

from smolm135.errors import UserError


@dataclass(frozen=True)
class Part:
    llama: str  # transformers' name
    gguf: str  # llama.cpp's name
    rows: int  # rows of the native tensor this part takes


@dataclass(frozen=True)
class WeightName:
    native: str
    parts: tuple[Part, ...]


# llama.cpp's names of the token embedding and of an untied output head: a GGUF file is tied when it has no head.
GGUF_EMBEDDING = "token_embd.weight"
GGUF_OUTPUT = "output.weight"
# llama.cpp's name of a byte-level BPE tokenizer (tokenizer.ggml.model), and of the two pre-tokenizers our
# tokenizers use (tokenizer.ggml.pre): GPT-2's split alone, or SmolLM's, which splits digits one by one first.
GGUF_BYTE_LEVEL_BPE = "gpt2"
GGUF_GPT2_SPLIT, GGUF_SMOLLM_SPLIT = "gpt-2", "smollm"


def weight_names(cfg: ModelConfig) -> list[WeightName]:
    """Every native weight of a rotary model with the Llama and GGUF tensors it is made of (the output head
    only when it is not tied to the embedding)."""
    q_rows, kv_rows = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    one = lambda native, llama, gguf, rows: WeightName(native, (Part(llama, gguf, rows),))  # noqa: E731
    names = [one("transformer.wte.weight", "model.embed_tokens.weight", GGUF_EMBEDDING, cfg.vocab_size)]
    for i in range(cfg.n_layer):
        ours, hf, blk = f"transformer.h.{i}.", f"model.layers.{i}.", f"blk.{i}."
        names += [
            one(ours + "attn_norm.weight", hf + "input_layernorm.weight", blk + "attn_norm.weight", cfg.n_embd),
            WeightName(ours + "attn.qkv_proj.weight", (
                Part(hf + "self_attn.q_proj.weight", blk + "attn_q.weight", q_rows),
                Part(hf + "self_attn.k_proj.weight", blk + "attn_k.weight", kv_rows),
                Part(hf + "self_attn.v_proj.weight", blk + "attn_v.weight", kv_rows))),
            one(ours + "attn.o_proj.weight", hf + "self_attn.o_proj.weight", blk + "attn_output.weight", cfg.n_embd),
            one(ours + "mlp_norm.weight", hf + "post_attention_layernorm.weight", blk + "ffn_norm.weight",
                cfg.n_embd),
            WeightName(ours + "mlp.gate_up_proj.weight", (
                Part(hf + "mlp.gate_proj.weight", blk + "ffn_gate.weight", cfg.intermediate_size),
                Part(hf + "mlp.up_proj.weight", blk + "ffn_up.weight", cfg.intermediate_size))),
            one(ours + "mlp.down_proj.weight", hf + "mlp.down_proj.weight", blk + "ffn_down.weight", cfg.n_embd),
        ]
    names.append(one("transformer.ln_f.weight", "model.norm.weight", "output_norm.weight", cfg.n_embd))
    if not cfg.tie_word_embeddings:
        names.append(one("lm_head.weight", "lm_head.weight", GGUF_OUTPUT, cfg.vocab_size))
    return names


def native_to_parts(native_state: dict, cfg: ModelConfig) -> list[tuple[Part, torch.Tensor]]:
    """Each Llama/GGUF tensor of the native state dict, in table order (views, no copies)."""
    out = []
    for name in weight_names(cfg):
        pieces = native_state[name.native].split([part.rows for part in name.parts])
        out += list(zip(name.parts, pieces))
    return out


def native_to_llama(native_state: dict, cfg: ModelConfig) -> dict:
    """Native names -> LlamaForCausalLM names, q/k/v and gate/up split apart (contiguous copies)."""
    return {part.llama: tensor.contiguous() for part, tensor in native_to_parts(native_state, cfg)}


def llama_to_native(take, cfg: ModelConfig) -> dict:
    """LlamaForCausalLM names -> native names; `take(llama_name)` returns (and consumes) one tensor.
    The tied output head is the embedding itself, as the native model ties them."""
    native = {name.native: torch.cat([take(part.llama) for part in name.parts]) if len(name.parts) > 1
              else take(name.parts[0].llama) for name in weight_names(cfg)}
    if cfg.tie_word_embeddings:
        native["lm_head.weight"] = native["transformer.wte.weight"]
    return native


def gguf_to_llama_names(cfg: ModelConfig) -> dict[str, str]:
    """llama.cpp's tensor names -> transformers', for the tensors `cfg` has."""
    return {part.gguf: part.llama for name in weight_names(cfg) for part in name.parts}


# llama.cpp rotates interleaved pairs (x0, x1), (x2, x3), ... of each head where transformers rotates its two
# halves against each other; its converter permutes the rows of q and k to match, and a reader permutes back.

def llama_cpp_rotated_heads(gguf_name: str, cfg: ModelConfig) -> int | None:
    """How many heads' rows llama.cpp permutes in this tensor (q: the query heads, k: the key heads), or None."""
    if gguf_name.endswith("attn_q.weight"):
        return cfg.n_head
    if gguf_name.endswith("attn_k.weight"):
        return cfg.n_kv_head
    return None


def permute_for_llama_cpp(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(heads * hs, in) in Hugging Face's rotate-half order -> llama.cpp's interleaved pairs, per head."""
    return (weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def permute_from_llama_cpp(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `permute_for_llama_cpp`: llama.cpp's interleaved pairs -> rotate-half order."""
    return (weight.reshape(n_heads, weight.shape[0] // n_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def check_rotary(cfg: ModelConfig, what: str) -> None:
    """Only rotary models have the Llama layout; learned positions have no place in it."""
    if cfg.position_embedding != "rotary":
        raise UserError(f"{what} needs a model with rotary positions (the Llama layout), and this one has "
                        f"{cfg.position_embedding} position embeddings: train with --preset tiny-rotary, "
                        f"smollm2-135m or smollm-135m (or --init-from a SmolLM model) to get one")
