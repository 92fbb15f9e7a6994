"""The model card (README.md) of an exported Hugging Face folder: Hub metadata, what the model is, how it was
trained, and code that loads it."""
from __future__ import annotations

import json

from smollm135_model import GPT2_VOCAB_SIZE, SAMPLING, VOCAB_PADDING_MULTIPLE, ModelConfig

from smolm135.checkpoint import TRAINING_INFO_FILE, TrainingFacts
from smolm135.errors import UserError, is_number
from smolm135.interop.export_card import runtimes_section
from smolm135.interop.markdown import escape_markdown
from smolm135.data.tokenizer import END_OF_TEXT, END_OF_TEXT_ID

USAGE_PROMPT = "To be, or not to be"
CARD_TAGS = ("smolm135", "gpt", "causal-lm", "text-generation")
# The Hub's tag for a repository whose model class is in its own files: a learned-position export needs
# `trust_remote_code=True`; a rotary one is a plain Llama folder and says so with the "llama" tag instead.
REMOTE_CODE_TAG, LLAMA_TAG, GGUF_TAG = "custom_code", "llama", "gguf"

DEFAULT_LICENSE = "apache-2.0"  # what a card's metadata says unless the export is given another license
# The license identifiers the Hub recognises in a card's metadata (huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = (
    DEFAULT_LICENSE, "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr",
    "mpl-2.0", "odc-by", "odbl", "openmdw-1.0", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa",
    "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license",
    "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "grok2-community", "gemma", "unknown",
    "other",
)


def check_license(license: str) -> None:
    """UserError unless `license` is one of the Hub's identifiers (anything else would be pasted into the
    card's metadata as it stands)."""
    if license not in HUB_LICENSES:
        raise UserError(f"--license {license!r} is not a license identifier the Hugging Face Hub knows (e.g. "
                        f"{DEFAULT_LICENSE}, mit, cc-by-4.0; the list: https://huggingface.co/docs/hub/repositories-"
                        f"licenses); use 'other' for a license of your own")


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
    """A recorded number, formatted; anything else a checkpoint may hold in its place is 'not recorded'."""
    if not is_number(value):
        return "not recorded"
    return format(value, fmt)


def card_tags(rotary: bool, gguf_files: tuple[str, ...] = ()) -> list[str]:
    """The card's tags: `custom_code` only where loading needs the folder's own code (learned positions)."""
    kind = (LLAMA_TAG, *([GGUF_TAG] if gguf_files else [])) if rotary else (REMOTE_CODE_TAG,)
    return [*CARD_TAGS, *kind]


def card_metadata(license: str, tags: list[str]) -> str:
    """The YAML header, written by huggingface_hub's ModelCardData (values quoted as YAML needs them)."""
    from huggingface_hub import ModelCardData

    check_license(license)
    metadata = ModelCardData(license=license, library_name="transformers", pipeline_tag="text-generation",
                             tags=tags)
    return f"---\n{metadata.to_yaml()}\n---\n"


def origin_sentence(facts: TrainingFacts) -> str:
    """Where the weights began: a run's `--init-from` (a pretrained model or a checkpoint), else from scratch."""
    start = facts.train_config.get("init_from") if isinstance(facts.train_config, dict) else None
    if isinstance(start, str) and start:
        return f"trained with smolm135, starting from {escape_markdown(start)}"
    return "trained from scratch with smolm135"


def tokenizer_sentence(tokenizer) -> tuple[str, str]:
    """The card's words for the tokenizer, and for the vocabulary row of the architecture table."""
    own = getattr(tokenizer, "tokenizer_json", None) is not None
    if own:
        origin = tokenizer.origin or "the one the model started with"  # a learned one names its corpus: escaped
        return (f"The tokenizer is {escape_markdown(origin)} ({tokenizer.n_vocab:,} tokens, `tokenizer.json` "
                f"in this folder).", f"{tokenizer.n_vocab:,} tokens")
    return (f"The tokenizer is GPT-2's byte-level BPE (`{END_OF_TEXT}` = {END_OF_TEXT_ID}).",
            f"GPT-2's {GPT2_VOCAB_SIZE:,} tokens padded to a multiple of {VOCAB_PADDING_MULTIPLE}")


def render_model_card(model_config: ModelConfig, parameters: int, facts: TrainingFacts, model_id: str,
                      name: str, license: str, has_loss_plot: bool, gguf_files: tuple[str, ...] = (),
                      tokenizer=None) -> str:
    """README.md text: YAML metadata for the Hub, then architecture, training, loss plot and usage (for a
    rotary model, exported as a plain Llama folder: the runtimes that load it and its `gguf_files`). Text that
    comes from a file (the data's name, the model's name, the starting point) is escaped: it shows as written,
    never as markup. `tokenizer`: the model's own (`smolm135.data.tokenizer`); None means GPT-2's."""
    cfg = model_config
    tokenizer_words, vocabulary_words = tokenizer_sentence(tokenizer)
    rotary = cfg.position_embedding == "rotary"
    positions = "rotary positions (the Llama layout)" if rotary else "learned position embeddings"
    code = ("It is a plain `LlamaForCausalLM`: no code of its own, no `trust_remote_code`." if rotary else
            "The modeling code is in this folder\n(`modeling_smolm135.py`, `smollm135_model.py`), hence "
            "`trust_remote_code=True`.")
    usage = runtimes_section(model_id, USAGE_PROMPT, gguf_files) if rotary else f"""## Usage

```python
{usage_snippet(model_id)}```
"""
    named = isinstance(facts.data_name, str) and facts.data_name
    data = escape_markdown(facts.data_name) if named else "not recorded"
    plot = ("![Training and validation loss](loss.png)" if has_loss_plot
            else "The checkpoint holds no loss history, so there is no plot.")
    return card_metadata(license, card_tags(rotary, gguf_files)) + f"""
# {escape_markdown(name)}

A GPT-style language model {origin_sentence(facts)}: {positions}, pre-norm blocks
of causal self-attention and a SwiGLU MLP, RMSNorm, and an output head tied to the token embedding.
{tokenizer_words}

## Architecture

| | |
| --- | --- |
| parameters (tied embedding counted once) | {parameters:,} |
| layers | {cfg.n_layer} |
| hidden size | {cfg.n_embd} |
| attention heads (key/value heads) | {cfg.n_head} ({cfg.n_kv_head}), head size {cfg.head_dim} |
| MLP (SwiGLU) width | {cfg.intermediate_size} |
| context length | {cfg.block_size} tokens |
| vocabulary | {cfg.vocab_size:,} ({vocabulary_words}) |

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
