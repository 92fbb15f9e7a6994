"""The Gradio demo: streaming generation, chat for models with a template, the model search a Space relies
on (the script `app.py` runs `main`)."""
from __future__ import annotations

import codecs
import inspect
import ipaddress
import math
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import gradio as gr
import torch

from smollm135_model import ModelConfig, SmoLM135_Model, is_greedy
from smolm135.checkpoint import (
    TRAINED_MODEL_GLOBS,
    TrainingFacts,
    newest_trained_model,
)
from smolm135.errors import CommandLineParser, UserError, path_argument
from smolm135.interop.loading import TRUST_ADVICE, TRUST_FLAG, LoadedModel, code_problem, read_config
from smolm135.interop.loading import load_model as load_any_model
from smolm135.inference.generation import SAMPLING, decode_bytes, fit_conversation, fit_prompt
from smolm135.interop.markdown import escape_markdown
from smolm135.runtime.device import pick_device
from smolm135.data.tokenizer import (
    END_OF_TEXT,
    GPT2TextTokenizer,
    JsonTokenizer,
    get_tokenizer,
    render_chat,
    start_token_id,
)

APP_DIR = Path(__file__).resolve().parents[2]  # where app.py lives: the checkout, or a Space's folder
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
MODEL_ENV_VAR = "SMOLM135_MODEL"  # lets a Space, which cannot pass arguments, name a Hub model
# The README's quick-start training command (a test keeps the two identical); the recipe's values live in
# smolm135.training.config.RECIPES.
TRAIN_COMMAND = "python Model_smollm135_trainer.py --recipe cpu-scratch"
EXAMPLE_PROMPTS = (
    "To be, or not to be",
    "ROMEO:\nBut, soft! what light",
    "Once upon a time",
    "The king said to his daughter",
)


# ------------------------------------------------------------------ the knobs, and what the API may send


@dataclass(frozen=True)
class Knob:
    """One slider: its range draws the widget and also clamps whatever a client sends through the API."""

    label: str
    minimum: float
    maximum: float
    default: float
    step: float
    integer: bool = False
    info: str = ""


# The sliders start at the project's one sampling policy (smolm135.inference.generation.SAMPLING)
TEMPERATURE = Knob("Temperature", 0.0, 2.0, SAMPLING.temperature, 0.05,
                   info="0 picks the likeliest token every time (greedy)")
TOP_K = Knob("Top-k", 0, 500, SAMPLING.top_k, 1, integer=True, info="sample among the k likeliest tokens; 0 = all")
TOP_P = Knob("Top-p", 0.01, 1.0, SAMPLING.top_p, 0.01, info="sample among the likeliest tokens that reach p; 1 = all")
SEED = Knob("Seed", 0, 2**32 - 1, 0, 1, integer=True, info="the same seed and settings give the same text")
DEFAULT_MAX_NEW_TOKENS = 200
# A GPT-2 token spans at most 128 characters, so the last 128 x context characters of a prompt hold every
# token the context can take: longer prompts are cut to that before tokenizing (a 5 MB paste costs nothing).
MAX_CHARS_PER_TOKEN = 128


def max_new_tokens_knob(context_length: int) -> Knob:
    return Knob("Max new tokens", 1, context_length, min(DEFAULT_MAX_NEW_TOKENS, context_length), 1, integer=True,
                info=f"at most the model's context of {context_length:,} tokens")


def clamp(raw, knob: Knob) -> tuple[float | int, str | None]:
    """(a usable value, a note saying what was changed, or None). Anything not a finite number becomes the
    default; numbers outside the range become its nearest end."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if math.isnan(value):
        value, note = knob.default, f"{knob.label} {raw!r} is not a number: used {number(knob.default)}"
    elif not knob.minimum <= value <= knob.maximum:
        nearest = min(max(value, knob.minimum), knob.maximum)
        note = (f"{knob.label} {number(value)} is outside {number(knob.minimum)}..{number(knob.maximum)}: "
                f"used {number(nearest)}")
        value = nearest
    else:
        note = None
    return (int(round(value)) if knob.integer else value), note


def number(value: float) -> str:
    """4294967295 rather than 4.29497e+09; 0.95 rather than 0.950000."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:g}"


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = TEMPERATURE.default
    top_k: int = TOP_K.default  # 0: no top-k filter
    top_p: float = TOP_P.default  # 1: no top-p filter
    seed: int = SEED.default

    @classmethod
    def from_raw(cls, context_length: int, max_new_tokens, temperature, top_k, top_p, seed):
        """Settings from untrusted values (a page or any API client), and notes on what had to change."""
        knobs = (max_new_tokens_knob(context_length), TEMPERATURE, TOP_K, TOP_P, SEED)  # in field order
        clamped = [clamp(raw, knob) for raw, knob in zip((max_new_tokens, temperature, top_k, top_p, seed), knobs)]
        return cls(*(value for value, _ in clamped)), [note for _, note in clamped if note]


