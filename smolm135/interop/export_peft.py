"""A LoRA run's adapters as a peft folder (adapter_config.json, adapter_model.safetensors) for transformers'
LlamaForCausalLM of the base model: the export format of adapters, beside the merged Llama folder and GGUF."""
from __future__ import annotations

from pathlib import Path

from smollm135_model import SmoLM135_Model

from smolm135.interop.export_llama import llama_config, llama_model_from_native
from smolm135.interop.llama_names import weight_names
from smolm135.lora import ADAPTER_NAME, LoraSettings, load_split_state_dict, peft_wrapped, split_state_dict
from smolm135.runtime.disk import give_safetensors_default_mode


def save_peft_adapter(base: SmoLM135_Model, record: dict, folder: Path, base_model_name: str | None = None) -> Path:
    """The adapters as a peft folder (adapter_config.json, adapter_model.safetensors) that
    `PeftModel.from_pretrained(llama, folder)` loads on top of transformers' LlamaForCausalLM of the base
    model `base` (unmerged). Our fused projections are split as the Llama export splits their weights: the
    q, k and v (gate and up) adapters share A, and each takes its rows of B, so each update is exactly its
    rows of the fused one."""
    settings = LoraSettings.from_record(record["settings"])
    adapters, llama_adapters, llama_targets = record["state_dict"], {}, set()
    for name in weight_names(base.config):
        module = name.native.removesuffix(".weight")
        if f"{module}.lora_A.weight" not in adapters:
            continue
        a, b = adapters[f"{module}.lora_A.weight"], adapters[f"{module}.lora_B.weight"]
        for part, rows in zip(name.parts, b.split([part.rows for part in name.parts])):
            llama_module = part.llama.removesuffix(".weight")
            llama_targets.add(llama_module.rsplit(".", 1)[1])
            llama_adapters[f"{llama_module}.lora_A.weight"] = a.float().contiguous()
            llama_adapters[f"{llama_module}.lora_B.weight"] = rows.float().contiguous()
    llama = llama_model_from_native(base, llama_config(base.config, None, None, None))
    peft_model = peft_wrapped(llama, settings, target_names=sorted(llama_targets))
    load_split_state_dict(llama, split_state_dict(llama)[0], llama_adapters)  # strict: every adapter has its place
    peft_model.peft_config[ADAPTER_NAME].base_model_name_or_path = base_model_name
    peft_model.save_pretrained(folder)
    give_safetensors_default_mode(folder)
    return Path(folder)
