"""Scoring models on a text or on conversations, side by side (the script `evaluate.py` runs `main`)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from smolm135.data.corpus import resolve_sources
from smolm135.errors import CommandLineParser, UserError
from smolm135.interop.loading import TRUST_ADVICE, TRUST_FLAG, load_model
from smolm135.interop.pretrained import BUILTIN_MODELS
from smolm135.runtime.device import DTYPES, autocast, configure_backends, pick_device, pick_dtype
from smolm135.inference.chat_scoring import AnswersRight, score_conversations
from smolm135.inference.scoring import LogitsFn, Score, score_documents
from smolm135.data.sources import DEFAULT_TEXT_FIELD, documents, is_text_file
from smolm135.data.tokenizer import GPT2TextTokenizer, start_token_id


@dataclass
class ScoringModel:
    """What scoring needs of a model, whatever it was loaded from."""

    name: str
    logits: LogitsFn  # (B, T) ids -> (B, T, V) logits
    encode: Callable[[str], list[int]]
    end_of_text_id: int
    context_length: int
    parameters: int
    tokenizer_name: str
    tokenizer: object = None  # one of smolm135.data.tokenizer's: what renders conversations (its chat template)


# ------------------------------------------------------------------ loading


def load_any_model(spec: str, device: torch.device, dtype: torch.dtype,
                   trust_remote_code: bool = False) -> ScoringModel:
    """Any model spec smolm135.interop.loading reads, ready to score on `device`; a native model is scored with the
    tokenizer it was trained with (a model started from SmolLM reads SmolLM's ids)."""
    loaded = load_model(spec, trust_remote_code=trust_remote_code)
    if loaded.is_native:
        return native_scoring_model(spec, loaded.model, device, dtype, loaded.tokenizer)
    return transformers_scoring_model(spec, loaded.model, loaded.tokenizer, device, dtype)


def native_scoring_model(name: str, model, device: torch.device, dtype: torch.dtype,
                         tokenizer=None) -> ScoringModel:
    """Our model; with GPT-2's tokenizer unless another is given (a pretrained model brings its own)."""
    tokenizer = tokenizer or GPT2TextTokenizer()
    tokenizer_name = "GPT-2" if tokenizer.kind == GPT2TextTokenizer.kind else f"its own ({tokenizer.n_vocab:,} tokens)"
    model = model.to(device).eval()

    def logits(x):  # (B, T) -> (B, T, V)
        with autocast(device, dtype):
            return model(x)[0]

    return ScoringModel(name, logits, tokenizer.encode, tokenizer.document_separator_id, model.config.block_size,
                        model.num_parameters()["total"], tokenizer_name, tokenizer)


def transformers_scoring_model(spec: str, model, tokenizer, device: torch.device, dtype: torch.dtype) -> ScoringModel:
    """A causal LM only transformers can run, with its own tokenizer."""
    model = model.to(device).eval()
    start_id = start_token_id(tokenizer)
    if start_id is None:
        raise UserError(f"the tokenizer in {spec} has neither a beginning- nor an end-of-text token to start "
                        f"documents with")

    def logits(x):  # (B, T) -> (B, T, V)
        with autocast(device, dtype):
            return model(input_ids=x).logits

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    context = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
    return ScoringModel(spec, logits, encode, start_id, int(context), model.num_parameters(),
                        type(tokenizer).__name__.replace("TokenizerFast", "").replace("Tokenizer", "") or "own",
                        chat_tokenizer_of(tokenizer, spec))


def chat_tokenizer_of(hf_tokenizer, spec: str):
    """A transformers tokenizer with a chat template as one of ours (what renders conversations); else None."""
    if not getattr(hf_tokenizer, "chat_template", None) or not hasattr(hf_tokenizer, "backend_tokenizer"):
        return None
    from smolm135.data.tokenizer import JsonTokenizer

    return JsonTokenizer(hf_tokenizer.backend_tokenizer.to_str(), eos_token=hf_tokenizer.eos_token,
                         bos_token=hf_tokenizer.bos_token, chat_template=hf_tokenizer.chat_template, origin=spec)


# ------------------------------------------------------------------ text


def read_documents(data: str, text_field: str = DEFAULT_TEXT_FIELD) -> list[str]:
    """--data as documents: a text file is one, a table holds one per record."""
    return list(_iter_documents(data, text_field))


def _iter_documents(data: str, text_field: str) -> Iterator[str]:
    for source in resolve_sources(data):
        if is_text_file(source):
            yield source.read_bytes().decode("utf-8", errors="replace")
        else:
            yield from documents(source, text_field)


# ------------------------------------------------------------------ scoring


@dataclass(frozen=True)
class Result:
    model: str
    parameters: int
    tokenizer: str
    context: int
    stride: int
    score: Score
    answers: AnswersRight | None = None  # of conversations: the answers greedy decoding gives word for word


def evaluate(models: list[str], data: str, context: int | None = None, stride: int | None = None,
             text_field: str = DEFAULT_TEXT_FIELD, device: str = "auto", dtype: str = "auto",
             batch_windows: int | None = None, show_progress: bool = True, say=print,
             data_format: str = "auto", trust_remote_code: bool = False) -> list[Result]:
    """Score each model on the same text. `context` defaults to each model's context length, `stride` to
    half the context. Conversations (`data_format` auto finds them by their columns) are scored on their
    answers instead: bits per byte of the assistant's text (smolm135/inference/chat_scoring.py). `trust_remote_code`
    lets the named models run their own code (smolm135.interop.loading)."""
    check_counts(context=context, stride=stride, batch_windows=batch_windows)
    shape = conversations_in(data, data_format)
    if shape is not None:
        return evaluate_conversations(models, data, shape, context, device, dtype, show_progress, say,
                                      trust_remote_code)
    texts = read_documents(data, text_field)
    if not any(texts):
        raise UserError(f"data {data} holds no text to score")
    results = []
    for spec, model, torch_device in scoring_models(models, device, dtype, trust_remote_code):
        window = context if context is not None else model.context_length
        step = stride if stride is not None else max(1, window // 2)
        problems = check_window(window, step, model)
        if problems:
            raise UserError(problems)
        score = score_documents(model.logits, texts, model.encode, model.end_of_text_id, window, step, torch_device,
                                batch_windows, show_progress, desc=f"scoring {spec}")
        result = Result(spec, model.parameters, model.tokenizer_name, window, step, score)
        say(result_line(result))
        results.append(result)
        del model  # before the next one is loaded
    return results


def scoring_models(models: list[str], device: str, dtype: str, trust_remote_code: bool) -> Iterator[tuple]:
    """(spec, ScoringModel, torch device) for each model in turn, each let go before the next is loaded."""
    torch_device = pick_device(device)
    configure_backends(torch_device)
    torch_dtype = pick_dtype(dtype, torch_device)
    for spec in models:
        yield spec, load_any_model(spec, torch_device, torch_dtype, trust_remote_code), torch_device


def conversations_in(data: str, data_format: str):
    """The shape of --data's conversations per --format, or None when it is text."""
    from smolm135.data.chat import detect_shape

    if data_format == "text":
        return None
    return detect_shape(resolve_sources(data), data_format)


def evaluate_conversations(models: list[str], data: str, shape, context: int | None, device: str, dtype: str,
                           show_progress: bool, say, trust_remote_code: bool = False) -> list[Result]:
    """Each model's loss on the answers of --data's conversations, rendered by its own chat template."""
    results = []
    for spec, model, torch_device in scoring_models(models, device, dtype, trust_remote_code):
        if model.tokenizer is None or not model.tokenizer.has_chat_template:
            raise UserError(f"--data {data} holds conversations, but {spec} has no chat template to render them: "
                            f"score a chat model, or pass --format text to score a text column")
        window = context or model.context_length
        if not 1 < window <= model.context_length:
            raise UserError(f"--context {window} does not fit {spec}, whose context length is "
                            f"{model.context_length}: pass --context between 2 and {model.context_length}")
        score, right, fitting = score_conversations(model.logits, model.tokenizer, resolve_sources(data), shape, window,
                                             torch_device, show_progress=show_progress, desc=f"scoring {spec}")
        result = Result(spec, model.parameters, model.tokenizer_name, window, window, score, right)
        say(f"{spec}: {score.bits_per_byte:.4f} bits per assistant byte | loss {score.loss:.4f} per assistant "
            f"token | {right.describe()} | {score.tokens:,} assistant tokens, {score.text_bytes:,} bytes of answers"
            + (f" | {fitting.cut} conversation(s) cut, {fitting.dropped} left out at the context of {window}"
               if fitting.cut or fitting.dropped else ""))
        results.append(result)
        del model
    return results


def check_counts(**counts: int | None) -> None:
    """The window flags given are positive whole numbers (None: the model's default); 0 is not a default."""
    problems = [f"--{name.replace('_', '-')} must be a positive whole number (got {value})"
                for name, value in counts.items() if value is not None and value < 1]
    if problems:
        raise UserError("; ".join(problems))


def check_window(context: int, stride: int, model: ScoringModel) -> str | None:
    if context < 1 or context > model.context_length:
        return (f"--context {context} does not fit {model.name}, whose context length is {model.context_length}: "
                f"pass --context between 1 and {model.context_length}")
    if not 1 <= stride <= context:
        return f"--stride {stride} must be between 1 and the context ({context})"
    return None


def result_line(result: Result) -> str:
    s = result.score
    return (f"{result.model}: {s.bits_per_byte:.4f} bits per byte | loss {s.loss:.4f} per token | perplexity "
            f"{s.perplexity:.2f} | {s.tokens:,} tokens, {s.text_bytes:,} bytes | context {result.context}, "
            f"stride {result.stride}")


def comparison_table(results: list[Result]) -> str:
    """A Markdown table, best bits per byte first; of conversations, with the answers given word for word."""
    chat = all(r.answers is not None for r in results)
    rows = ["| model | parameters | tokenizer | bits per byte | loss per token | perplexity | tokens |"
            + (" answers word for word |" if chat else ""),
            "| --- | ---: | --- | ---: | ---: | ---: | ---: |" + (" ---: |" if chat else "")]
    for r in sorted(results, key=lambda r: r.score.bits_per_byte):
        rows.append(f"| {r.model} | {r.parameters / 1e6:,.1f}M | {r.tokenizer} | {r.score.bits_per_byte:.4f} | "
                    f"{r.score.loss:.4f} | {r.score.perplexity:.2f} | {r.score.tokens:,} |"
                    + (f" {r.answers.right:,}/{r.answers.answers:,} ({r.answers.share:.1%}) |" if chat else ""))
    return "\n".join(rows)


# ------------------------------------------------------------------ command line


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(__doc__)
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"checkpoint (.pt), Hugging Face model folder, .gguf file or {', '.join(BUILTIN_MODELS)}")
    parser.add_argument("--compare", nargs="+", default=[], metavar="MODEL",
                        help="more models to score on the same text, printed as a table")
    parser.add_argument("--data", required=True, help="text, .jsonl, .jsonl.gz or .parquet file, folder or glob, "
                        "a datasets save_to_disk folder, or hf:NAME[:CONFIG][:SPLIT]")
    parser.add_argument("--text-field", default=DEFAULT_TEXT_FIELD, help="the column holding the text (default text)")
    parser.add_argument("--format", default="auto", choices=["auto", "text", "chat"], dest="data_format",
                        help="what --data holds: auto (conversations when a table has a 'messages' column, "
                             "'prompt' and 'completion', or 'instruction' and 'output'; else text), text, or chat: "
                             "conversations are scored on their answers (bits per assistant byte)")
    parser.add_argument("--context", type=int, default=None, help="tokens per window (default: the model's context)")
    parser.add_argument("--stride", type=int, default=None,
                        help="tokens a window advances; each token is scored once, with at least context - stride "
                             "tokens before it (default: half the context)")
    parser.add_argument("--batch-windows", type=int, default=None, help="windows per forward pass")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="autocast precision: auto (bf16 where supported), float32, bfloat16, float16")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    parser.add_argument(TRUST_FLAG, action="store_true",
                        help=f"let the named Hugging Face models run their own Python code ({TRUST_ADVICE})")
    return parser


def main(argv: list[str] | None = None) -> list[Result]:
    args = build_parser().parse_args(argv)
    models = args.models + args.compare
    if not models:
        raise UserError("name at least one model to score: python evaluate.py MODEL --data FILE")
    results = evaluate(models, args.data, args.context, args.stride, args.text_field, args.device, args.dtype,
                       args.batch_windows, args.progress, data_format=args.data_format,
                       trust_remote_code=args.trust_remote_code)
    if len(results) > 1 or args.compare:
        print()
        print(comparison_table(results))
    return results