# ------------------------------------------------------------------ the two kinds of model


@dataclass(frozen=True)
class ModelInfo:
    """What the page says about the loaded model."""

    source: str  # file, folder or Hub id
    kind: str  # "native checkpoint" or "Hugging Face model"
    parameters: int
    context_length: int
    training: TrainingFacts = TrainingFacts()  # what the checkpoint or training_info.json says


class NativeTextModel:
    """A smolm135 checkpoint, decoded with the model's own KV-cache `generate_stream`."""

    def __init__(self, model: SmoLM135_Model, info: ModelInfo, tokenizer=None):
        self.model, self.info = model, info
        # GPT-2's (models trained from scratch) or the model's own (started from SmolLM & co), as recorded
        self.tokenizer = tokenizer if tokenizer is not None else GPT2TextTokenizer()
        self.encoder = get_tokenizer()
        self.start_token_id = start_token_id(self.tokenizer)  # None: an empty prompt cannot start
        self.end_token_ids = self.tokenizer.end_token_ids  # a chat model's end of turn, and the end of a text

    @property
    def has_chat_template(self) -> bool:
        return self.tokenizer.has_chat_template

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation rendered by the model's chat template, with the prompt for the assistant's reply."""
        return self.encode(self.tokenizer.chat_prompt(messages))

    def encode(self, text: str) -> list[int]:
        if isinstance(self.tokenizer, JsonTokenizer):
            return self.tokenizer.encode(text)  # its special tokens typed in a prompt are read as such
        # `<|endoftext|>` typed in a prompt means the separator the trainer puts between files
        return self.encoder.encode(text, allowed_special={END_OF_TEXT})

    def stream(self, prompt_ids: list[int], settings: GenerationSettings) -> Iterator[tuple[str, int]]:
        """Yield (the next piece of text, new tokens so far); a character split across tokens waits for its end."""
        device = self.model.lm_head.weight.device
        generator = torch.Generator(device=device).manual_seed(settings.seed)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens = self.model.generate_stream(
            torch.tensor([prompt_ids], device=device),  # (1, T)
            max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
            top_k=settings.top_k or None, top_p=settings.top_p, eos_token_id=self.end_token_ids,
            generator=generator, vocab_limit=self.tokenizer.n_vocab)  # padding rows past the vocabulary: never
        if isinstance(self.tokenizer, JsonTokenizer):
            yield from self._stream_by_decoding(tokens)
            return
        n_tokens = 0
        for token in tokens:  # (1,)
            token_id = token.item()
            n_tokens += 1
            if token_id in self.end_token_ids:
                break
            yield utf8.decode(decode_bytes(self.encoder, [token_id])), n_tokens
        yield utf8.decode(b"", final=True), n_tokens

    def _stream_by_decoding(self, tokens) -> Iterator[tuple[str, int]]:
        """A tokenizer.json model's tokens as text: the continuation so far is decoded again for each token and
        its new end yielded, held back while it ends in half a character."""
        ids, shown = [], ""
        for token in tokens:  # (1,)
            if token.item() in self.end_token_ids:
                ids.append(token.item())
                break
            ids.append(token.item())
            text = self.tokenizer.decode(ids)
            if not text.endswith("\ufffd"):
                yield text[len(shown):], len(ids)
                shown = text
        text = self.tokenizer.decode([i for i in ids if i not in self.end_token_ids])
        yield text[len(shown):], len(ids)


class TransformersTextModel:
    """A model loaded through transformers' Auto classes, streamed with TextIteratorStreamer."""

    def __init__(self, model, tokenizer, info: ModelInfo):
        self.model, self.tokenizer, self.info = model, tokenizer, info
        self.start_token_id = start_token_id(tokenizer)  # None: an empty prompt cannot start

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # long prompts are cut later

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation rendered by the folder's chat template (generate() then stops at the end tokens its
        generation_config.json lists)."""
        return self.encode(render_chat(self.tokenizer.chat_template, messages, **self.tokenizer.special_tokens_map))

    def stream(self, prompt_ids: list[int], settings: GenerationSettings) -> Iterator[tuple[str, int]]:
        """Yield (the next piece of text, new tokens so far), while generate() runs in a thread."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        stop, progress, failure = threading.Event(), {"tokens": 0}, []

        class CountAndStopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # input_ids (1, prompt + new)
                progress["tokens"] = input_ids.shape[1] - len(prompt_ids)
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        input_ids = torch.tensor([prompt_ids], device=self.model.device)  # (1, T)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        sampling = (dict(do_sample=True, temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p)
                    if not is_greedy(settings.temperature) else dict(do_sample=False))
        kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                      max_new_tokens=settings.max_new_tokens, streamer=streamer,
                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                      stopping_criteria=StoppingCriteriaList([CountAndStopWhenAsked()]), **sampling)

        def generate():
            try:
                # generate() samples from the global RNG: seed it for this call only, and give it back as it was
                # (the page's queue runs one generation at a time)
                with torch.random.fork_rng():
                    torch.manual_seed(settings.seed)
                    self.model.generate(**kwargs)
            except BaseException as error:  # handed to the page's thread below, not swallowed
                failure.append(error)
                streamer.end()  # or the loop below would wait forever for text that never comes

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        try:
            for piece in streamer:
                yield piece, progress["tokens"]
        finally:
            stop.set()  # the page's Stop button (or a closed connection) ends the generation early
            worker.join()
        if failure:
            raise failure[0]
        yield "", progress["tokens"]


