"""The generation policy, as the scripts ask for it: the sampling defaults, a prompt's ids (an empty one starts
from the tokenizer's `start_token_id`), and how a prompt (or a chat's conversation) and its continuation are fitted into the model's context.

The sampling defaults (`SAMPLING`) and the fitting rule (`fit_to_context`) are defined in `smollm135_model.py`,
because its `generate` uses them and that file travels with every exported model; the demo (`app.py`), the
trainer's samples, the exported `generation_config.json` and the model card take them from here.
"""
from __future__ import annotations

import numpy as np
import torch

from smollm135_model import SAMPLING, Sampling, SmoLM135_Model, fit_to_context

from smolm135.data.tokenizer import start_token_id

__all__ = ["SAMPLING", "Sampling", "answer", "continue_ids", "continue_text", "decode_bytes", "fit_conversation",
           "fit_prompt", "opening_of", "prompt_ids_of", "reply"]

# How long a prompt taken from the validation text is (the trainer's samples): a sentence or two, and room
# left for the continuation in the smallest presets' contexts.
OPENING_TOKENS = 32
# How far into the validation text a document start is looked for; a text that holds none there (one long
# file) is opened where the split begins.
OPENING_SEARCH_TOKENS = 1 << 20


def prompt_ids_of(tokenizer, prompt: str) -> list[int]:
    """A text prompt's ids; an empty one starts from `start_token_id`."""
    return tokenizer.encode(prompt) or [start_token_id(tokenizer)]


def fit_prompt(prompt_ids: list[int], max_new_tokens: int, context_length: int) -> tuple[list[int], int, list[str]]:
    """Make prompt + new tokens fit the context (the rule: `fit_to_context`): the prompt loses its first tokens
    as far as the new ones need, but keeps at least half the context (or all of itself, if shorter); the new
    tokens stop at the context. Returns (kept ids, new tokens that fit, notes saying what was cut)."""
    keep, fitting = fit_to_context(len(prompt_ids), max_new_tokens, context_length)
    kept = prompt_ids[len(prompt_ids) - keep:]
    notes = []
    if len(kept) < len(prompt_ids):
        notes.append(f"The prompt has {len(prompt_ids):,} tokens; with {fitting:,} new ones in a context of "
                     f"{context_length:,}, only its last {len(kept):,} tokens were used.")
    if fitting < max_new_tokens:
        notes.append(f"{fitting:,} new tokens instead of {max_new_tokens:,}: the context holds {context_length:,} "
                     f"tokens and the prompt takes {len(kept):,}.")
    return kept, fitting, notes


def fit_conversation(messages: list[dict], encode_chat, max_new_tokens: int,
                     context_length: int) -> tuple[list[int], int, list[str]]:
    """A chat's prompt fitted like any prompt (`fit_prompt`), but by whole turns: the oldest turns (a user
    message and what followed it) are left out until the rendered rest is kept whole. `encode_chat` maps a
    list of messages to the ids of its rendering. When even the newest turn alone is too long, `fit_prompt`
    cuts its first tokens. Returns (ids, new tokens that fit, notes saying what was left out)."""
    starts = sorted({0, *(i for i, message in enumerate(messages) if message["role"] == "user")})
    encoded = {}

    def ids_from(k: int) -> list[int]:  # the conversation from its k-th possible start on, rendered once
        if k not in encoded:
            encoded[k] = encode_chat(messages[starts[k]:])
        return encoded[k]

    def kept_whole(ids: list[int]) -> bool:
        return fit_to_context(len(ids), max_new_tokens, context_length)[0] == len(ids)

    # fewer turns never take more tokens: bisect for the first start whose rest is kept whole (or the last)
    low, high = 0, len(starts) - 1
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if kept_whole(ids_from(middle)) else (middle + 1, high)
    prompt_ids, fitting, notes = fit_prompt(ids_from(low), max_new_tokens, context_length)
    if starts[low]:
        notes.insert(0, f"The conversation is too long for the context of {context_length:,} tokens with "
                        f"{max_new_tokens:,} new ones: its oldest {starts[low]:,} messages were left out.")
    return prompt_ids, fitting, notes


