"""smolm135: the architecture, in one file.

A GPT-style decoder: a token embedding, positions either learned (an embedding added to the tokens, as the
seed) or rotary (queries and keys rotated inside attention, as Llama and SmolLM), `n_layer` pre-norm blocks
of causal self-attention (through `scaled_dot_product_attention`, i.e. flash attention where the hardware
has it) and a SwiGLU MLP, a final RMSNorm, and an output head tied to the token embedding. With rotary
positions, grouped-query attention and the 49,152-token vocabulary this is the Llama layout of SmolLM-135M
and SmolLM2-135M, whose weights load unchanged apart from fusing q/k/v and gate/up (smolm135/interop/pretrained.py).

Notebook usage, as in the original recipe:

    from smollm135_model import SmoLM135_Model, config
    model = SmoLM135_Model(config)
    model.load_state_dict(torch.load(path)['model_state_dict'])
    model.generate(input_ids, max_length=100, temperature=0.7)   # prompt + continuation

Every other file of the project imports its layers from here; none re-implements one.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# GPT-2's BPE has 50,257 tokens; the last, <|endoftext|>, separates texts, so it is also what a text starts
# from (the tokenizer's bos, eos and pad token). Both numbers live here because an exported folder's code may
# import only this file; the tokenizer module builds its encoding from them. Padding the embedding to a
# multiple of 64 keeps the output matmul on fast tensor-core tile sizes; the 47 extra rows are never produced
# by the tokenizer.
GPT2_VOCAB_SIZE = 50257
GPT2_END_OF_TEXT_ID = 50256
VOCAB_PADDING_MULTIPLE = 64


# How a model knows where a token is: "learned" adds a trained (block_size, n_embd) embedding to the tokens;
# "rotary" (RoPE, Su et al. 2021) rotates each query and key by angles proportional to its position.
POSITION_EMBEDDINGS = ("learned", "rotary")


def padded_vocab_size(n_tokens: int, multiple: int = VOCAB_PADDING_MULTIPLE) -> int:
    return ((n_tokens + multiple - 1) // multiple) * multiple


def vocab_size_for(n_tokens: int, vocab_size: int) -> int:
    """The embedding rows a model of `vocab_size` rows needs once its vocabulary holds `n_tokens`: as many as it
    has where they fit (GPT-2's padding rows hold 47 more tokens), else `n_tokens` padded as a preset's are."""
    return vocab_size if n_tokens <= vocab_size else padded_vocab_size(n_tokens)


def known_fields(dataclass_type, values: dict) -> dict:
    """The entries of `values` that name a field of `dataclass_type`. A file written by another version of
    the code may hold fields this one does not know (they are left out) or lack some (defaults fill them)."""
    names = {f.name for f in fields(dataclass_type)}
    return {key: value for key, value in values.items() if key in names}


@dataclass(frozen=True)
class ModelConfig:
    """Every architectural choice, as plain data (it is stored inside every checkpoint)."""

    vocab_size: int = padded_vocab_size(GPT2_VOCAB_SIZE)  # 50,304
    block_size: int = 2048  # context length (with learned positions: rows of the position embedding)
    n_layer: int = 30
    n_head: int = 9  # head dim = n_embd / n_head = 64
    n_kv_head: int | None = None  # grouped-query attention; None means n_head (3 gives SmolLM-135M's layout)
    n_embd: int = 576
    intermediate_size: int = 1536  # SwiGLU hidden width
    norm_eps: float = 1e-5
    init_std: float = 0.02
    tie_word_embeddings: bool = True
    # Checkpoints written before this field existed hold no value for it: they load as "learned", which
    # is what they are.
    position_embedding: str = "learned"  # one of POSITION_EMBEDDINGS
    rope_theta: float = 10_000.0  # rotary base: the slowest pair of dimensions turns once per 2*pi*theta tokens

    def __post_init__(self):
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> list[str]:
        """Problems with this config, as sentences (empty when it is usable)."""
        problems = []
        for field in ("vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "intermediate_size"):
            if getattr(self, field) <= 0:
                problems.append(f"{field} must be positive, got {getattr(self, field)}")
        if not problems and self.n_embd % self.n_head:
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not problems and self.n_head % self.n_kv_head:
            problems.append(f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            problems.append(f"position_embedding must be one of {', '.join(POSITION_EMBEDDINGS)}, "
                            f"got {self.position_embedding!r}")
        elif self.position_embedding == "rotary" and not problems and (self.head_dim % 2 or self.rope_theta <= 0):
            problems.append(f"rotary positions need an even head dimension (got {self.head_dim}) "
                            f"and a positive rope_theta (got {self.rope_theta})")
        return problems

    def to_dict(self) -> dict:
        return asdict(self)

    def differences(self, other: "ModelConfig") -> list[str]:
        """The fields in which `other` differs, as "name self vs other" phrases (empty when identical)."""
        return [f"{f.name} {getattr(self, f.name)} vs {getattr(other, f.name)}" for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)]

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return cls(**known_fields(cls, data))


# The SmolLM family (Hugging Face, 2024): the Llama layout at 135M parameters, with a 49,152-token BPE
# vocabulary (already a multiple of 64), 3 key/value heads shared by 9 query heads, and rotary positions.
SMOLLM_135M_LAYOUT = dict(vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, n_embd=576, intermediate_size=1536,
                          norm_eps=1e-5, tie_word_embeddings=True, position_embedding="rotary")

# Presets are data, not if-chains. `smolm135` is the seed model (about 149.6M parameters, see the README for
# why not 135M); `tiny` shares the tokenizer and layout and trains at thousands of tokens/s on 2 CPU cores,
# and `tiny-rotary` is its rotary, grouped-query twin. `smollm2-135m` and `smollm-135m` are the published
# SmolLM2-135M and SmolLM-135M (134,515,008 parameters each; they differ in context and rotary base).
PRESETS: dict[str, ModelConfig] = {
    "smolm135": ModelConfig(),
    "smolm135-gqa": ModelConfig(n_kv_head=3),  # SmolLM-135M's attention layout: about 136.4M parameters
    "tiny": ModelConfig(block_size=512, n_layer=4, n_head=4, n_embd=128, intermediate_size=384),
    "tiny-rotary": ModelConfig(block_size=512, n_layer=4, n_head=4, n_kv_head=2, n_embd=128, intermediate_size=384,
                               position_embedding="rotary"),
    # From scratch on 2 CPU cores in minutes (bench/README.md, "From scratch on a CPU"): a 4,096-token vocabulary,
    # which the trainer fills with a BPE learned from the corpus (GPT-2's 50,304 would make the output layer
    # cost several times the blocks), 64-dimensional heads, and a context of the 128 tokens it trains on.
    "cpu-scratch": ModelConfig(block_size=128, vocab_size=4096, n_layer=4, n_head=4, n_embd=256,
                               intermediate_size=768),
    "smollm2-135m": ModelConfig(**SMOLLM_135M_LAYOUT, block_size=8192, rope_theta=100_000.0),
    "smollm-135m": ModelConfig(**SMOLLM_135M_LAYOUT, block_size=2048, rope_theta=10_000.0),
}

# The seed's notebooks do `from smollm135_model import SmoLM135_Model, config`.
config = PRESETS["smolm135"]


# ---------------------------------------------------------------- equal computations, chosen per host

# Up to this many rows (batch x new tokens: decoding), a CPU product may go through `few_row_linear`.
FEW_ROWS = 4
# Up to this sequence length, bf16 attention on a CPU may run as two matmuls instead of SDPA's flash kernel.
# On 2 cores of an AMD EPYC with AVX512-BF16, forward and backward took 35 instead of 69 ms per layer at
# 32 x 9 heads x 128 x 64 (at 256 the flash kernel was ahead again). The price is the (T, T) probabilities
# kept for the backward pass, about 28 MB per layer at 32 x 128, where the flash kernel keeps none.
MATMUL_ATTENTION_MAX_LENGTH = 128
# Rows of hidden states whose logits `linear_cross_entropy` computes at once: about 256 MB of fp32 logits
# at the 50,304-token vocabulary, instead of the whole (B*T, V) matrix (824 MB at 32 x 128, 6.6 GB at
# 16 x 2048) and the two more of its size that log-softmax and its gradient allocate.
LOSS_CHUNK_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class CpuKernels:
    """Which of two ways of computing the same values the model takes on a CPU. Which one is faster
    depends on the processor and its BLAS (the split product below doubled decoding speed on one 2-core
    host and halved it on another), so the defaults are the plain ways, and `smolm135/runtime/probes.py` turns an
    alternative on where a short measurement on the running host shows it faster."""

    split_products: bool = False  # products of up to FEW_ROWS rows (decoding) through few_row_linear
    decode_attention_by_matmuls: bool = False  # one-query steps attended by two matmuls instead of SDPA
    training_attention_by_matmuls: bool = False  # bf16 up to MATMUL_ATTENTION_MAX_LENGTH by two matmuls


def few_row_linear(x, weight):
    """x (..., in) @ weight.T for a few rows, as one batched matmul of weight's two halves of outputs.

    Decoding is reading every weight once per token. Under some BLAS builds F.linear of a matrix and one to
    four rows runs a single-threaded matrix-vector kernel, while `bmm` of its two halves by the same rows
    reads the matrix with two threads. The same products, summed in the kernel's order: F.linear's values
    within rounding.
    """
    rows = x.reshape(-1, x.shape[-1])  # (R, in)
    halves = weight.view(2, weight.shape[0] // 2, weight.shape[1])  # (2, out/2, in)
    products = torch.bmm(halves, rows.t().expand(2, -1, -1))  # (2, out/2, R)
    return products.view(weight.shape[0], -1).t().reshape(*x.shape[:-1], weight.shape[0])  # (..., out)


class Linear(nn.Linear):
    """nn.Linear that can take `few_row_linear` for the few-row products of decoding on a CPU
    (`split_products`, set by `SmoLM135_Model.use_cpu_kernels`). Many rows (training, prompts) and
    autocast keep F.linear."""

    split_products = False

    def forward(self, x):
        if (
            self.split_products and x.device.type == "cpu" and x.dtype == self.weight.dtype
            and x.numel() <= FEW_ROWS * self.in_features and self.bias is None
            and self.out_features % 2 == 0 and self.weight.is_contiguous()
            and not torch.is_autocast_enabled("cpu")
        ):
            return few_row_linear(x, self.weight)
        return F.linear(x, self.weight, self.bias)


# ---------------------------------------------------------------- rotary positions


def rotary_cos_sin(position_ids, head_dim: int, theta: float):
    """position_ids (T,) or (B, T) -> (cos, sin), each (T, hs) or (B, 1, T, hs), in fp32.

    Dimension pair i turns by position * theta^(-2i/hs). The angles are computed in fp32 whatever the model's
    dtype (as transformers' Llama does), because a bf16 angle at position 8,000 is off by tens of radians.
    The pairs are (i, i + hs/2), the "rotate half" layout of Hugging Face Llama weights.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float, device=position_ids.device)
                                / head_dim))  # (hs/2,)
    angles = position_ids[..., None].float() * inv_freq  # (..., T, hs/2)
    angles = torch.cat((angles, angles), dim=-1)  # (..., T, hs)
    if angles.dim() == 3:
        angles = angles.unsqueeze(1)  # (B, 1, T, hs): the same angles for every head
    return angles.cos(), angles.sin()


