"""Fine-tuning on conversations, as the trainer's loop asks for it: the packed rows of a step (a pure function
of seed and step, as text batches are), the assistant-token loss on held-out conversations, and a held-out
user turn answered through the chat template (the sample)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from smolm135.data.chat import IGNORE_INDEX, ChatData, ConversationShape, Windows, detect_shape, load_chat_data
from smolm135.data.corpus import DEFAULT_DATA, TRAIN_STREAM, Corpus, resolve_sources
from smolm135.data.tokenizer import CHAT_TEMPLATES, has_chat_template_named
from smolm135.errors import UserError
from smolm135.inference.chat_scoring import AnswersRight, answers_right
from smolm135.inference.generation import reply
from smolm135.interop.pretrained import SMOLLM2_INSTRUCT
from smolm135.runtime.device import autocast


def row_indices(n_windows: int, n_rows: int, seed: int, stream: int, index: int) -> np.ndarray:
    """Which packed rows make up global batch `index`: a pure function of (seed, stream, index)."""
    return np.random.default_rng([seed, stream, index]).integers(0, n_windows, size=n_rows)


def window_batch(windows: Windows, rows: np.ndarray, device: torch.device):
    """Rows of packed windows -> inputs, targets and document ids, (B, T) each, on `device`."""
    batch = [torch.from_numpy(array[rows]) for array in (windows.inputs, windows.targets, windows.segments)]
    return [tensor.to(device, non_blocking=device.type == "cuda") for tensor in batch]


def train_batch(chat: ChatData, seed: int, step: int, global_batch: int, local: slice, device: torch.device):
    """This process's share (`local`, from data.local_rows) of step `step`'s global batch of packed rows."""
    rows = row_indices(len(chat.train), global_batch, seed, TRAIN_STREAM, step)
    return window_batch(chat.train, rows[local], device)


def evaluation_rows(chat: ChatData, max_rows: int) -> np.ndarray:
    """The held-out rows scored at each evaluation: all of them, or `max_rows` (--eval-batches global
    batches) spread evenly over them: rows are packed longest conversations first, so the first rows alone
    would judge the model on long conversations only."""
    n_rows = len(chat.val)
    return np.arange(n_rows) if n_rows <= max_rows else np.arange(max_rows) * n_rows // max_rows


@torch.no_grad()
def assistant_loss(model, chat: ChatData, batch_size: int, max_rows: int, device, dtype, vocab_limit: int,
                   rank: int = 0, world_size: int = 1) -> tuple[float, AnswersRight]:
    """Mean loss per assistant token over the held-out rows `evaluation_rows` picks, each process scoring
    every world_size-th of them, and the answers greedy decoding gives word for word (`answers_right`, its
    tokens below `vocab_limit`). It sums over every assistant token (end-of-turn included) and divides
    once, so the figure does not depend on how the rows are batched or shared out. `model` is the bare
    model (no DDP or compile wrapper): its final norm's output gives the logits of the answers' positions
    alone, where the whole (B, T, V) logits would not fit a large batch."""
    was_training = model.training
    model.eval()
    mine = evaluation_rows(chat, max_rows)[rank::world_size]
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # nats, tokens, answers right, answers
    final_states = []
    hook = model.transformer.ln_f.register_forward_hook(lambda module, inputs, output: final_states.append(output))
    try:
        for start in range(0, len(mine), batch_size):
            x, y, documents = window_batch(chat.val, mine[start:start + batch_size], device)  # (B, T) each
            final_states.clear()
            with autocast(device, dtype):
                _, loss = model(x, y, return_logits=False, document_ids=documents)
                scored = y != IGNORE_INDEX  # (B, T)
                predicted = torch.full_like(y, IGNORE_INDEX)
                predicted[scored] = model.lm_head(final_states[-1][scored])[:, :vocab_limit].argmax(-1)
            right = answers_right(predicted, y, documents)
            sums += torch.tensor([loss.double() * scored.sum(), scored.sum(), right.right, right.answers],
                                 dtype=torch.float64, device=device)
    finally:
        hook.remove()
    if world_size > 1:
        dist.all_reduce(sums)
    model.train(was_training)
    nats, tokens, right, answers = sums.tolist()
    return nats / max(1.0, tokens), AnswersRight(int(right), int(answers))


def bits_per_answer_byte(chat: ChatData, loss: float, max_rows: int) -> float:
    """A loss per assistant token over the evaluated held-out rows as bits per UTF-8 byte of the answers
    (their text; the end-of-turn tokens are scored but add no bytes): comparable across tokenizers."""
    rows = evaluation_rows(chat, max_rows)
    tokens = int((chat.val.targets[rows] != IGNORE_INDEX).sum())
    return loss / math.log(2) * tokens / max(1, int(chat.val.answer_bytes[rows].sum()))


def answer_sample(model, tokenizer, messages: list[dict], max_new_tokens: int, seed: int) -> str:
    """The model's answer to `messages` (a held-out conversation up to a user turn), sampled under the
    generation policy until the end of its turn, after the question."""
    return f"user: {messages[-1]['content']}\nassistant: {reply(model, tokenizer, messages, max_new_tokens, seed)}"


# ------------------------------------------------------------------ a run's conversations


def conversation_shape(cfg) -> ConversationShape | None:
    """The shape of --data's conversations per --format, or None when the run trains on text."""
    if cfg.format == "text" or (cfg.data == DEFAULT_DATA and not Path(cfg.data).exists()):
        return None  # the default corpus (written when absent) is text
    return detect_shape(resolve_sources(cfg.data), cfg.format)  # writes the built-in quiz when named and absent


