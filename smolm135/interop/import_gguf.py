"""A llama.cpp GGUF file of the llama architecture -> a Llama config, transformers-named fp32 tensors and the
model's byte-level BPE tokenizer.

transformers' GGUF loader reads the same file, but parses its metadata three times (for the config, the weights
and the tokenizer), and that metadata is mostly the vocabulary: for SmolLM2's 49,152 tokens and their merges,
about 5 s per parse on 2 cores of an AMD EPYC (bench/README.md, host B: loading the built-in GGUF). Here the
file is parsed once; the `gguf` package dequantizes each tensor (the same function transformers calls), the
rows of q and k go back from llama.cpp's rotary order to transformers' (smolm135/interop/llama_names.py), and the
tokenizer is the inverse of what smolm135/interop/export_gguf.py writes: llama.cpp's token list, merges and token
types back into a `tokenizer.json`.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from smollm135_model import ModelConfig

from smolm135.errors import UserError, is_int, is_number
from smolm135.interop.llama_names import (
    GGUF_BYTE_LEVEL_BPE,
    GGUF_EMBEDDING,
    GGUF_OUTPUT,
    GGUF_SMOLLM_SPLIT,
    gguf_to_llama_names,
    llama_cpp_rotated_heads,
    permute_from_llama_cpp,
)
from smolm135.data.tokenizer import JsonTokenizer, byte_level_spelling


def open_gguf(path: Path):
    """The file's reader; a truncated, corrupt or non-llama file gets one line here instead of a traceback
    from deep inside the parser."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF signature)")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    except (ValueError, IndexError, KeyError, OSError, EOFError) as error:
        raise UserError(f"{path} is corrupt or truncated ({type(error).__name__}): download or copy it again")
    if end > path.stat().st_size:
        raise UserError(f"{path} is truncated ({path.stat().st_size:,} of {end:,} bytes): download or copy it again")
    architecture = field_value(reader, "general.architecture")
    if architecture is not None and architecture != "llama":
        raise UserError(f"{path} holds a {architecture!r} model, and only the Llama layout maps onto this architecture")
    return reader


def field_value(reader, key: str, default=None):
    """One scalar or string of the file's metadata (`default` when the file does not have it)."""
    field = reader.fields.get(key)
    if field is None or not field.data:
        return default
    value = field.parts[field.data[0]]
    if value.dtype == np.uint8 and len(field.types) == 1 and field.types[0].name == "STRING":
        return bytes(value).decode("utf-8", "replace")
    return value[0].item()