def apply_rotary(x, cos, sin):
    """Rotate x (B, heads, T, hs) by the angles of `rotary_cos_sin`; cos and sin are cast to x's dtype."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    first, second = x.chunk(2, dim=-1)  # (B, heads, T, hs/2) each
    return x * cos + torch.cat((-second, first), dim=-1) * sin


# ---------------------------------------------------------------- the blocks

def causal_mask(query_length: int, key_length: int, device=None) -> torch.Tensor:
    """(T, S) boolean mask, True where a query may attend. The T queries are the *last* T of the S positions
    (bottom-right aligned: a cache holds the first S - T), so query i sees keys 0 .. S - T + i. SDPA's
    `is_causal` aligns the triangle top-left, which is the same only when T == S."""
    return torch.ones(query_length, key_length, dtype=torch.bool, device=device).tril(key_length - query_length)


def packed_positions_and_mask(document_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """document_ids (B, T), equal along each of the texts packed into a row -> (position_ids (B, T), attn_mask
    (B, 1, T, T)): positions restart at 0 where a text starts, and a query attends causally to its own
    text's keys only (a block-diagonal causal mask), so a packed text computes as it would alone."""
    B, T = document_ids.shape
    index = torch.arange(T, device=document_ids.device)  # (T,)
    starts = torch.ones_like(document_ids, dtype=torch.bool)  # (B, T): where a text starts
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    text_start = torch.where(starts, index, 0).cummax(dim=1).values  # (B, T): index of the own text's start
    same_text = document_ids[:, :, None] == document_ids[:, None, :]  # (B, T, T)
    return index - text_start, (same_text & causal_mask(T, T, document_ids.device))[:, None]


