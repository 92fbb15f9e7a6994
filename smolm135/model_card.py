"""The model card (README.md) of an exported Hugging Face folder: Hub metadata, what the model is, how it was
trained, and code that loads it."""
from __future__ import annotations

import json

from smollm135_model import GPT2_VOCAB_SIZE, VOCAB_PADDING_MULTIPLE, ModelConfig

from .checkpoint import TRAINING_INFO_FILE, TrainingFacts
from .export_card import runtimes_section
from .generation import SAMPLING
from .tokenizer import END_OF_TEXT, END_OF_TEXT_ID

USAGE_PROMPT = "To be, or not to be"


def usage_snippet(model_id: str) -> str:
    """Python that loads the folder (or Hub repository) `model_id` and generates, as a user would paste it."""
    return f'''from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

model_id = {json.dumps(model_id)}
tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=True)

inputs = tokenizer({json.dumps(USAGE_PROMPT)}, return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=40, do_sample=True, {sampling_arguments()})
print(tokenizer.decode(output[0], skip_special_tokens=True))

generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
print(generator({json.dumps(USAGE_PROMPT)}, max_new_tokens=40)[0]["generated_text"])
'''


def sampling_arguments() -> str:
    """The sampling policy as `generate` keyword arguments (temperature=..., top_k=..., top_p=...)."""
    return f"temperature={SAMPLING.temperature}, top_k={SAMPLING.top_k}, top_p={SAMPLING.top_p}"


def sampling_sentence() -> str:
    """The sampling policy in words (temperature ..., top-k ... and top-p ...)."""
    return f"temperature {SAMPLING.temperature}, top-k {SAMPLING.top_k} and top-p {SAMPLING.top_p}"


def _number(value, fmt: str) -> str:
    return "not recorded" if value is None else format(value, fmt)


def render_model_card(model_config: ModelConfig, parameters: int, facts: TrainingFacts, model_id: str,
                      name: str, license: str, has_loss_plot: bool, gguf_files: tuple[str, ...] = ()) -> str:
    """README.md text: YAML metadata for the Hub, then architecture, training, loss plot and usage (for a
    rotary model, exported as a plain Llama folder: the runtimes that load it and its `gguf_files`)."""
    cfg = model_config
    rotary = cfg.position_embedding == "rotary"
    positions = "rotary positions (the Llama layout)" if rotary else "learned position embeddings"
    code = ("It is a plain `LlamaForCausalLM`: no code of its own, no `trust_remote_code`." if rotary else
            "The modeling code is in this folder\n(`modeling_smolm135.py`, `smollm135_model.py`), hence "
            "`trust_remote_code=True`.")
    usage = runtimes_section(model_id, USAGE_PROMPT, gguf_files) if rotary else f"""## Usage

```python
{usage_snippet(model_id)}```
"""
    data = f"`{facts.data_name}`" if facts.data_name else "not recorded"
    plot = ("![Training and validation loss](loss.png)" if has_loss_plot
            else "The checkpoint holds no loss history, so there is no plot.")
    return f"""---
license: {license}
library_name: transformers
pipeline_tag: text-generation
tags:
- smolm135
- gpt
- causal-lm
- text-generation
- custom_code
---

# {name}

A GPT-style language model trained from scratch with smolm135: {positions}, pre-norm blocks
of causal self-attention and a SwiGLU MLP, RMSNorm, and an output head tied to the token embedding. The
tokenizer is GPT-2's byte-level BPE (`{END_OF_TEXT}` = {END_OF_TEXT_ID}).

## Architecture

| | |
| --- | --- |
| parameters (tied embedding counted once) | {parameters:,} |
| layers | {cfg.n_layer} |
| hidden size | {cfg.n_embd} |
| attention heads (key/value heads) | {cfg.n_head} ({cfg.n_kv_head}), head size {cfg.head_dim} |
| MLP (SwiGLU) width | {cfg.intermediate_size} |
| context length | {cfg.block_size} tokens |
| vocabulary | {cfg.vocab_size:,} (GPT-2's {GPT2_VOCAB_SIZE:,} tokens padded to a multiple of {VOCAB_PADDING_MULTIPLE}) |

Weights are stored in float32 (`model.safetensors`). {code}

## Training

| | |
| --- | --- |
| training data | {data} |
| steps | {_number(facts.step, ",")} |
| tokens seen | {_number(facts.tokens_seen, ",")} |
| final training loss | {_number(facts.train_loss, ".4f")} |
| final validation loss | {_number(facts.val_loss, ".4f")} |

{plot}

`{TRAINING_INFO_FILE}` holds the full loss history and the training recipe.

{usage}
The generation defaults (`generation_config.json`) sample with {sampling_sentence()};
pass `do_sample=False` for greedy decoding. Batched prompts are padded on the left.
"""
