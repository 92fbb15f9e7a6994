"""smolm135 as a transformers causal LM: `AutoModelForCausalLM`, `generate()` and `pipeline()` work on it.

The model *is* the native `SmoLM135_Model` (held as `self.model`); this file only translates between
transformers' conventions and the native forward:

- the cache: transformers' `Cache` (a `DynamicCache` in `generate()`) seen through the native `KVCache`
  interface (`.length`, `.update(layer_idx, k, v)`);
- positions: learned positions come from `position_ids`, which `generate()` builds from the attention mask,
  so a left-padded prompt gets the same positions as the prompt alone;
- masks: a (batch, length) padding mask becomes one boolean SDPA mask, causal and bottom-right aligned;
- the loss: transformers' own causal LM loss on the native logits, so `labels`, `shift_labels` and
  `num_items_in_batch` mean what they mean for every transformers model (and Trainer's gradient accumulation
  makes the update it makes without);
- outputs: hidden states collected by the native forward, `return_dict`, and the attention path
  (`attn_implementation` "sdpa" or "eager") chosen per call from the config.

The configuration class (`SmoLM135Config`, the native `ModelConfig` under transformers' standard names) lives
here too. An exported folder carries this file and `smollm135_model.py`; transformers copies relatively
imported files along, so the folder loads from anywhere with `trust_remote_code=True`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from transformers import DynamicCache, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:  # inside an exported folder, transformers imports these files as one package
    from .smollm135_model import GPT2_END_OF_TEXT_ID, ModelConfig, SmoLM135_Model, causal_mask
except ImportError:  # imported from the repository, where the files are top-level modules
    from smollm135_model import GPT2_END_OF_TEXT_ID, ModelConfig, SmoLM135_Model, causal_mask

# native ModelConfig field -> transformers' standard name (what generate, DynamicCache and serving tools read)
STANDARD_NAMES = {
    "vocab_size": "vocab_size",
    "block_size": "max_position_embeddings",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "n_embd": "hidden_size",
    "intermediate_size": "intermediate_size",
    "norm_eps": "rms_norm_eps",
    "init_std": "initializer_range",
    "tie_word_embeddings": "tie_word_embeddings",
    "position_embedding": "position_embedding_type",  # "learned" or "rotary"
    "rope_theta": "rope_theta",
}
END_OF_TEXT_ID = GPT2_END_OF_TEXT_ID  # GPT-2's <|endoftext|>: the tokenizer's bos, eos and pad token
_DEFAULTS = ModelConfig()  # the full smolm135 preset


class SmoLM135Config(PretrainedConfig):
    model_type = "smolm135"

    def __init__(
        self,
        vocab_size: int = _DEFAULTS.vocab_size,
        max_position_embeddings: int = _DEFAULTS.block_size,
        num_hidden_layers: int = _DEFAULTS.n_layer,
        num_attention_heads: int = _DEFAULTS.n_head,
        num_key_value_heads: int | None = None,
        hidden_size: int = _DEFAULTS.n_embd,
        intermediate_size: int = _DEFAULTS.intermediate_size,
        rms_norm_eps: float = _DEFAULTS.norm_eps,
        initializer_range: float = _DEFAULTS.init_std,
        tie_word_embeddings: bool = _DEFAULTS.tie_word_embeddings,
        position_embedding_type: str = _DEFAULTS.position_embedding,  # folders exported before it: learned
        rope_theta: float = _DEFAULTS.rope_theta,
        use_cache: bool = True,  # transformers 5 no longer supplies it, and generate() reads it
        bos_token_id: int = END_OF_TEXT_ID,
        eos_token_id: int = END_OF_TEXT_ID,
        pad_token_id: int = END_OF_TEXT_ID,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads if num_key_value_heads is not None else num_attention_heads
        self.hidden_size = hidden_size
        self.head_dim = hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.position_embedding_type = position_embedding_type
        self.rope_theta = rope_theta
        self.use_cache = use_cache
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def to_model_config(self) -> ModelConfig:
        """The native config that builds the same layers."""
        return ModelConfig(**{native: getattr(self, standard) for native, standard in STANDARD_NAMES.items()})

    @classmethod
    def from_model_config(cls, model_config: ModelConfig, **kwargs) -> "SmoLM135Config":
        values = {standard: getattr(model_config, native) for native, standard in STANDARD_NAMES.items()}
        return cls(**values, **kwargs)


# transformers 5.0 names the returned cache `past_key_values`; later 5.x releases call it `cache` and warn
# on the old name.
CACHE_OUTPUT_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class TransformersCacheAsKVCache:
    """A transformers `Cache` behind the native `KVCache` interface the attention layers call."""

    def __init__(self, cache):
        self.cache = cache
        self.length = cache.get_seq_length()  # positions already cached; the native forward advances it

    def update(self, layer_idx: int, k, v):
        return self.cache.update(k, v, layer_idx)  # (B, nkv, past + T, hs) each


def is_tracing() -> bool:
    """Whether torch.compile or torch.export is tracing: reading a tensor's values then breaks the graph or
    fails, so the mask is built even when nothing is padded (same result, without SDPA's is_causal shortcut)."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def attention_mask_for_sdpa(attention_mask: torch.Tensor | None, query_length: int) -> torch.Tensor | None:
    """(B, S) padding mask of 1s and 0s -> (B, 1, T, S) boolean SDPA mask; None when nothing is padded.

    The queries are the last T of the S positions, so the causal triangle is aligned bottom-right. Every
    query may also see itself: a query whose keys are all padding (a fully padded row) would otherwise take
    a softmax over nothing and return NaN. Real tokens never see padding either way.
    """
    if attention_mask is None or (not is_tracing() and bool(attention_mask.all())):
        return None  # the native layers then use SDPA's is_causal (flash attention where available)
    key_length = attention_mask.shape[-1]
    query_positions = torch.arange(key_length - query_length, key_length, device=attention_mask.device)  # (T,)
    key_positions = torch.arange(key_length, device=attention_mask.device)  # (S,)
    causal = causal_mask(query_length, key_length, attention_mask.device)  # (T, S)
    itself = key_positions[None, :] == query_positions[:, None]  # (T, S)
    not_padding = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
    return (causal & not_padding) | itself  # (B, 1, T, S)


def position_ids_from_attention_mask(attention_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """(B, S) padding mask -> (B, T) positions counted from each row's first real token, as generate() does."""
    position_ids = attention_mask.long().cumsum(-1) - 1  # (B, S)
    position_ids = position_ids.masked_fill(attention_mask == 0, 0)
    return position_ids[:, -query_length:]  # (B, T)


class SmoLM135PreTrainedModel(PreTrainedModel):
    config_class = SmoLM135Config
    base_model_prefix = "model"
    _no_split_modules = ["Block"]
    supports_gradient_checkpointing = True
    # "sdpa" (the default) runs the native attention through scaled_dot_product_attention; "eager" takes its
    # two-matmul path everywhere. transformers refuses the kernels it would need flash or flex attention for.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    def _init_weights(self, module):
        """The native initialisation (GPT-2's scaled residual projections); norm gains start at one."""
        if isinstance(module, nn.RMSNorm):
            torch.nn.init.ones_(module.weight)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            self.model._init_weights(module)

    def mark_tied_weights_as_initialized(self, *args, **kwargs):
        """Keep a tied weight's source key missing when the checkpoint lacks it.

        For custom code, transformers drops from the missing keys any parameter it has just marked as loaded
        through a tied key (assuming a module shared between two places). Here the only shared parameter is the
        token embedding, read back by the output head: a checkpoint without it would leave it on the meta
        device, unreported. Kept missing, it is reported, initialised and tied like any missing weight.
        """
        loading_info = args[0] if args else kwargs.get("loading_info")
        if loading_info is None:  # transformers 5.0 passes nothing, and keeps the missing keys as they are
            return super().mark_tied_weights_as_initialized(*args, **kwargs)
        tied_sources = set(getattr(self, "all_tied_weights_keys", self._tied_weights_keys or {}).values())
        missing_sources = tied_sources & set(loading_info.missing_keys)
        super().mark_tied_weights_as_initialized(*args, **kwargs)
        for key in missing_sources:
            loading_info.missing_keys.add(key)
            self.get_parameter(key)._is_hf_initialized = False


# transformers 5.0's generate passes `cache_position`; the positions come from the cache length here instead
IGNORED_FORWARD_ARGUMENTS = {"cache_position"}
ATTENTION_IMPLEMENTATIONS = {"sdpa", "eager"}


class SmoLM135ForCausalLM(SmoLM135PreTrainedModel, GenerationMixin):
    # target -> source, as transformers 5 expects: the output head is the token embedding
    _tied_weights_keys = {"model.lm_head.weight": "model.transformer.wte.weight"}
    # forward normalises the loss by `num_items_in_batch` when given, so Trainer must not divide it again
    accepts_loss_kwargs = True

    def __init__(self, config: SmoLM135Config):
        super().__init__(config)
        self.model = SmoLM135_Model(config.to_model_config())
        self.post_init()

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def set_input_embeddings(self, value):
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        return self.model.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.model.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        labels: torch.LongTensor | None = None,
        shift_labels: torch.LongTensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """
        input_ids (B, T): token ids. attention_mask (B, past + T): 1 for tokens, 0 for padding.
        position_ids (B, T): positions of the learned embedding; by default counted from the attention mask.
        cache / past_key_values: a transformers `Cache` (5.0's generate passes the second name, later 5.x
        the first; both are accepted). labels (B, T): the input ids themselves, -100 where no loss is wanted;
        the shift to next-token targets happens here, unless shift_labels (B, T) gives the targets already
        shifted. num_items_in_batch: the loss is the sum over targets divided by this (the count over every
        micro-batch of a gradient-accumulation step, as Trainer passes it) instead of their mean.
        logits_to_keep: compute logits for the last k only. output_hidden_states: also return the
        n_layer + 1 hidden states (B, T, C). output_attentions is refused: no attention weights are kept.
        return_dict=False returns a tuple of the non-None fields.
        """
        unexpected = sorted(k for k, v in kwargs.items() if v is not None and k not in IGNORED_FORWARD_ARGUMENTS)
        if unexpected:
            raise TypeError(f"smolm135's forward does not take {', '.join(unexpected)}")
        if output_attentions if output_attentions is not None else self.config.output_attentions:
            raise ValueError("smolm135 does not return attention weights; call it with output_attentions=False")
        self._select_attention(self.config._attn_implementation)
        cache = cache if cache is not None else past_key_values
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.model.gradient_checkpointing and self.training:
            use_cache, cache = False, None  # checkpointed blocks recompute; they cannot fill a cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        query_length = input_ids.shape[1]
        if past_length + query_length > self.config.max_position_embeddings:
            raise ValueError(f"sequence of {past_length + query_length} tokens is longer than the context length "
                             f"({self.config.max_position_embeddings}); crop the input or generate fewer tokens")
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[1] != past_length + query_length:
                raise ValueError(f"attention_mask must be (batch, {past_length + query_length}): one entry per "
                                 f"cached and new token, got {tuple(attention_mask.shape)}")
            if position_ids is None:
                position_ids = position_ids_from_attention_mask(attention_mask, query_length)
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        hidden_states = [] if output_hidden_states else None
        logits, _ = self.model(
            input_ids,
            kv_cache=TransformersCacheAsKVCache(cache) if cache is not None else None,
            position_ids=position_ids,
            attn_mask=attention_mask_for_sdpa(attention_mask, query_length),
            logits_to_keep=logits_to_keep,
            hidden_states=hidden_states,
        )  # logits (B, T or k, V)
        loss = None
        if labels is not None or shift_labels is not None:
            # transformers' causal LM loss: the mean over targets, or their sum / num_items_in_batch
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size,
                                      num_items_in_batch=num_items_in_batch, shift_labels=shift_labels)
        output = CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            **{CACHE_OUTPUT_FIELD: cache if use_cache else None},
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def _select_attention(self, implementation: str):
        """Point every native attention layer at the path `config._attn_implementation` names."""
        if implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"smolm135 attends through {' or '.join(sorted(ATTENTION_IMPLEMENTATIONS))}, "
                             f"not {implementation!r}")
        by_matmuls = implementation == "eager"
        for block in self.model.transformer.h:
            if block.attn.always_attend_by_matmuls != by_matmuls:
                block.attn.always_attend_by_matmuls = by_matmuls


__all__ = ["SmoLM135Config", "SmoLM135ForCausalLM", "SmoLM135PreTrainedModel"]
