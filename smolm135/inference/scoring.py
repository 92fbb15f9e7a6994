"""How well a model predicts a text: loss per token, perplexity and bits per byte, over sliding windows.

Bits per byte is the figure that compares models with different tokenizers: the text's total negative
log-likelihood in bits divided by its UTF-8 bytes, each byte counted once. Each document is scored after
the end-of-text token that starts it (as documents follow one another in training), so its first token is
predicted too and every byte of the text is covered; the end-of-text tokens themselves are context, not
scored. A long text is scored in windows of `context` tokens that advance by `stride`: every token is
scored exactly once, with at least `context - stride` tokens before it (fewer only at the very start).

`score_documents` is what evaluate.py calls; `score_tokens` works on an already tokenized stream (a
validation split), and `bits_per_byte` turns any loss sum into bits per byte.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # input ids (B, T) -> next-token logits (B, T, V)
WINDOW_TOKENS_PER_BATCH = 4096  # windows per forward = this // context: about 0.8 GB of fp32 logits at V=50k


@dataclass(frozen=True)
class Score:
    nats: float  # summed negative log-likelihood of the scored tokens
    tokens: int  # tokens scored
    text_bytes: int  # UTF-8 bytes of the scored text

    @property
    def loss(self) -> float:
        """Mean loss per token (nats); comparable only between models that share a tokenizer."""
        return self.nats / self.tokens

    @property
    def perplexity(self) -> float:
        """exp(loss); infinite past what a float holds (a loss above about 709 nats: a model that is no model)."""
        try:
            return math.exp(self.loss)
        except OverflowError:
            return math.inf

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nats, self.text_bytes)


def bits_per_byte(nats: float, text_bytes: int) -> float:
    """Total nats of a text -> bits per UTF-8 byte of it."""
    return nats / math.log(2) / text_bytes


def token_stream(documents: Iterable[str], encode: Callable[[str], list[int]],
                 end_of_text_id: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Documents -> (tokens (N,), scored (N,) bool, UTF-8 bytes of the documents): each document's tokens
    after an end-of-text token, which is context and not scored."""
    ids, scored, text_bytes = [], [], 0
    for document in documents:
        document_ids = encode(document)
        ids += [end_of_text_id, *document_ids]
        scored += [False] + [True] * len(document_ids)
        text_bytes += len(document.encode("utf-8"))
    return np.array(ids, dtype=np.int64), np.array(scored, dtype=bool), text_bytes


def window_spans(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first_scored) of each window over a stream of n_tokens: inputs tokens[begin:end],
    targets tokens[begin+1:end+1], of which those at target index >= first_scored are scored (target index
    t predicts token t + 1). Windows all have min(context, n_tokens - 1) inputs: the last one ends at the
    stream's end instead of running short, so that windows stack into batches."""
    n_targets = n_tokens - 1
    length = min(context, n_targets)
    spans, scored_until, begin = [], 0, 0
    while scored_until < n_targets:
        begin = min(begin, n_targets - length)
        spans.append((begin, begin + length, scored_until))
        scored_until = begin + length
        begin += stride
    return spans


@torch.no_grad()
def score_tokens(logits_fn: LogitsFn, tokens: np.ndarray, scored: np.ndarray, context: int, stride: int,
                 device: torch.device, batch_windows: int | None = None, show_progress: bool = False,
                 desc: str = "scoring") -> tuple[float, int]:
    """Summed nats and count of the scored next-token predictions of `tokens` (N,), where `scored` (N,)
    marks the tokens whose prediction counts (tokens[0] is never predicted)."""
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in 1..context, got {stride} with context {context}")
    spans = window_spans(len(tokens), context, stride)
    batch_windows = batch_windows or max(1, WINDOW_TOKENS_PER_BATCH // context)
    token_tensor = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    scored_tensor = torch.from_numpy(np.asarray(scored, dtype=bool))
    nats, count = 0.0, 0
    with tqdm(total=len(spans), desc=desc, unit="window", disable=not show_progress, leave=False) as bar:
        for first in range(0, len(spans), batch_windows):
            batch = spans[first:first + batch_windows]
            x = torch.stack([token_tensor[b:e] for b, e, _ in batch]).to(device)  # (B, T)
            y = torch.stack([token_tensor[b + 1:e + 1] for b, e, _ in batch]).to(device)  # (B, T)
            counts = torch.stack([scored_tensor[b + 1:e + 1] for b, e, _ in batch])  # (B, T)
            for row, (b, _, first_scored) in enumerate(batch):
                counts[row, : first_scored - b] = False  # scored by an earlier window
            logits = logits_fn(x).float()  # (B, T, V)
            losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view_as(y)  # (B, T)
            mask = counts.to(device)
            nats += losses[mask].double().sum().item()
            count += int(mask.sum())
            bar.update(len(batch))
    return nats, count


def score_documents(logits_fn: LogitsFn, documents: Iterable[str], encode: Callable[[str], list[int]],
                    end_of_text_id: int, context: int, stride: int, device: torch.device,
                    batch_windows: int | None = None, show_progress: bool = False, desc: str = "scoring") -> Score:
    """Score a model on documents: the figures evaluate.py prints."""
    tokens, scored, text_bytes = token_stream(documents, encode, end_of_text_id)
    if not scored.any():
        raise ValueError("the documents hold no tokens to score")
    nats, count = score_tokens(logits_fn, tokens, scored, context, stride, device, batch_windows,
                               show_progress, desc)
    return Score(nats, count, text_bytes)


def validation_bits_per_byte(model, tokens: np.ndarray, context: int, device: torch.device, dtype: torch.dtype,
                             separator_id: int, text_bytes: Callable[[np.ndarray], int],
                             max_tokens: int | None = None) -> Score:
    """A native model's score on a tokenized split (the trainer's validation tokens, (N,)), in windows of
    `context` that do not overlap, as training sees text; separators are context only, as in
    score_documents. `max_tokens` scores only the split's beginning (the (B, T, vocab) logits are the cost);
    `text_bytes` counts the bytes of text some ids spell (the tokenizer's `text_bytes`)."""
    from smolm135.runtime.device import autocast

    tokens = np.asarray(tokens[:max_tokens] if max_tokens else tokens, dtype=np.int64)
    scored = tokens != separator_id
    scored[0] = False  # never predicted: nothing comes before it
    was_training = model.training
    model.eval()

    def logits(x):  # (B, T) -> (B, T, V)
        with autocast(device, dtype):
            return model(x)[0]

    nats, count = score_tokens(logits, tokens, scored, context, context, device)
    model.train(was_training)
    return Score(nats, count, text_bytes(tokens[scored]))
