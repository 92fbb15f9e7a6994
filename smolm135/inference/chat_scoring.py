"""How well a model answers conversations: the loss on the assistant's tokens (each answer and its
end-of-turn token, as fine-tuning trains them) given everything before them, as bits per byte of the
answers' text, and how many answers it would give word for word. evaluate.py scores chat data this way; the
trainer's held-out figures are the same quantities over its packed validation rows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from smolm135.data.chat import (
    IGNORE_INDEX,
    BadRecord,
    BadRecords,
    ConversationEncoder,
    ConversationShape,
    Fitting,
    fit_to_window,
    read_conversations,
)
from smolm135.errors import UserError
from smolm135.inference.scoring import LogitsFn, Score


@dataclass(frozen=True)
class AnswersRight:
    right: int
    answers: int

    def __add__(self, other: "AnswersRight") -> "AnswersRight":
        return AnswersRight(self.right + other.right, self.answers + other.answers)

    @property
    def share(self) -> float:
        return self.right / max(1, self.answers)

    def describe(self) -> str:
        return f"{self.right:,}/{self.answers:,} answers word for word ({self.share:.1%})"


def answers_right(predicted: torch.Tensor, targets: torch.Tensor, segments: torch.Tensor | None = None) -> AnswersRight:
    """The answers in `targets` (B, T), and how many of them greedy decoding gives word for word. An answer is a
    run of consecutive scored targets (not IGNORE_INDEX) in one conversation (`segments` (B, T) tells packed
    ones apart). It is right when the model's most likely next token (`predicted` (B, T)) is the target at
    each of its positions, end-of-turn included: greedy generation after the answer's context then writes
    exactly that answer and ends its turn. So one forward pass tells what generating every answer would."""
    scored = targets != IGNORE_INDEX  # (B, T)
    continues = torch.zeros_like(scored)  # (B, T): the position before is scored, in the same conversation
    continues[:, 1:] = scored[:, :-1] if segments is None else scored[:, :-1] & (segments[:, 1:] == segments[:, :-1])
    starts = scored & ~continues
    answer_of = torch.cumsum(starts.reshape(-1), 0)[scored.reshape(-1)]  # (scored,): 1 .. answers
    answers = int(starts.sum())
    misses = torch.zeros(answers + 1, device=targets.device).index_add_(
        0, answer_of, (predicted != targets)[scored].float())
    return AnswersRight(answers - int(misses[1:].count_nonzero()), answers)


@torch.no_grad()
def score_conversations(logits: LogitsFn, tokenizer, files: list[Path], shape: ConversationShape, context: int,
                        device: torch.device, skip_bad: bool = False, show_progress: bool = True,
                        desc: str = "scoring") -> tuple[Score, AnswersRight, Fitting]:
    """Every conversation of `files`, rendered by the tokenizer's chat template and scored alone: the summed
    loss of its assistant tokens, their count, the UTF-8 bytes of its answers, and the answers greedy decoding
    gives word for word. A conversation longer than `context` + 1 tokens is scored up to its last answer that
    fits (counted in the returned Fitting)."""
    encoder = ConversationEncoder(tokenizer)
    fitting, nats, tokens, answer_bytes, right = Fitting(), 0.0, 0, 0, AnswersRight(0, 0)
    for conversation in tqdm(read_conversations(files, shape, skip_bad, BadRecords()), desc=desc, unit=" conv",
                             disable=not show_progress, leave=False):
        try:
            encoded = fit_to_window(encoder.encode(conversation), context, fitting)
        except BadRecord as problem:  # the template refuses it
            raise UserError(f"{conversation.where}: {problem}") from None
        if encoded is None:
            continue
        ids = torch.from_numpy(encoded.ids).to(device)  # (L,)
        scored = torch.from_numpy(encoded.assistant[1:]).to(device)  # (L-1,): targets that are the assistant's
        log_probs = F.log_softmax(logits(ids[None, :-1])[0].float(), dim=-1)  # (L-1, V)
        losses = -log_probs.gather(1, ids[1:, None]).squeeze(1)  # (L-1,)
        targets = torch.where(scored, ids[1:], IGNORE_INDEX)  # (L-1,)
        right += answers_right(log_probs[:, :tokenizer.n_vocab].argmax(-1)[None], targets[None])
        nats += float(losses[scored].sum())
        tokens += int(scored.sum())
        answer_bytes += sum(encoded.answer_bytes)
    if not tokens:
        raise UserError(f"no conversation in {files[0]} has an answer that fits a context of {context} tokens")
    return Score(nats, tokens, answer_bytes), right, fitting
