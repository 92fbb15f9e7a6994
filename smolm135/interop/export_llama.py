"""A rotary model as a plain transformers `LlamaForCausalLM` folder: config.json with model_type llama and no
auto_map, q/k/v and gate/up split back into transformers' names (smolm135/interop/llama_names.py), safetensors. Such a
folder loads with `AutoModelForCausalLM.from_pretrained(path)` and no remote code, and so in every runtime
that reads Llama folders (vLLM, llama.cpp's converter, MLX, ...).

`reload_in_fresh_process` is the check: a new Python process, in another directory, with no file of this
repository importable, loads the folder as a user would and runs it.
"""
from __future__ import annotations

from pathlib import Path

from smollm135_model import ModelConfig, SmoLM135_Model

from smolm135.interop.llama_names import check_rotary, native_to_llama
from smolm135.runtime.fresh_process import run_fresh


def llama_config(cfg: ModelConfig, bos_token_id: int, eos_token_id: int, pad_token_id: int):
    """transformers' LlamaConfig of the same architecture (the inverse of pretrained.llama_config_to_native)."""
    from transformers import LlamaConfig

    check_rotary(cfg, "a Llama export")
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim, hidden_act="silu", max_position_embeddings=cfg.block_size,
        initializer_range=cfg.init_std, rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_word_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attention_bias=False, mlp_bias=False, use_cache=True,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        architectures=["LlamaForCausalLM"], dtype="float32")


def llama_model_from_native(native: SmoLM135_Model, config):
    """A LlamaForCausalLM (fp32, eval mode) holding the native model's weights."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(config)
    state = native_to_llama({k: v.detach().float() for k, v in native.state_dict().items()}, native.config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) != tied or unexpected:
        raise RuntimeError(f"the Llama layout and the native weights disagree: missing {missing}, "
                           f"unexpected {unexpected}")
    return model.eval()


def save_llama_model(native: SmoLM135_Model, output_dir: Path, generation_config, config) -> None:
    """Write config.json (`config`, from `llama_config`), model.safetensors and generation_config.json."""
    model = llama_model_from_native(native, config)
    model.generation_config = generation_config
    model.save_pretrained(output_dir)


# ------------------------------------------------------------------ the check, as a user would load it

# Runs with the working directory in a temporary folder and no PYTHONPATH; no trust_remote_code anywhere.
_RELOAD_SCRIPT = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
out_path, folder, text = sys.argv[1:4]
config = json.load(open(f"{folder}/config.json"))
assert "auto_map" not in config and config["model_type"] == "llama", "not a plain Llama folder"
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
with torch.no_grad():
    logits = model(input_ids).logits
generator = pipeline("text-generation", model=folder, dtype=torch.float32)
generated = generator(text[:20], max_new_tokens=4, do_sample=False)[0]["generated_text"]
torch.save({"input_ids": input_ids[0].tolist(), "logits": logits[0], "model_class": type(model).__name__,
            "generated": generated}, out_path)
"""


def reload_in_fresh_process(folder: Path, text: str) -> dict:
    """Load `folder` with plain AutoTokenizer/AutoModelForCausalLM and pipeline("text-generation") in a new
    process; returns its input ids, (T, V) logits for `text`, the model's class and a pipeline's output."""
    return run_fresh(_RELOAD_SCRIPT, [str(folder.resolve()), text],
                     lambda output: f"the exported folder {folder} did not load as a plain LlamaForCausalLM in a "
                                    "fresh process")
