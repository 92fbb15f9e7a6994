"""The Hugging Face configuration of smolm135: the native `ModelConfig` under transformers' standard names.

This file travels inside every exported folder, next to `modeling_smolm135.py` and `smollm135_model.py`, so
`AutoConfig.from_pretrained(folder, trust_remote_code=True)` works with no file of this repository installed.
"""
from __future__ import annotations

from transformers import PretrainedConfig

try:  # inside an exported folder, transformers imports these files as one package
    from .smollm135_model import ModelConfig
except ImportError:  # imported from the repository, where the files are top-level modules
    from smollm135_model import ModelConfig

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
}
END_OF_TEXT_ID = 50256  # GPT-2's <|endoftext|>: the tokenizer's bos, eos and pad token
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