def generation_context_length(config) -> int:
    """The positions a transformers model can attend over (GPT-2's 1,024 when its config names none)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 1024


# ------------------------------------------------------------------ finding and loading a model


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / name).is_file() for name in HF_WEIGHT_FILES)


def find_hf_folder(search_dirs: list[Path], say=print) -> Path | None:
    """A converted Hugging Face model: one of the folders itself (a Space that is a model repo) or a folder
    inside one (`smolm135-tiny-hf/`); the most recently written wins. A folder that would run Python code
    other than this project's is never picked by itself (smolm135.interop.loading's trust policy): name it with
    --trust-remote-code."""
    candidates = []
    for folder in (folder for base in search_dirs for folder in [base, *sorted(base.iterdir())]):
        if not (folder.is_dir() and is_hf_folder(folder)):
            continue
        try:
            problem = code_problem(folder, read_config(folder))
        except UserError as error:
            say(f"skipping the Hugging Face folder {folder.name}: {error}")
            continue
        if problem:
            say(f"skipping the Hugging Face folder {folder.name}: {problem}; serve it with --model {folder.name} "
                f"{TRUST_FLAG} if you trust its author")
        else:
            candidates.append(folder)
    return max(candidates, key=lambda folder: (folder / "config.json").stat().st_mtime, default=None)


def default_search_dirs() -> list[Path]:
    """The current folder, and the folder of app.py (where a Space keeps its files)."""
    return list(dict.fromkeys([Path.cwd().resolve(), APP_DIR]))


def text_model(loaded: LoadedModel, device: str = "auto"):
    """What the page generates with: the native model with its own KV-cache decoding, else transformers'."""
    model = loaded.model.to(pick_device(device)).eval()
    if loaded.is_native:
        info = ModelInfo(source=loaded.source, kind=loaded.kind, parameters=model.num_parameters()["total"],
                         context_length=model.config.block_size, training=loaded.facts)
        return NativeTextModel(model, info, loaded.tokenizer)
    info = ModelInfo(source=loaded.source, kind=loaded.kind, parameters=model.num_parameters(),
                     context_length=generation_context_length(model.config), training=loaded.facts)
    return TransformersTextModel(model, loaded.tokenizer, info)


