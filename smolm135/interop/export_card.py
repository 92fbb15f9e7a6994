"""The part of a model card that says which runtimes load a rotary model's export, with a snippet for each:
transformers without remote code and vLLM for the Llama folder, llama.cpp and ollama for its .gguf files."""
from __future__ import annotations

import json


def runtimes_section(model_id: str, prompt: str, gguf_files: tuple[str, ...] = ()) -> str:
    """Markdown: how to run the Llama folder `model_id` (a Hub id or a local path) and its GGUF files."""
    text = f"""## Runtimes

This folder is a plain Llama model (`LlamaForCausalLM`, `model_type: llama`, no remote code), so every runtime
that reads Llama checkpoints loads it.

**transformers** (no `trust_remote_code`):

```python
from transformers import pipeline

generator = pipeline("text-generation", model={json.dumps(model_id)})
print(generator({json.dumps(prompt)}, max_new_tokens=40)[0]["generated_text"])
```

**vLLM**:

```python
from vllm import LLM, SamplingParams

llm = LLM(model={json.dumps(model_id)}, dtype="float32")
print(llm.generate([{json.dumps(prompt)}], SamplingParams(max_tokens=40))[0].outputs[0].text)
```
"""
    for name in gguf_files:
        text += f"""
**llama.cpp** and **ollama** read `{name}` (GGUF, llama architecture):

```bash
llama-cli -m {name} -p {json.dumps(prompt)} -n 40
echo "FROM ./{name}" > Modelfile && ollama create my-model -f Modelfile && ollama run my-model {json.dumps(prompt)}
```

transformers reads it too: `AutoModelForCausalLM.from_pretrained({json.dumps(model_id)}, gguf_file="{name}")`.
"""
    return text
