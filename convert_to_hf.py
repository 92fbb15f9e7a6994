"""Convert a trained smolm135 checkpoint into a Hugging Face transformers folder (and back), and push it.

    python convert_to_hf.py                                # the newest final or continued model
    python convert_to_hf.py --checkpoint PATH --output-dir my-model-hf
    python convert_to_hf.py --push-to-hub you/my-model      # also upload (token: --token, HF_TOKEN or `hf auth login`)
    python convert_to_hf.py --gguf q8_0 --push-to-hub you/my-model   # rotary models: a .gguf too, uploaded with it
    python convert_to_hf.py --from-hf my-model-hf           # back to a native checkpoint, to train it more

By default the newest of models/final_model_*.pt and continued_models/continued_model_*.pt (under
--search-dir) is converted into ./smolm135-<preset>-hf (./smolm135-hf for the full preset). The folder holds
model.safetensors, config.json, generation_config.json, the model's tokenizer, a model card (README.md),
loss.png and training_info.json; a learned-position model adds its modeling code (auto_map, remote code), a
rotary model is a plain LlamaForCausalLM folder and takes --gguf. Before reporting success the script reloads
the folder in a fresh Python process through the Auto classes, from another directory and offline, and
compares its logits with the native model's (each .gguf through transformers' GGUF loader).
"""
from smolm135.errors import run_cli
from smolm135.interop.convert import main

if __name__ == "__main__":
    run_cli(main)