def decode_bytes(encoder, token_ids: list[int]) -> bytes:
    """The text of `token_ids` as UTF-8 bytes (tiktoken). The padding rows of the embedding are no tokens of
    the tokenizer, yet an undertrained model may pick one: they decode to nothing instead of raising."""
    return encoder.decode_bytes([token_id for token_id in token_ids if token_id < encoder.n_vocab])


def opening_of(tokens, separator_id: int | None, length: int = OPENING_TOKENS) -> list[int]:
    """The first `length` ids of the first document that starts in `tokens` (after the first document
    separator), or of `tokens` themselves when no document starts early on: a prompt from the text itself,
    the same wherever and whenever it is asked for. `tokens` may be a memory-mapped split: only its first
    OPENING_SEARCH_TOKENS are read."""
    head = np.asarray(tokens[:OPENING_SEARCH_TOKENS])  # (n,)
    starts = np.flatnonzero(head == separator_id) + 1 if separator_id is not None else np.array([], dtype=int)
    start = next((int(i) for i in starts if i < len(head) and head[i] != separator_id), 0)
    opening = head[start:start + length]  # (<= length,)
    ends = np.flatnonzero(opening == separator_id) if separator_id is not None else []
    return opening[:ends[0] if len(ends) else length].tolist()  # the one document's, not the next one's


def continue_ids(model: SmoLM135_Model, tokenizer, prompt_ids: list[int], max_new_tokens: int, seed: int,
                 sampling: Sampling = SAMPLING, stop_ids=None) -> tuple[list[int], list[int]]:
    """The prompt fitted into the context, and its sampled continuation (stopping at `stop_ids`, if given).
    A seeded generator of its own leaves the global RNG, and so a training run, alone; ids past the
    tokenizer's vocabulary (the embedding's padding rows) are never sampled, since they spell no text."""
    device = model.lm_head.weight.device
    prompt_ids, fitting, _ = fit_prompt(prompt_ids, max_new_tokens, model.config.block_size)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = model.generate(torch.tensor([prompt_ids], device=device), max_new_tokens=fitting,
                         temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                         eos_token_id=list(stop_ids) if stop_ids else None, generator=generator,
                         vocab_limit=tokenizer.n_vocab)  # (1, kept + new)
    return prompt_ids, out[0, len(prompt_ids):].tolist()


def continue_text(model: SmoLM135_Model, tokenizer, prompt: str, max_new_tokens: int, seed: int,
                  sampling: Sampling = SAMPLING) -> str:
    """The fitted prompt and its sampled continuation, as text. `tokenizer` is one of this project's
    tokenizers (`smolm135.data.tokenizer`); an empty prompt starts from `start_token_id`."""
    kept, continuation = continue_ids(model, tokenizer, prompt_ids_of(tokenizer, prompt), max_new_tokens, seed,
                                      sampling)
    return tokenizer.decode(kept + continuation)


def reply(model: SmoLM135_Model, tokenizer, messages: list[dict], max_new_tokens: int, seed: int,
          sampling: Sampling = SAMPLING) -> str:
    """A chat model's next turn after `messages`, rendered by its chat template with the generation prompt;
    the turn ends where the model ends it (the end token is not part of the text)."""
    prompt_ids = tokenizer.encode(tokenizer.chat_prompt(messages))
    _, ids = continue_ids(model, tokenizer, prompt_ids, max_new_tokens, seed, sampling,
                          stop_ids=tokenizer.end_token_ids)
    return tokenizer.decode([i for i in ids if i not in tokenizer.end_token_ids])


def answer(model: SmoLM135_Model, tokenizer, message: str, max_new_tokens: int, seed: int,
           sampling: Sampling = SAMPLING) -> str:
    """A chat model's reply to one user message (`reply`)."""
    return reply(model, tokenizer, [{"role": "user", "content": message}], max_new_tokens, seed, sampling)