def load_named_model(spec: str, device: str = "auto", trust_remote_code: bool = False, named: bool = True):
    """Any model spec smolm135.interop.loading reads (a checkpoint, a Hugging Face folder or Hub id, a .gguf, ...)."""
    return text_model(load_any_model(spec, trust_remote_code=trust_remote_code, named=named), device)


def load_model(checkpoint: str | None = None, model: str | None = None, device: str = "auto",
               search_dirs: list[Path] | None = None, say=print, trust_remote_code: bool = False):
    """The model the page serves: `checkpoint`, else `model`, else the newest native checkpoint, else a
    Hugging Face folder in `search_dirs`; None when there is none (the page then says how to train one).
    `trust_remote_code` applies to `model` only: a folder found by searching never runs foreign code."""
    if checkpoint and model:
        raise UserError("give --checkpoint or --model, not both")
    if trust_remote_code and not model:
        raise UserError(f"{TRUST_FLAG} applies to the model named by --model: name the folder or Hub id")
    if checkpoint:
        return load_named_model(checkpoint, device)
    if model:
        return load_named_model(model, device, trust_remote_code)
    search_dirs = search_dirs if search_dirs is not None else default_search_dirs()
    newest = newest_trained_model(search_dirs)
    if newest is not None:
        say(f"serving the newest trained model: {newest}")
        return load_named_model(str(newest), device)
    folder = find_hf_folder(search_dirs, say)
    if folder is not None:
        say(f"serving the Hugging Face model in {folder}")
        return load_named_model(str(folder), device, named=False)
    say(f"no trained model found in {', '.join(map(str, search_dirs))}; the page will say how to train one")
    return None


# ------------------------------------------------------------------ generation, as the page sees it


def bound_prompt(prompt: str, context_length: int) -> tuple[str, list[str]]:
    """The prompt's last MAX_CHARS_PER_TOKEN x context characters (all a context can use), and a note when cut."""
    limit = MAX_CHARS_PER_TOKEN * context_length
    if len(prompt) <= limit:
        return prompt, []
    return prompt[-limit:], [too_many_characters("prompt", len(prompt), limit, context_length)]


def too_many_characters(what: str, n_chars: int, limit: int, context_length: int) -> str:
    return (f"The {what} has {n_chars:,} characters; only its last {limit:,} were read "
            f"(more than the model's context of {context_length:,} tokens can hold).")


def generate_text(text_model, prompt, max_new_tokens=DEFAULT_MAX_NEW_TOKENS, temperature=TEMPERATURE.default,
                  top_k=TOP_K.default, top_p=TOP_P.default, seed=SEED.default) -> Iterator[tuple[str, str]]:
    """Yield (the continuation so far, a status line) after every decoded token. The prompt is not echoed:
    each update travels whole to the page, so a long prompt would be sent back once per token.

    Every argument may come from an API client unchecked: values are clamped and each change is reported in
    the status instead of raising."""
    if text_model is None:
        yield "", no_model_message()
        return
    prompt = prompt if isinstance(prompt, str) else ("" if prompt is None else str(prompt))
    info = text_model.info
    settings, notes = GenerationSettings.from_raw(info.context_length, max_new_tokens, temperature, top_k, top_p,
                                                  seed)
    prompt, bound_notes = bound_prompt(prompt, info.context_length)
    notes += bound_notes
    prompt_ids = text_model.encode(prompt)
    if not prompt_ids and text_model.start_token_id is None:
        yield "", status_line(notes, "Empty prompt, and this model's tokenizer has no beginning-of-text token to "
                                     "start from: write a few words.")
        return
    if not prompt_ids:
        prompt_ids = [text_model.start_token_id]
        notes.append("Empty prompt: the model starts from the beginning of a text.")
    prompt_ids, fitting, fit_notes = fit_prompt(prompt_ids, settings.max_new_tokens, info.context_length)
    yield from stream_with_status(text_model, prompt_ids, replace(settings, max_new_tokens=fitting),
                                  notes + fit_notes)