class CausalSelfAttention(nn.Module):
    # the equal alternatives to SDPA a CPU may take (see CpuKernels; off until a probe turns them on)
    decode_by_matmuls = False
    matmul_attention_max_length = 0

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        # q, k and v in one matmul: one kernel launch instead of three
        self.qkv_proj = Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=False)
        self.o_proj = Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)
        self.o_proj.is_residual_projection = True
        # True: every call takes `_attend_by_matmuls` (what transformers calls "eager" attention)
        self.always_attend_by_matmuls = False

    def forward(self, x, kv_cache: "KVCache | None" = None, layer_idx: int = 0, attn_mask=None, rotary=None):
        """x (B, T, C) -> (B, T, C). `rotary` is (cos, sin) from `rotary_cos_sin` for rotary models, else None."""
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1
        )
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        if rotary is not None:  # before the cache: cached keys keep the rotation of their own position
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        past_length = 0
        if kv_cache is not None:
            past_length = kv_cache.length
            k, v = kv_cache.update(layer_idx, k, v)  # (B, nkv, past + T, hs)
        if self.always_attend_by_matmuls or (x.device.type == "cpu" and ((T == 1 and self.decode_by_matmuls) or (
                q.dtype == torch.bfloat16 and attn_mask is None and past_length == 0
                and T <= self.matmul_attention_max_length))):
            # Asked for, or on a CPU where measured faster (CpuKernels): a decode step (one query: SDPA's flash
            # kernel may cost more to set up than this whole product), or bf16 training and prompts at short
            # lengths (see MATMUL_ATTENTION_MAX_LENGTH)
            y = self._attend_by_matmuls(q, k, v, attn_mask)  # (B, nh, T, hs)
            return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        if attn_mask is None and past_length and T > 1:
            # with a cache the queries are the last T positions: SDPA's top-left is_causal would be wrong
            attn_mask = causal_mask(T, past_length + T, x.device)  # (T, past + T)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_mask,
            is_causal=attn_mask is None and past_length == 0 and T > 1,
            enable_gqa=self.n_kv_head != self.n_head,
        )  # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def _attend_by_matmuls(self, q, k, v, attn_mask=None):
        """Attention as two matmuls with the softmax in fp32: q (B, nh, T, hs), k and v (B, nkv, S, hs) ->
        (B, nh, T, hs). `attn_mask` is SDPA's (B or 1, 1, T, S), boolean (True = attend) or additive; without
        one the T queries are the last T of the S positions, causally."""
        B, _, T, hs = q.shape
        S = k.shape[2]
        groups = self.n_head // self.n_kv_head  # query heads per kv head, as SDPA's enable_gqa pairs them
        q = q.view(B, self.n_kv_head, groups, T, hs)  # (B, nkv, g, T, hs)
        scores = torch.matmul(q, k.unsqueeze(2).transpose(-2, -1)) * hs ** -0.5  # (B, nkv, g, T, S)
        if attn_mask is None and T > 1:  # causal, bottom-right aligned (one last query sees every key)
            scores = scores.masked_fill(~causal_mask(T, S, q.device), float("-inf"))
        elif attn_mask is not None:
            mask = attn_mask.unsqueeze(2)  # (B or 1, 1, 1, T, S): the same for every head
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(probs, v.unsqueeze(2)).view(B, self.n_head, T, hs)  # (B, nh, T, hs)


class SwiGLUMLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # gate and up projections fused into one matmul; down_proj maps back to the residual stream
        self.gate_up_proj = Linear(cfg.n_embd, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.n_embd, bias=False)
        self.down_proj.is_residual_projection = True

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (B, T, I) each
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.mlp = SwiGLUMLP(cfg)

    def forward(self, x, kv_cache=None, layer_idx: int = 0, attn_mask=None, rotary=None):
        x = x + self.attn(self.attn_norm(x), kv_cache, layer_idx, attn_mask, rotary)
        return x + self.mlp(self.mlp_norm(x))


class KVCache:
    """Keys and values of every layer, preallocated for the whole generation so decoding never reallocates."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_length: int, device, dtype):
        shape = (cfg.n_layer, batch_size, cfg.n_kv_head, max_length, cfg.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.layers = list(zip(self.keys.unbind(0), self.values.unbind(0)))  # per-layer views, made once
        self.length = 0  # positions filled so far; advanced by the model after all layers have run

    def update(self, layer_idx: int, k, v):
        """Store k, v (B, nkv, T, hs) after the cached positions; -> every position's keys and values so far."""
        start, end = self.length, self.length + k.shape[2]
        keys, values = self.layers[layer_idx]  # (B, nkv, max_length, hs) each
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, :end], values[:, :, :end]


# ---------------------------------------------------------------- the training loss

def linear_cross_entropy(hidden, weight, targets, ignore_index: int = -100,
                         chunk_elements: int = LOSS_CHUNK_ELEMENTS):
    """Mean cross entropy of the logits `hidden @ weight.T` against `targets`, without ever holding all the
    logits: hidden (N, C), weight (V, C), targets (N,) -> scalar loss, equal to
    `F.cross_entropy(F.linear(hidden, weight).float(), targets, ignore_index=ignore_index)`.

    The gradients of `hidden` and `weight` are computed chunk by chunk in the same pass (softmax minus the
    one-hot target), so the backward pass only scales them: no logits are kept for it, nor recomputed.
    Under autocast the matmuls run in the autocast dtype and the softmax in fp32, as in the plain path.
    """
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk_elements)
    loss_sum, n_valid, _, _ = _linear_cross_entropy_sums(hidden, weight, targets, ignore_index, chunk_elements,
                                                         with_grads=False)
    return loss_sum / n_valid


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk_elements):
        loss_sum, n_valid, grad_hidden, grad_weight = _linear_cross_entropy_sums(
            hidden, weight, targets, ignore_index, chunk_elements, with_grads=True)
        ctx.save_for_backward(grad_hidden, grad_weight, n_valid)
        return loss_sum / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight, n_valid = ctx.saved_tensors
        scale = grad_loss / n_valid  # the mean's 1/N, applied once here rather than to every logit
        return grad_hidden * scale, grad_weight * scale, None, None, None