def llama_config(reader, path: Path):
    """The file's llama.* metadata as the attributes of a transformers LlamaConfig, for the checks and the
    mapping that a Hugging Face folder's config goes through (smolm135/interop/pretrained.py)."""
    def need(key: str, kind: type = int, default=None):
        value = field_value(reader, f"llama.{key}", default)
        if value is None:
            raise UserError(f"{path} lacks the metadata llama.{key}: it was not written by a llama.cpp converter")
        if not ((is_int(value) and value > 0) if kind is int else is_number(value)):
            wanted = "a positive whole number" if kind is int else "a number"
            raise UserError(f"{path} has llama.{key} = {value!r}, not {wanted}: the file is damaged")
        return value

    heads, hidden = need("attention.head_count"), need("embedding_length")
    head_dim = need("attention.key_length", default=hidden // heads or 1)
    rope_type = field_value(reader, "llama.rope.scaling.type", "none")
    embedding = next((t for t in reader.tensors if t.name == GGUF_EMBEDDING), None)
    if embedding is None:
        raise UserError(f"{path} holds no token embedding ({GGUF_EMBEDDING}): it is not a complete model")
    return SimpleNamespace(
        model_type="llama", hidden_act="silu", attention_bias=False, mlp_bias=False,
        hidden_size=hidden, num_attention_heads=heads, head_dim=head_dim,
        num_key_value_heads=need("attention.head_count_kv", default=heads),
        num_hidden_layers=need("block_count"), intermediate_size=need("feed_forward_length"),
        max_position_embeddings=need("context_length"), vocab_size=int(embedding.shape[-1]),
        rms_norm_eps=need("attention.layer_norm_rms_epsilon", float), initializer_range=0.02,
        tie_word_embeddings=not any(t.name == GGUF_OUTPUT for t in reader.tensors),
        rope_parameters={"rope_type": "default" if rope_type == "none" else rope_type,
                         "rope_theta": need("rope.freq_base", float, default=10_000.0),
                         "partial_rotary_factor": need("rope.dimension_count", default=head_dim) / head_dim},
    )


def stored_parameters(reader) -> int:
    """How many numbers the file's tensors hold (read from their headers: nothing is dequantized)."""
    return sum(int(tensor.n_elements) for tensor in reader.tensors)


def llama_tensors(reader, cfg: ModelConfig, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor dequantized to fp32 under transformers' name (one not in the Llama layout keeps its own,
    for the caller to refuse), q and k in transformers' rotary order."""
    from gguf import dequantize

    names = gguf_to_llama_names(cfg)
    tensors = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dimensions fastest first
        try:  # a copy: an fp32 tensor's array is a view of the read-only file mapping
            values = np.array(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            weight = torch.from_numpy(values).reshape(shape)
        except NotImplementedError:
            raise UserError(f"{path} stores {tensor.name} as {tensor.tensor_type.name}, which the installed gguf "
                            f"package cannot dequantize: pip install --upgrade gguf") from None
        except (ValueError, RuntimeError) as error:
            raise UserError(f"{path}: the tensor {tensor.name} does not fit the shape {shape} its header gives "
                            f"({type(error).__name__}): the file is damaged") from None
        heads = llama_cpp_rotated_heads(tensor.name, cfg)
        tensors[names.get(tensor.name, tensor.name)] = permute_from_llama_cpp(weight, heads) if heads else weight
    return tensors


# ------------------------------------------------------------------ the tokenizer


def string_list(reader, key: str) -> list[str]:
    """An array of strings of the file's metadata ([] when the file does not have it)."""
    field = reader.fields.get(key)
    return [] if field is None else [bytes(field.parts[i]).decode("utf-8", "replace") for i in field.data]


def gguf_tokenizer(reader, path: Path) -> JsonTokenizer:
    """The file's byte-level BPE (`tokenizer.ggml.model` gpt2, as SmolLM's and every tokenizer we write) as a
    tokenizer.json: its tokens in id order, its merges, GPT-2's byte-level split (after digits one by one for
    the `smollm` pre-tokenizer, as SmolLM's own tokenizer.json and llama.cpp split; transformers' GGUF loader
    leaves that step out, and so cuts whitespace before a digit differently), its control tokens special and
    its user-defined ones matched whole, and its end, start and chat template."""
    from gguf import Keys, TokenType
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    model = field_value(reader, Keys.Tokenizer.MODEL)
    tokens = string_list(reader, Keys.Tokenizer.LIST)
    if model != GGUF_BYTE_LEVEL_BPE or not tokens:
        raise UserError(f"{path} holds a {model or 'missing'} tokenizer; only byte-level BPE (gpt2, as SmolLM's) "
                        f"is read: convert the model from its Hugging Face folder instead")
    field = reader.fields.get(Keys.Tokenizer.TOKEN_TYPE)
    types = [int(field.parts[i][0]) for i in field.data] if field is not None else [TokenType.NORMAL] * len(tokens)
    # a token outside the byte alphabet is spelled as its UTF-8 bytes, as the BPE model stores them
    spell = byte_level_spelling()
    alphabet = set(spell.values())
    vocab = {token if set(token) <= alphabet else "".join(spell[b] for b in token.encode("utf-8")): index
             for index, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ", 1)) for merge in string_list(reader, Keys.Tokenizer.MERGES)]
    backend = Tokenizer(models.BPE(vocab, merges))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                             if field_value(reader, Keys.Tokenizer.PRE) == GGUF_SMOLLM_SPLIT else byte_level)
    backend.decoder = decoders.ByteLevel()
    # as our writer types added tokens: special ones CONTROL, the others (matched whole) USER_DEFINED
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True) for token, token_type
                                in zip(tokens, types) if token_type == TokenType.CONTROL and set(token) <= alphabet])
    backend.add_tokens([AddedToken(token, normalized=False, special=False)
                        for token, token_type in zip(tokens, types) if token_type == TokenType.USER_DEFINED])

    def token(key: str) -> str | None:
        index = field_value(reader, key)
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    return JsonTokenizer(backend.to_str(), eos_token=token(Keys.Tokenizer.EOS_ID),
                         bos_token=token(Keys.Tokenizer.BOS_ID),
                         chat_template=field_value(reader, Keys.Tokenizer.CHAT_TEMPLATE))
