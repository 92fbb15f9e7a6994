"""Conversations in, packed training windows out: supervised fine-tuning data, as TRL's SFTTrainer reads it.

- The shape of a table is told by its columns (`detect_shape`): `messages` (a list of {role, content}),
  `prompt`/`completion` (strings, or lists of messages), or Alpaca's `instruction`/`input`/`output`; a table
  with none of them (or a .txt file) is text, read by corpus.py. Files and `datasets` datasets (a
  save_to_disk folder, a Hub id) are told apart only by sources.py, whose `records` reads each kind.
- `read_conversations` turns every record into messages and checks them; a bad record is one line naming
  the file or dataset and the record, or (`skip_bad`) is left out and counted.
- `ConversationEncoder` renders a conversation through the model's own chat template, as transformers'
  `apply_chat_template` does, and finds the assistant's tokens by rendering each prefix: the template
  ends the prompt for answer i with `messages[:i]` and the generation prompt, and the answer runs from
  there to the end of `messages[:i + 1]`, up to and including the template's end-of-turn token (the newline
  a template writes after it is scaffolding). SmolLM2's template has no {% generation %} markers, so this
  is the one way that works for every template.
- `pack` lays conversations into windows of seq_len positions (best fit, longest first), each window a row
  of inputs, targets (-100 where no loss is taken) and segment numbers; the model's `document_ids` keep
  attention and positions within a conversation. A conversation longer than a window is cut after the
  last answer that fits.
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from smolm135.data import sources
from smolm135.errors import UserError
from smolm135.data.sources import BadRecord, Source
from smolm135.data.tokenizer import render_chat

FORMATS = ("auto", "text", "chat")  # --format: auto tells conversations from text by the columns
LOSS_ON = ("assistant", "all")  # --loss-on: the assistant's tokens only (as TRL's assistant_only_loss), or all
ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # the targets the loss skips: F.cross_entropy's and linear_cross_entropy's default
SKIP_HINT = "fix or remove it, or pass --skip-bad-records to leave such records out"


# ------------------------------------------------------------------ the shapes a conversation comes in


def message_list(messages):
    """Messages as a list of {role, content}. A `datasets` Sequence of a dict stores them field by field, one
    list per field ({"role": [...], "content": [...]}), and reads them back so: made one dict per message."""
    if not isinstance(messages, dict) or not messages:
        return messages
    fields = list(messages.values())
    if not all(isinstance(values, list) and len(values) == len(fields[0]) for values in fields):
        return messages  # no list of messages (check_messages says so)
    return [dict(zip(messages, values)) for values in zip(*fields)]


def _messages_record(record: dict) -> list:
    return message_list(record["messages"])


def _prompt_completion_record(record: dict) -> list:
    """TRL's prompt-completion records: two strings, or two lists of messages (conversational)."""
    prompt, completion = message_list(record["prompt"]), message_list(record["completion"])
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    if not isinstance(prompt, list) or not isinstance(completion, list):
        raise BadRecord("'prompt' and 'completion' must each be a string or a list of messages")
    return prompt + completion


def _alpaca_record(record: dict) -> list:
    """Alpaca's records: the instruction, then the input (when there is one) after a blank line, as its
    prompt template puts them, answered by the output."""
    instruction, extra = record["instruction"], record.get("input") or ""
    if not isinstance(extra, str):
        raise BadRecord(f"'input' holds {type(extra).__name__}, not text")
    if isinstance(instruction, str) and extra:
        instruction = f"{instruction}\n\n{extra}"
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": record["output"]}]


@dataclass(frozen=True)
class ConversationShape:
    name: str
    columns: tuple[str, ...]  # every record must hold these
    to_messages: Callable[[dict], list]


SHAPES = (
    ConversationShape("messages", ("messages",), _messages_record),
    ConversationShape("prompt/completion", ("prompt", "completion"), _prompt_completion_record),
    ConversationShape("instruction/input/output (Alpaca)", ("instruction", "output"), _alpaca_record),
)