def stream_with_status(text_model, prompt_ids: list[int], settings: GenerationSettings,
                       notes: list[str]) -> Iterator[tuple[str, str]]:
    """Yield (the new text so far, a status line) after every decoded token of a fitted prompt's continuation."""
    text, n_tokens, started = "", 0, time.perf_counter()
    yield text, status_line(notes, "generating…")
    for piece, n_tokens in text_model.stream(prompt_ids, settings):
        text += piece
        yield text, status_line(notes, f"generating… {n_tokens:,} tokens")
    seconds = time.perf_counter() - started
    yield text, status_line(notes, f"{n_tokens:,} new tokens in {seconds:.1f} s "
                                   f"({n_tokens / max(seconds, 1e-9):,.0f} tokens/s)")


def status_line(notes: list[str], progress: str) -> str:
    return "\n\n".join([*notes, progress])


# ------------------------------------------------------------------ chat, for a model with a chat template


CHAT_ROLES = ("user", "assistant")  # all the page's conversation holds


def message_text(content) -> str:
    """A message's text: Gradio 6 sends it as a list of blocks ({"type": "text", "text": ...}), Gradio 5 and
    API clients as a string; files and anything else carry no text."""
    if isinstance(content, str):
        return content
    blocks = content if isinstance(content, list) else [content]
    return "".join(block["text"] for block in blocks if isinstance(block, dict) and isinstance(block.get("text"), str))


def chat_messages(history) -> list[dict]:
    """The conversation a page or API client sent, as {role, content} strings; other roles and malformed
    entries are left out, so they never reach the template."""
    messages = history if isinstance(history, list) else []
    return [{"role": message["role"], "content": message_text(message.get("content"))}
            for message in messages if isinstance(message, dict) and message.get("role") in CHAT_ROLES]


def bound_conversation(messages: list[dict], context_length: int) -> tuple[list[dict], list[str]]:
    """The conversation's last MAX_CHARS_PER_TOKEN x context characters and at most one message per position
    of the context (all it can use; the template spends a token or more on every message), and a note when cut."""
    limit = MAX_CHARS_PER_TOKEN * context_length
    n_chars = sum(len(message["content"]) for message in messages)
    kept, budget = [], limit
    for message in reversed(messages[-context_length:]):
        if budget <= 0:
            break
        kept.append({**message, "content": message["content"][-budget:]})
        budget -= len(message["content"])
    notes = [too_many_characters("conversation", n_chars, limit, context_length)] if n_chars > limit else []
    if len(kept) < len(messages) and not notes:
        notes.append(f"The conversation has {len(messages):,} messages; only its last {len(kept):,} were read "
                     f"(more than the model's context of {context_length:,} tokens can hold).")
    return kept[::-1], notes


def chat_reply(text_model, message, history, max_new_tokens=DEFAULT_MAX_NEW_TOKENS,
               temperature=TEMPERATURE.default, top_k=TOP_K.default, top_p=TOP_P.default,
               seed=SEED.default) -> Iterator[tuple[list[dict], str]]:
    """Yield (the conversation so far, a status line) after every decoded token: `history` (the chat's
    {role, content} messages), then `message`, then the assistant's reply as it streams, until the model ends
    its turn. The prompt is the conversation rendered by the model's chat template; when it does not fit the
    context, its oldest turns are left out (`fit_conversation`) and the status says so.

    Every argument may come from an API client unchecked, as in `generate_text`."""
    conversation = chat_messages(history)
    if text_model is None:
        yield conversation, no_model_message()
        return
    if not text_model.has_chat_template:
        yield conversation, "This model has no chat template: continue a text with Generate instead."
        return
    message = message_text(message)
    if not message.strip():
        yield conversation, "Write a message first."
        return
    info = text_model.info
    settings, notes = GenerationSettings.from_raw(info.context_length, max_new_tokens, temperature, top_k, top_p,
                                                  seed)
    conversation.append({"role": "user", "content": message})
    messages, bound_notes = bound_conversation(conversation, info.context_length)
    try:
        prompt_ids, fitting, fit_notes = fit_conversation(messages, text_model.chat_prompt_ids,
                                                          settings.max_new_tokens, info.context_length)
    except UserError as error:  # the template refused the conversation (a role it does not take, say)
        yield conversation, status_line(notes, escape_markdown(str(error)))
        return
    for reply, status in stream_with_status(text_model, prompt_ids, replace(settings, max_new_tokens=fitting),
                                            notes + bound_notes + fit_notes):
        yield [*conversation, {"role": "assistant", "content": reply}], status


