"""How well a model answers conversations: the loss on the assistant's tokens (each answer and its
end-of-turn token, as fine-tuning trains them) given everything before them, as bits per byte of the
answers' text. evaluate.py scores chat data this way; the trainer's held-out figure is the same quantity
over its packed validation rows."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from smolm135.data.chat import (
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


@torch.no_grad()
def score_conversations(logits: LogitsFn, tokenizer, files: list[Path], shape: ConversationShape, context: int,
                        device: torch.device, skip_bad: bool = False, show_progress: bool = True,
                        desc: str = "scoring") -> tuple[Score, Fitting]:
    """Every conversation of `files`, rendered by the tokenizer's chat template and scored alone: the summed
    loss of its assistant tokens, their count, and the UTF-8 bytes of its answers. A conversation longer than
    `context` + 1 tokens is scored up to its last answer that fits (counted in the returned Fitting)."""
    encoder = ConversationEncoder(tokenizer)
    fitting, nats, tokens, answer_bytes = Fitting(), 0.0, 0, 0
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
        nats += float(losses[scored].sum())
        tokens += int(scored.sum())
        answer_bytes += sum(encoded.answer_bytes)
    if not tokens:
        raise UserError(f"no conversation in {files[0]} has an answer that fits a context of {context} tokens")
    return Score(nats, tokens, answer_bytes), fitting