def shape_of_columns(columns: list[str]) -> ConversationShape | None:
    return next((shape for shape in SHAPES if all(column in columns for column in shape.columns)), None)


def detect_shape(files: list[Source], requested: str = "auto") -> ConversationShape | None:
    """The conversation shape of --data per --format, or None for text. Every file must have the same shape."""
    if requested == "text":
        return None
    shapes = {source: None if sources.is_text_file(source) else shape_of_columns(sources.column_names(source))
              for source in files}
    found = set(shapes.values())
    if found == {None}:
        if requested == "chat":
            raise UserError(f"--format chat: {files[0]} holds no conversations; conversation tables have a "
                            f"'messages' column, 'prompt' and 'completion', or 'instruction' and 'output' "
                            f"(.jsonl, .jsonl.gz, .parquet, a datasets save_to_disk folder or hf:NAME)")
        return None
    if len(found) > 1:
        described = "; ".join(f"{source.name}: {shape.name if shape else 'text'}" for source, shape in shapes.items())
        raise UserError(f"--data mixes shapes of records ({described}): give files of one shape, or pass "
                        f"--format text to read them all as text")
    return found.pop()


# ------------------------------------------------------------------ reading and checking records


def check_messages(messages) -> None:
    """Raise BadRecord naming what makes `messages` no conversation to train on."""
    if not isinstance(messages, list) or not messages:
        raise BadRecord("its messages are not a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise BadRecord(f"message {index + 1} is not an object with 'role' and 'content'")
        if message["role"] not in ROLES:
            raise BadRecord(f"message {index + 1} has the unknown role {message['role']!r} (roles: {', '.join(ROLES)})")
        if not isinstance(message["content"], str):
            raise BadRecord(f"message {index + 1}'s content is {type(message['content']).__name__}, not text")
        if not message["content"].strip():
            raise BadRecord(f"message {index + 1} ({message['role']}) is empty")
    if not any(message["role"] == "assistant" for message in messages):
        raise BadRecord("it has no assistant turn, so nothing to learn from")


@dataclass
class Conversation:
    messages: list[dict]  # {role, content} only, checked
    where: str  # "file record N" or "dataset record N", for messages about it


@dataclass
class BadRecords:
    """Records left out under --skip-bad-records: how many, and the first, to show what they look like."""

    count: int = 0
    first: str | None = None

    def add(self, where: str, problem: str) -> None:
        self.count += 1
        self.first = self.first or f"{where}: {problem}"


def conversation_of(record, shape: ConversationShape) -> list[dict]:
    """One record as checked messages (only role and content kept); BadRecord if it is none."""
    if isinstance(record, BadRecord):  # a line that is no JSON
        raise record
    if not isinstance(record, dict):
        raise BadRecord("it is not a JSON object")
    missing = [column for column in shape.columns if record.get(column) is None]
    if missing:
        raise BadRecord(f"it lacks the field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    messages = shape.to_messages(record)
    check_messages(messages)
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def read_conversations(files: list[Source], shape: ConversationShape, skip_bad: bool,
                       bad: BadRecords) -> Iterator[Conversation]:
    """Every record of `files` (files or a dataset) as a checked conversation, in order. A bad record is a
    UserError naming the source and record, or with `skip_bad` is counted in `bad` and left out."""
    for source in files:
        for number, record in sources.records(source):
            where = f"{source} record {number}"
            try:
                yield Conversation(conversation_of(record, shape), where)
            except BadRecord as problem:
                if not skip_bad:
                    raise UserError(f"{where}: {problem}: {SKIP_HINT}") from None
                bad.add(where, str(problem))


# ------------------------------------------------------------------ through the model's chat template


@dataclass
class EncodedConversation:
    ids: np.ndarray  # (L,) the rendered conversation's tokens, as transformers tokenizes the rendering
    assistant: np.ndarray  # (L,) bool: the token is the assistant's (its answer and end-of-turn token)
    answer_ends: list[int]  # after each assistant answer: the token index just past its end-of-turn token
    answer_bytes: list[int]  # UTF-8 bytes of each answer's text
    messages: list[dict]
    where: str = ""

    def cut(self, length: int) -> "EncodedConversation":
        """The first `length` tokens (`length` one of answer_ends): the answers that end by then."""
        kept = sum(end <= length for end in self.answer_ends)
        return EncodedConversation(self.ids[:length], self.assistant[:length], self.answer_ends[:kept],
                                   self.answer_bytes[:kept], self.messages, self.where)


class ConversationEncoder:
    """Conversations -> ids and the assistant's tokens, through a tokenizer's own chat template."""

    def __init__(self, tokenizer):
        if not getattr(tokenizer, "has_chat_template", False):
            raise UserError(f"--data holds conversations, but this model's tokenizer ({tokenizer.description}) has "
                            f"no chat template to render them: fine-tune a chat model (--init-from "
                            f"smollm2-135m-instruct), or pass --format text to train on a text column")
        self.tokenizer = tokenizer
        self.end_of_turn = tokenizer.eos_token  # what ends an answer: SmolLM2's <|im_end|>

    def render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        tokenizer = self.tokenizer
        return render_chat(tokenizer.chat_template, messages, add_generation_prompt=add_generation_prompt,
                           bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token)

    def answer_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered conversation and the character span of each assistant answer in it, end-of-turn token
        included. Raises BadRecord when the template renders a prefix that the whole does not start with."""
        try:
            text = self.render(messages, add_generation_prompt=False)
            spans = []
            for index, message in enumerate(messages):
                if message["role"] != "assistant":
                    continue
                prompt = self.render(messages[:index], add_generation_prompt=True) if index else ""
                through_answer = self.render(messages[:index + 1], add_generation_prompt=False)
                if not (text.startswith(through_answer) and through_answer.startswith(prompt)):
                    raise BadRecord("the chat template renders its turns differently as the conversation grows, "
                                    "so the answers cannot be told apart")
                end = len(through_answer)
                if self.end_of_turn and self.end_of_turn in through_answer[len(prompt):]:
                    # the template's newline after <|im_end|> (scaffolding before the next turn) is no answer
                    end = through_answer.rindex(self.end_of_turn) + len(self.end_of_turn)
                spans.append((len(prompt), end))
        except UserError as error:  # the template's raise_exception(), or one that does not render
            raise BadRecord(str(error)) from None
        return text, spans

    def encode(self, conversation: Conversation) -> EncodedConversation:
        messages = conversation.messages
        text, spans = self.answer_spans(messages)
        encoding = self.tokenizer.backend.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, dtype=np.int64)  # (L,)
        starts = np.asarray([start for start, _ in encoding.offsets], dtype=np.int64)  # (L,) character offsets
        assistant = np.zeros(len(ids), dtype=bool)
        answer_ends = []
        for span_start, span_end in spans:
            inside = (starts >= span_start) & (starts < span_end)  # a token belongs where it begins
            if not inside.any():
                raise BadRecord("the chat template renders an answer as no tokens")
            assistant |= inside
            answer_ends.append(int(np.flatnonzero(inside)[-1]) + 1)
        answers = [message["content"] for message in messages if message["role"] == "assistant"]
        return EncodedConversation(ids, assistant, answer_ends, [len(a.encode("utf-8")) for a in answers],
                                   messages, conversation.where)


# ------------------------------------------------------------------ packing into windows


@dataclass
class Windows:
    """Packed rows of seq_len positions: x, the next-token targets (IGNORE_INDEX where no loss is taken), and
    a segment number per position (one per conversation, and one for the padding at a row's end)."""

    inputs: np.ndarray  # (W, T) int64
    targets: np.ndarray  # (W, T) int64
    segments: np.ndarray  # (W, T) int32
    answer_bytes: np.ndarray  # (W,) UTF-8 bytes of the answers whose tokens a row's targets hold
    conversations: int = 0

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def loss_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    @property
    def loss_fraction(self) -> float:
        """The share of computed positions that carry a loss (the rest: prompts, scaffolding, padding)."""
        return self.loss_tokens / max(1, self.targets.size)


@dataclass
class Fitting:
    """What fitting conversations into windows did: conversations cut after their last fitting answer, and
    those left out because even their first answer did not fit."""

    cut: int = 0
    dropped: int = 0
    first_dropped: str | None = None


def fit_to_window(conversation: EncodedConversation, seq_len: int, fitting: Fitting) -> EncodedConversation | None:
    """The conversation, or its first turns up to the last answer that ends within seq_len + 1 tokens (a row
    computes seq_len positions, each predicting the next token); None when not even one answer fits."""
    if len(conversation.ids) <= seq_len + 1:
        return conversation
    fitting_ends = [end for end in conversation.answer_ends if end <= seq_len + 1]
    if not fitting_ends:
        fitting.dropped += 1
        fitting.first_dropped = fitting.first_dropped or conversation.where
        return None
    fitting.cut += 1
    return conversation.cut(fitting_ends[-1])


def best_fit_rows(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Indices of the items of each row, best fit decreasing: longest first, each into the row it fills
    most tightly (a new row when none has room). Deterministic: ties go to the earlier item and row."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for item in order:
        at = bisect.bisect_left(free, (lengths[item], -1))
        if at == len(free):
            rows.append([item])
            bisect.insort(free, (seq_len - lengths[item], len(rows) - 1))
            continue
        room, row = free.pop(at)
        rows[row].append(item)
        bisect.insort(free, (room - lengths[item], row))
    return rows


def pack(conversations: list[EncodedConversation], seq_len: int, loss_on: str, pad_id: int) -> Windows:
    """Conversations (each of at most seq_len + 1 tokens) into rows of seq_len positions: a conversation
    of L tokens takes L - 1 positions (inputs ids[:-1], targets ids[1:]), so no target crosses into the
    next conversation. Targets are kept where the target token is the assistant's (or everywhere with
    loss_on "all")."""
    rows = best_fit_rows([len(c.ids) - 1 for c in conversations], seq_len)
    inputs = np.full((len(rows), seq_len), pad_id, dtype=np.int64)
    targets = np.full((len(rows), seq_len), IGNORE_INDEX, dtype=np.int64)
    segments = np.zeros((len(rows), seq_len), dtype=np.int32)
    answer_bytes = np.zeros(len(rows), dtype=np.int64)
    for row, items in enumerate(rows):
        position = 0
        for segment, item in enumerate(items):
            conversation = conversations[item]
            end = position + len(conversation.ids) - 1
            inputs[row, position:end] = conversation.ids[:-1]
            keep = conversation.assistant[1:] if loss_on == "assistant" else np.ones(end - position, dtype=bool)
            targets[row, position:end] = np.where(keep, conversation.ids[1:], IGNORE_INDEX)
            segments[row, position:end] = segment
            answer_bytes[row] += sum(conversation.answer_bytes)
            position = end
        segments[row, position:] = len(items)  # the padding: a segment of its own, attending only to itself
    return Windows(inputs, targets, segments, answer_bytes, len(conversations))


# ------------------------------------------------------------------ a data set's conversations, split and packed


def split_conversations(conversations: list, val_fraction: float) -> tuple[list, list]:
    """Whole conversations held out for validation: the last `val_fraction` of them, at least one."""
    if len(conversations) < 2:
        raise UserError(f"--data holds {len(conversations)} usable conversation(s): at least 2 are needed, one "
                        f"to train on and one held out for validation")
    n_val = min(len(conversations) - 1, max(1, int(len(conversations) * val_fraction)))
    return conversations[:len(conversations) - n_val], conversations[len(conversations) - n_val:]


def conversations_key(files: list[Source], tokenizer, shape: ConversationShape, seq_len: int, loss_on: str,
                      val_fraction: float) -> str:
    """What decides the windows: the files' or dataset's content (a Hub dataset's: its commit), the tokenizer
    and its template, and the packing."""
    digest = hashlib.sha256(f"smolm135-chat-v1-{shape.name}-{seq_len}-{loss_on}-{val_fraction}".encode())
    digest.update(f"{tokenizer.fingerprint}\0{tokenizer.chat_template}\0{tokenizer.eos_token}".encode())
    for source in files:
        sources.hash_content(digest, source)
    return digest.hexdigest()


@dataclass
class ChatData:
    """The conversations of --data, split and packed for one run."""

    name: str
    key: str
    shape: ConversationShape
    train: Windows  # targets per --loss-on
    val: Windows  # targets on the assistant's tokens, whatever --loss-on: the figure runs are judged by
    sample_messages: list[dict]  # a held-out conversation up to its first user turn: the sample's prompt
    bad: BadRecords = field(default_factory=BadRecords)
    fitting: Fitting = field(default_factory=Fitting)
    max_token_id: int = 0

    def summary(self, seq_len: int) -> list[str]:
        """What the data became, as log lines."""
        lines = [f"data: {self.name}, conversations ({self.shape.name}): {self.train.conversations:,} train, "
                 f"{self.val.conversations:,} validation, packed into {len(self.train):,} + {len(self.val):,} "
                 f"windows of {seq_len} tokens; {self.train.loss_fraction:.1%} of the computed training tokens "
                 f"carry loss ({self.train.loss_tokens:,})"]
        if self.bad.count:
            lines.append(f"--skip-bad-records: left out {self.bad.count:,} bad record(s), the first {self.bad.first}")
        if self.fitting.cut:
            lines.append(f"{self.fitting.cut:,} conversation(s) longer than {seq_len + 1} tokens were cut after "
                         f"their last answer that fits")
        if self.fitting.dropped:
            lines.append(f"{self.fitting.dropped:,} conversation(s) left out: their first answer ends past "
                         f"{seq_len + 1} tokens (the first: {self.fitting.first_dropped}); raise --seq-len to keep them")
        return lines


def load_chat_data(files: list[Source], shape: ConversationShape, tokenizer, seq_len: int, loss_on: str,
                   val_fraction: float, skip_bad: bool) -> ChatData:
    """--data's conversations rendered by the tokenizer's template, split into whole conversations for
    training and validation, fitted into windows and packed."""
    encoder = ConversationEncoder(tokenizer)
    bad, fitting, encoded = BadRecords(), Fitting(), []
    for conversation in read_conversations(files, shape, skip_bad, bad):
        try:
            encoded.append(encoder.encode(conversation))
        except BadRecord as problem:
            if not skip_bad:
                raise UserError(f"{conversation.where}: {problem}: {SKIP_HINT}") from None
            bad.add(conversation.where, str(problem))
    train, val = split_conversations(encoded, val_fraction)
    sample_source = sample_prompt_messages(val[0].messages)
    train = [c for c in (fit_to_window(c, seq_len, fitting) for c in train) if c is not None]
    val = [c for c in (fit_to_window(c, seq_len, fitting) for c in val) if c is not None]
    if not train or not val:
        raise UserError(f"no conversation of --data fits a window of {seq_len} tokens with one whole answer "
                        f"({'training' if not train else 'validation'} split): raise --seq-len")
    pad_id = tokenizer.document_separator_id or 0
    name = files[0].name if len(files) == 1 else f"{len(files)} files"
    return ChatData(name, conversations_key(files, tokenizer, shape, seq_len, loss_on, val_fraction), shape,
                    pack(train, seq_len, loss_on, pad_id), pack(val, seq_len, "assistant", pad_id), sample_source,
                    bad, fitting, max(int(c.ids.max()) for c in train + val))


def sample_prompt_messages(messages: list[dict]) -> list[dict]:
    """A conversation up to and including its first user turn (with any system message before it)."""
    first_user = next((i for i, message in enumerate(messages) if message["role"] == "user"), None)
    return messages[:first_user + 1] if first_user is not None else messages[:1]