# ------------------------------------------------------------------ the page


def no_model_message() -> str:
    return (f"**No trained model found** (looked for `{'`, `'.join(TRAINED_MODEL_GLOBS)}` and a Hugging Face folder in "
            f"the current folder and beside app.py). Train one first, in a few minutes on a laptop CPU:\n\n```bash\n{TRAIN_COMMAND}\n```\n\n"
            f"then start `python app.py` again (or pass `--checkpoint PATH`, or `--model FOLDER_OR_HUB_ID`).")


def display_name(source: str) -> str:
    """What the page calls a model: a file or folder's own name, never where it lies on the server; a Hub id
    as it is."""
    return Path(source).name if Path(source).exists() else source


def model_summary(info: ModelInfo) -> str:
    parts = [f"**Model:** {escape_markdown(display_name(info.source))} ({info.kind})",
             f"**Parameters:** {info.parameters:,} · **context:** {info.context_length:,} tokens"]
    facts = info.training
    if facts.step is not None:
        tokens = f" ({facts.tokens_seen:,} tokens)" if facts.tokens_seen else ""
        data = f" on {escape_markdown(facts.data_name)}" if facts.data_name else ""
        parts.append(f"**Trained:** {facts.step:,} steps{tokens}{data}")
    if facts.val_loss is not None:
        parts.append(f"**Validation loss:** {facts.val_loss:.3f}")
    return "  \n".join(parts)


def build_demo(text_model=None) -> gr.Blocks:
    """The page: prompt, sliders, streamed output, and what is loaded. `text_model` None shows how to train."""
    context_length = text_model.info.context_length if text_model is not None else ModelConfig().block_size
    # analytics_enabled=False: Gradio reports usage to its servers unless told not to (this, not the
    # GRADIO_ANALYTICS_ENABLED variable, is what it reads first); the demo runs offline and tells no one.
    chat = text_model is not None and text_model.has_chat_template
    with gr.Blocks(title="smolm135", analytics_enabled=False) as demo:
        gr.Markdown("# smolm135\nA language model continues your text: write the start, it writes on."
                    + (" Or chat with it, in the Chat tab." if chat else ""))
        gr.Markdown(model_summary(text_model.info) if text_model is not None else no_model_message(),
                    elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=3), gr.Tabs():
                with gr.Tab("Complete", elem_id="complete-tab"):
                    prompt = gr.Textbox(label="Prompt", lines=4, placeholder="To be, or not to be", elem_id="prompt")
                    with gr.Row():
                        generate = gr.Button("Generate", variant="primary", elem_id="generate")
                        stop = gr.Button("Stop", elem_id="stop")
                    output = gr.Textbox(label="Continuation", lines=12, interactive=False, elem_id="output")
                    status = gr.Markdown(label="Status", elem_id="status")
                    gr.Examples([[example] for example in EXAMPLE_PROMPTS], inputs=[prompt], label="Example prompts")
                if chat:
                    with gr.Tab("Chat", elem_id="chat-tab"):
                        chatbot = gr.Chatbot(label="Chat", elem_id="chatbot", **MESSAGES_FORMAT)
                        chat_input = gr.Textbox(label="Message", lines=1, max_lines=8, placeholder="Say hello",
                                                elem_id="chat-input")  # Enter sends
                        with gr.Row():
                            send = gr.Button("Send", variant="primary", elem_id="send")
                            chat_stop = gr.Button("Stop", elem_id="chat-stop")
                            gr.ClearButton([chatbot, chat_input], value="Clear", elem_id="chat-clear")
                        chat_status = gr.Markdown(label="Status", elem_id="chat-status")
            with gr.Column(scale=2):
                sliders = [slider(max_new_tokens_knob(context_length)), slider(TEMPERATURE), slider(TOP_K),
                           slider(TOP_P)]
                seed = gr.Number(value=SEED.default, label=SEED.label, info=SEED.info, precision=0,
                                 minimum=SEED.minimum, maximum=SEED.maximum)

        def run(prompt, max_new_tokens, temperature, top_k, top_p, seed):  # the API's parameter names
            yield from generate_text(text_model, prompt, max_new_tokens, temperature, top_k, top_p, seed)

        # preprocess=False: the values reach generate_text as sent, which clamps them and says what it changed
        # (Gradio would otherwise reject an out-of-range number with an error, and crash on NaN).
        # One generation at a time, completion or chat alike (one concurrency id): others queue.
        event = generate.click(run, [prompt, *sliders, seed], [output, status], api_name="generate",
                               preprocess=False, concurrency_limit=1, concurrency_id="generation")
        stop.click(None, cancels=[event])
        if chat:
            def reply(message, history, max_new_tokens, temperature, top_k, top_p, seed):
                for conversation, chat_status in chat_reply(text_model, message, history, max_new_tokens,
                                                            temperature, top_k, top_p, seed):
                    yield "", conversation, chat_status  # the message box empties as the message joins the chat

            chat_event = gr.on([send.click, chat_input.submit], reply, [chat_input, chatbot, *sliders, seed],
                               [chat_input, chatbot, chat_status], api_name="chat", preprocess=False,
                               concurrency_limit=1, concurrency_id="generation")
            chat_stop.click(None, cancels=[chat_event])
    return demo