def check_chat_template_flag(cfg, shape: ConversationShape | None, tokenizer) -> None:
    """--chat-template NAME where it cannot apply, refused before anything is written: with text data (a template
    renders conversations); on a model whose tokenizer has another template (its own renders them; the named
    one, as a resumed run's own checkpoint has it, needs nothing more); on a model trained from scratch whose
    tokenizer would be learned from --data (GPT-2's is the one there is before --data is read)."""
    if cfg.chat_template is None:
        return
    flag = f"--chat-template {cfg.chat_template}"
    if shape is None:
        raise UserError(f"{flag} renders conversations, and --data {cfg.data} holds text: leave {flag} out, or give "
                        f"a conversation table ('messages', 'prompt'/'completion' or Alpaca's columns)")
    has_another = tokenizer is not None and tokenizer.has_chat_template
    if has_another and not has_chat_template_named(tokenizer, cfg.chat_template):
        raise UserError(f"{flag}: the model already has a chat template ({tokenizer.description}), which renders "
                        f"the conversations: leave {flag} out")
    if tokenizer is None and cfg.learns_tokenizer:
        raise UserError(f"{flag} on a model trained from scratch takes GPT-2's tokenizer, but this run would learn "
                        f"one from --data (--tokenizer {cfg.tokenizer}, the {cfg.preset} model): train it on text "
                        f"first and pass that checkpoint as --init-from, or train a preset with GPT-2's vocabulary "
                        f"(e.g. --preset tiny) with --tokenizer auto")


def refuse_without_template(cfg, shape: ConversationShape | None, tokenizer) -> None:
    """Conversations need a chat template to be rendered: a model trained from scratch (no tokenizer yet:
    GPT-2's, or one learned from the corpus) or one whose tokenizer has none refuses them, before anything
    is written, naming --chat-template, which gives it one."""
    if shape is not None and (tokenizer is None or not tokenizer.has_chat_template):
        reads = tokenizer.description if tokenizer is not None else "a tokenizer without one (GPT-2's or a learned BPE)"
        known = ", ".join(CHAT_TEMPLATES)
        raise UserError(f"--data {cfg.data} holds conversations ({shape.name}), but the model has no chat template "
                        f"to render them ({reads}): pass --chat-template {known} to give it one, fine-tune a chat "
                        f"model (e.g. --init-from {SMOLLM2_INSTRUCT}), or pass --format text to train on a text "
                        f"column")


def load_conversations(cfg, shape: ConversationShape, tokenizer) -> tuple[ChatData, Corpus, np.ndarray, np.ndarray]:
    """--data's conversations for a run: the packed data, and the corpus and token views the run describes
    itself by (their key decides the data position a checkpoint records)."""
    files = resolve_sources(cfg.data)
    chat = load_chat_data(files, shape, tokenizer, cfg.seq_len, cfg.loss_on, cfg.val_fraction, cfg.skip_bad_records)
    if chat.max_token_id >= cfg.model.vocab_size:
        raise UserError(f"the conversations hold token id {chat.max_token_id}, outside the model's vocabulary of "
                        f"{cfg.model.vocab_size}: the model and its tokenizer do not belong together")
    train_tokens, val_tokens = chat.train.inputs.reshape(-1), chat.val.inputs.reshape(-1)  # (W * T,) each
    corpus = Corpus(np.concatenate([train_tokens, val_tokens]), files, chat.key, chat.max_token_id, 0, False, tokenizer)
    return chat, corpus, train_tokens, val_tokens