def _linear_cross_entropy_sums(hidden, weight, targets, ignore_index, chunk_elements, with_grads):
    """Sums over the rows whose target is not ignored: (loss, number of such rows, and with `with_grads`
    the gradients of that summed loss with respect to hidden and weight; else None, None)."""
    device_type = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    n_rows, vocab_size = hidden.shape[0], weight.shape[0]
    n_chunks = max(1, -(-n_rows * vocab_size // chunk_elements))
    chunk_rows = -(-n_rows // n_chunks)
    valid = targets != ignore_index  # (N,)
    row_weight = valid.float()  # (N,): ignored rows count 0 in the loss and its gradients
    safe_targets = targets.masked_fill(~valid, 0)[:, None]  # (N, 1): ignored rows point anywhere, weight 0
    loss_sum = hidden.new_zeros((), dtype=torch.float32)
    grad_hidden = torch.empty_like(hidden) if with_grads else None
    grad_weight = None
    with torch.autocast(device_type, enabled=False):  # the dtypes below are explicit
        w = weight.to(compute_dtype)  # (V, C)
        for start in range(0, n_rows, chunk_rows):
            rows = slice(start, start + chunk_rows)
            h = hidden[rows].to(compute_dtype)  # (n, C)
            logits = F.linear(h, w).float()  # (n, V)
            target_logits = logits.gather(1, safe_targets[rows]).squeeze(1)  # (n,)
            row_max = logits.amax(dim=-1, keepdim=True)  # (n, 1)
            exp = logits.sub_(row_max).exp_()  # (n, V), in place: the logits are not needed any more
            sum_exp = exp.sum(dim=-1)  # (n,)
            log_sum_exp = sum_exp.log() + row_max.squeeze(1)  # (n,)
            loss_sum += ((log_sum_exp - target_logits) * row_weight[rows]).sum()
            if not with_grads:
                continue
            # d loss_sum / d logits = softmax - one_hot(target) on counted rows, built in place in `exp`;
            # its values lie in [-1, 1], so the low-precision copy below loses no small ones to underflow
            grad_logits = exp.mul_((row_weight[rows] / sum_exp)[:, None])  # (n, V)
            grad_logits.scatter_add_(1, safe_targets[rows], -row_weight[rows, None])
            grad_logits = grad_logits.to(compute_dtype)
            grad_hidden[rows] = grad_logits @ w  # (n, C)
            if grad_weight is None:
                grad_weight = (grad_logits.t() @ h).to(weight.dtype)  # (V, C)
            elif compute_dtype == weight.dtype:
                grad_weight.addmm_(grad_logits.t(), h)  # accumulate inside the matmul: no extra pass
            else:
                grad_weight += grad_logits.t() @ h  # low-precision product, fp32 sum
    return loss_sum, valid.sum(), grad_hidden, grad_weight


# ---------------------------------------------------------------- the generation policy

@dataclass(frozen=True)
class Sampling:
    """How text is sampled unless the caller says otherwise: by `generate`, the trainer's samples, the demo's
    sliders and an exported model's `generation_config.json` alike.

    temperature 0.7 sharpens the distribution: a small base model spreads much of its probability over a long
    tail of unlikely tokens, and at 1.0 those draws derail the text; greedy decoding (0) repeats itself
    instead. top-k 50 (transformers' default top-k) cuts that tail off outright, whatever the vocabulary.
    top-p 0.95 (nucleus sampling, Holtzman et al. 2020) narrows further where the model is sure of the next
    token, yet leaves the choice open where it is not.
    """

    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.95


SAMPLING = Sampling()


def fit_to_context(prompt_length: int, max_new_tokens: int, context_length: int,
                   min_prompt_length: int | None = None) -> tuple[int, int]:
    """(prompt tokens kept, new tokens) so that prompt + continuation fit in `context_length` positions.

    The one rule: the prompt keeps its last tokens and loses its first ones as far as the new tokens need,
    but never goes below `min_prompt_length` (default half the context) or all of itself, if shorter; the
    new tokens then stop at the context. `generate` passes the whole prompt as that minimum, since it
    returns prompt + continuation and never cuts what it was given; the demo and the trainer's samples
    use the default.
    """
    floor = context_length // 2 if min_prompt_length is None else min_prompt_length
    kept = min(prompt_length, max(context_length - max_new_tokens, min(prompt_length, floor), 1))
    return kept, max(0, min(max_new_tokens, context_length - kept))


class SmoLM135_Model(nn.Module):
    def __init__(self, cfg: ModelConfig = config):
        super().__init__()
        problems = cfg.validate()
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))
        self.config = cfg
        self.gradient_checkpointing = False
        # how a checkpointed block is recomputed; transformers' gradient_checkpointing_enable replaces it (the
        # attribute name is the one it sets) with its own options, e.g. use_reentrant
        self._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        layers = dict(wte=nn.Embedding(cfg.vocab_size, cfg.n_embd))
        if cfg.position_embedding == "learned":  # rotary models have no position parameters at all
            layers["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        layers["h"] = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        layers["ln_f"] = nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        self.transformer = nn.ModuleDict(layers)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            # weight tying (Press & Wolf 2017): one matrix reads tokens in and writes logits out
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        self.cpu_kernels = CpuKernels()  # the plain ways, until use_cpu_kernels says otherwise
        # What generate() asks, on a CPU, once per weight dtype, for the decode kernels fastest here: a function
        # of the model returning CpuKernels fields, handed in by the code that runs the model (the project's
        # probes). None, as in a notebook or an exported folder: the plain ways, and nothing is measured.
        self.decode_kernel_probe: Callable[[SmoLM135_Model], dict] | None = None
        self._decode_kernels: dict[torch.dtype, dict] = {}  # weight dtype -> the probe's answer

    def use_cpu_kernels(self, **choices) -> None:
        """Take the given CpuKernels choices (split_products=True, ...) from now on; the values stay the same."""
        self.cpu_kernels = replace(self.cpu_kernels, **choices)
        for module in self.modules():
            if isinstance(module, Linear):
                module.split_products = self.cpu_kernels.split_products
            elif isinstance(module, CausalSelfAttention):
                module.decode_by_matmuls = self.cpu_kernels.decode_attention_by_matmuls
                module.matmul_attention_max_length = (
                    MATMUL_ATTENTION_MAX_LENGTH if self.cpu_kernels.training_attention_by_matmuls else 0)

    def _measured_decode_kernels(self) -> dict:
        """On a CPU, once per weight dtype: the decode kernels `decode_kernel_probe` finds fastest here. Without
        a probe, or on a GPU: none (the plain ways)."""
        weight = self.lm_head.weight
        if self.decode_kernel_probe is None or weight.device.type != "cpu":
            return {}
        if weight.dtype not in self._decode_kernels:
            self._decode_kernels[weight.dtype] = self.decode_kernel_probe(self)
        return self._decode_kernels[weight.dtype]

    def _init_weights(self, module):
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                # GPT-2: scale the projections into the residual stream by 1/sqrt(2 * n_layer) so its
                # variance does not grow with depth (two such projections per block).
                std = std / math.sqrt(2 * self.config.n_layer)
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)

    # ---------------------------------------------------------------- forward

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, position_ids=None, attn_mask=None,
                logits_to_keep: int = 0, return_logits: bool = True, hidden_states: list | None = None,
                document_ids=None):
        """idx (B, T) token ids -> (logits (B, T, V) or None, loss or None).

        With `targets` (B, T) the loss is the mean next-token cross entropy (ignore_index -100). Training
        passes `return_logits=False`: the loss is then computed chunk by chunk (`linear_cross_entropy`),
        faster and without the (B, T, V) logits in memory, and None is returned in their place.
        `logits_to_keep` > 0 computes logits for only the last that many positions (sampling needs one),
        which saves most of the (T, vocab) output matmul. `position_ids` (B, T) override the positions
        (left-padded batches); `attn_mask` is an explicit SDPA mask (B or 1, 1, T, S) for such batches.
        Positions are looked up in the learned embedding or turned into rotary angles, per the config.
        A `hidden_states` list receives n_layer + 1 tensors (B, T, C): the embeddings, then each block's output,
        the last one after the final norm (the states transformers' `output_hidden_states` reports).
        `document_ids` (B, T) packs several texts into a row (conversations in fine-tuning): each position
        attends to its own text only, and positions restart where a text starts (`packed_positions_and_mask`).
        """
        B, T = idx.shape
        if document_ids is not None:
            position_ids, attn_mask = packed_positions_and_mask(document_ids)  # (B, T), (B, 1, T, T)
        past_length = kv_cache.length if kv_cache is not None else 0
        if position_ids is None:
            if past_length + T > self.config.block_size:
                raise ValueError(
                    f"sequence of {past_length + T} tokens is longer than the context length "
                    f"({self.config.block_size}); crop the input or use a model with a larger block_size"
                )
            position_ids = torch.arange(past_length, past_length + T, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, C)
        rotary = None
        if self.config.position_embedding == "learned":
            x = x + self.transformer.wpe(position_ids)  # (B, T, C)
        else:
            rotary = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)  # computed once
        for layer_idx, block in enumerate(self.transformer.h):
            if hidden_states is not None:
                hidden_states.append(x)
            if self.gradient_checkpointing and self.training:
                # recompute activations in the backward pass: memory ~ one block instead of n_layer
                x = self._gradient_checkpointing_func(block, x, None, layer_idx, attn_mask, rotary)
            else:
                x = block(x, kv_cache, layer_idx, attn_mask, rotary)
        if kv_cache is not None:
            kv_cache.length += T
        x = self.transformer.ln_f(x)
        if hidden_states is not None:
            hidden_states.append(x)
        if targets is None:
            return self.lm_head(x[:, -logits_to_keep:, :] if logits_to_keep else x), None  # (B, T or k, V)
        if not return_logits:
            return None, linear_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(-1))
        logits = self.lm_head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100)
        return logits, loss

    # ---------------------------------------------------------------- generation

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_length: int | None = None,
        max_new_tokens: int | None = None,
        temperature: float = SAMPLING.temperature,
        top_k: int | None = SAMPLING.top_k,
        top_p: float | None = SAMPLING.top_p,
        eos_token_id: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        vocab_limit: int | None = None,
    ) -> torch.Tensor:
        """Continue `input_ids` (B, T) or (T,); returns prompt + continuation, like transformers' generate.

        `max_length` counts the prompt (the seed's usage), `max_new_tokens` does not; give one (default:
        50 new tokens). `temperature` 0 decodes greedily. `top_k` keeps the k likeliest tokens, `top_p` the
        smallest set whose probability reaches p (None turns either off); the defaults are `SAMPLING`, the
        project's one sampling policy. `eos_token_id` is one id or several (a chat model ends a turn with one
        and a document with another): a row that emits any of them stops, and is padded with the first.
        Generation stops, with a warning, at the context length `config.block_size`. `use_cache=False`
        re-runs the whole sequence for every token (slow; the reference the cache is tested against).
        `vocab_limit` (the tokenizer's vocabulary size) keeps the padding ids past it from being sampled.
        """
        squeeze = input_ids.dim() == 1
        idx = input_ids.unsqueeze(0) if squeeze else input_ids
        new_tokens = list(self.generate_stream(idx, max_length, max_new_tokens, temperature, top_k, top_p,
                                               eos_token_id, generator, use_cache, vocab_limit))
        out = torch.cat([idx] + [token[:, None] for token in new_tokens], dim=1)
        return out[0] if squeeze else out

    @torch.no_grad()
    def generate_stream(self, input_ids, max_length=None, max_new_tokens=None, temperature=SAMPLING.temperature,
                        top_k=SAMPLING.top_k, top_p=SAMPLING.top_p, eos_token_id=None, generator=None,
                        use_cache=True, vocab_limit=None):
        """Like `generate`, but yields each new token (B,) as soon as it is decoded (for streaming UIs)."""
        B, prompt_length = input_ids.shape
        if max_new_tokens is None:
            max_new_tokens = (max_length - prompt_length) if max_length is not None else 50
        max_new_tokens = max(0, max_new_tokens)
        _, fitting = fit_to_context(prompt_length, max_new_tokens, self.config.block_size,
                                    min_prompt_length=prompt_length)  # the prompt is the caller's: never cut
        if fitting < max_new_tokens:
            warnings.warn(
                f"generation stops at the context length of {self.config.block_size} tokens: "
                f"{fitting} new tokens instead of {max_new_tokens} (prompt is {prompt_length} tokens)",
                stacklevel=3,
            )
            max_new_tokens = fitting
        if max_new_tokens == 0:
            return

        was_training, kernels_before = self.training, self.cpu_kernels
        self.eval()
        total_length = prompt_length + max_new_tokens
        tokens = input_ids.new_empty(B, total_length)  # (B, prompt + new): the sequence, written in place
        tokens[:, :prompt_length] = input_ids
        param = self.lm_head.weight
        kv_cache = KVCache(self.config, B, total_length, param.device, param.dtype) if use_cache else None
        finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        end_ids = end_token_tensor(eos_token_id, input_ids.device)  # (E,), or None: never stop early
        try:
            # The measured kernels hold for this generation only: any other forward (a training step of a few
            # rows, an evaluation) takes the kernels it took before, whatever ran earlier in the process, so a
            # run resumed in a fresh process computes every step exactly as the uninterrupted one did.
            self.use_cpu_kernels(**self._measured_decode_kernels())
            logits, _ = self(input_ids, kv_cache=kv_cache, logits_to_keep=1)  # (B, 1, V); fills the cache
            for length in range(prompt_length, total_length):
                next_token = sample_next_token(logits[:, -1, :], temperature, top_k, top_p, generator,
                                               vocab_limit)  # (B,)
                if end_ids is not None:
                    next_token = next_token.masked_fill(finished, end_ids[0])
                    finished |= torch.isin(next_token, end_ids)
                yield next_token
                tokens[:, length] = next_token
                if length + 1 == total_length or (end_ids is not None and bool(finished.all())):
                    break
                if use_cache:  # only the new token goes in; the cache holds the rest
                    logits, _ = self(tokens[:, length:length + 1], kv_cache=kv_cache, logits_to_keep=1)
                else:  # the whole sequence again: the reference the cached path must match
                    logits, _ = self(tokens[:, :length + 1], logits_to_keep=1)
        finally:
            self.use_cpu_kernels(**asdict(kernels_before))
            self.train(was_training)

    # ---------------------------------------------------------------- reporting

    def num_parameters(self) -> dict[str, int]:
        """Parameter count split into embeddings (token + position) and the rest; tied weights count once.
        Rotary models have no position parameters (0)."""
        token = self.transformer.wte.weight.numel()
        position = self.transformer.wpe.weight.numel() if "wpe" in self.transformer else 0
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        return {"token_embedding": token, "position_embedding": position,
                "non_embedding": total - token - position, "total": total}

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward = 6 per weight, plus attention), PaLM appendix B."""
        n_matmul_params = self.num_parameters()["total"] - self.num_parameters()["position_embedding"]
        cfg = self.config
        return 6 * n_matmul_params + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len


def end_token_tensor(eos_token_id, device) -> torch.Tensor | None:
    """`generate`'s `eos_token_id` (None, one id or a sequence of ids, as transformers takes it) as a tensor
    (E,) of ids; None when there is none."""
    if eos_token_id is None:
        return None
    ids = torch.as_tensor(eos_token_id, dtype=torch.long, device=device).reshape(-1)  # (E,)
    return ids if ids.numel() else None


# Below this temperature sampling is greedy decoding in all but name (a logit gap of 0.01 already weighs
# e^-100), while dividing by a far smaller one overflows float32 logits to inf and the probabilities to NaN.
MIN_SAMPLING_TEMPERATURE = 1e-4


def is_greedy(temperature: float) -> bool:
    """Whether `temperature` decodes greedily: 0, negative, NaN, or too small to sample with."""
    return not temperature >= MIN_SAMPLING_TEMPERATURE


def sample_next_token(logits, temperature: float = 1.0, top_k=None, top_p=None, generator=None, vocab_limit=None):
    """logits (B, V) -> next token ids (B,). Greedy when `is_greedy(temperature)`. Ids at or past
    `vocab_limit` are never picked: the embedding's padding rows past the tokenizer's vocabulary are no
    tokens, so the tokenizer could not decode them."""
    if vocab_limit is not None:
        logits = logits[:, :vocab_limit]  # (B, vocab_limit): an index here is the token id
    if is_greedy(temperature):
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth_value = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth_value, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop a token when the tokens before it already reach top_p (so the top token always survives)
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= top_p
        drop = drop_sorted.scatter(-1, sorted_idx, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def build_model(cfg: ModelConfig | str = "smolm135", **overrides) -> SmoLM135_Model:
    """A fresh model from a preset name or a config, with optional field overrides."""
    if isinstance(cfg, str):
        cfg = PRESETS[cfg]
    return SmoLM135_Model(replace(cfg, **overrides) if overrides else cfg)


def clean_state_dict(state_dict: dict) -> dict:
    """Strip torch.compile's `_orig_mod.` and DDP's `module.` prefixes so a checkpoint always loads."""
    cleaned = {}
    for key, value in state_dict.items():
        while key.startswith(("_orig_mod.", "module.")):
            key = key.split(".", 1)[1]
        cleaned[key.replace("._orig_mod.", ".")] = value
    return cleaned


# The weights with one row per token id: the token embedding and the output head (the same tensor when tied).
TOKEN_ROW_WEIGHTS = ("transformer.wte.weight", "lm_head.weight")


def with_new_token_rows(state_dict: dict, n_tokens: int, new_ids: Sequence[int], vocab_size: int) -> dict:
    """`state_dict` for a vocabulary that gained the tokens `new_ids` after its first `n_tokens`, in an embedding
    of `vocab_size` rows (`vocab_size_for`): the rows of the first `n_tokens` stay bitwise, so the model computes
    what it did for every text without the new tokens; each new token's row, and each row added, starts as the
    mean of the `n_tokens` rows (as transformers' `resize_token_embeddings` starts them), so a new token reads as
    an average one instead of a padding row that training only ever pushed down."""
    grown = dict(state_dict)
    for name in TOKEN_ROW_WEIGHTS:
        if name not in state_dict:
            continue
        rows = state_dict[name]  # (V, C)
        mean = rows[:n_tokens].float().mean(dim=0).to(rows.dtype)  # (C,)
        weight = torch.cat([rows, mean.expand(vocab_size - rows.shape[0], -1)])  # (vocab_size, C)
        weight[list(new_ids)] = mean
        grown[name] = weight
    return grown