# Gradio 5 shows {role, content} messages only when asked (its default is pairs); Gradio 6 knows no other kind
MESSAGES_FORMAT = {"type": "messages"} if "type" in inspect.signature(gr.Chatbot).parameters else {}


def slider(knob: Knob) -> gr.Slider:
    return gr.Slider(knob.minimum, knob.maximum, value=knob.default, step=knob.step, label=knob.label, info=knob.info)


# ------------------------------------------------------------------ command line


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=path_argument, default=None, help="a native checkpoint (.pt) to serve "
                        f"(default: the newest {' or '.join(TRAINED_MODEL_GLOBS)})")
    source.add_argument("--model", type=path_argument, default=os.environ.get(MODEL_ENV_VAR) or None,
                        help=f"a Hugging Face folder or Hub id to serve (default: ${MODEL_ENV_VAR} if set)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0; anywhere else the page is for this machine only
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1",
                        help="address to listen on (default 127.0.0.1, or $GRADIO_SERVER_NAME); "
                             "0.0.0.0 opens it to your network")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860, or the next free one)")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help=f"let the --model folder or Hub id run its own Python code ({TRUST_ADVICE})")
    return parser


def check_listen_address(host: str, port: int | None) -> None:
    """Refuse a port outside 1..65535 and a host that is no address of this machine, naming the flag, before
    anything is loaded (Gradio would say "Cannot find empty port" for both)."""
    if port is not None and not 1 <= port <= 65535:
        raise UserError(f"--port must be from 1 to 65535 (got {port})")
    if not host.strip():  # getaddrinfo(None) would quietly mean loopback: an empty flag is no address
        raise UserError("--host is empty: use 127.0.0.1 (this machine only), 0.0.0.0 (every network) or one of "
                        "this machine's addresses")
    if re.fullmatch(r"[\d.]+", host):  # looks numeric: an invalid IPv4 address, never a name to look up
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise UserError(f"--host {host} is not a valid IP address: use 127.0.0.1 (this machine only), "
                            f"0.0.0.0 (every network) or one of this machine's addresses") from None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError):
        raise UserError(f"--host {host!r} is neither an IP address nor a name this machine can resolve: use "
                        f"127.0.0.1, 0.0.0.0 or one of this machine's addresses") from None
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as error:
            raise UserError(f"--host {host} is not an address of this machine ({error.strerror}): use 127.0.0.1, "
                            f"0.0.0.0 or one of this machine's addresses") from None


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    check_listen_address(args.host, args.port)
    checkpoint = args.checkpoint
    model = None if checkpoint else args.model  # an explicit --checkpoint beats $SMOLM135_MODEL
    demo = build_demo(load_model(checkpoint, model, args.device, trust_remote_code=args.trust_remote_code))
    try:
        demo.queue(max_size=64).launch(server_name=args.host, server_port=args.port, share=args.share)
    except OSError as error:  # Gradio's "Cannot find empty port", or an address this machine does not have
        raise UserError(f"cannot listen on {args.host}:{args.port or 'the default port'} "
                        f"({str(error).splitlines()[0].split('. ')[0]}): choose another --port or --host") from None
