"""The training recipe as one frozen dataclass carrying its model config, its validation, the learning-rate
schedule, and the command-line flags that fill it (shared by the trainer and continue_training.py)."""
from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from types import MappingProxyType

from smollm135_model import GPT2_VOCAB_SIZE, PRESETS, ModelConfig, known_fields

from smolm135.training.budget import MEASURING_STEPS
from smolm135.data.chat import FORMATS, LOSS_ON
from smolm135.data.corpus import DEFAULT_CHAT_DATA, DEFAULT_DATA, EMPTY_DATA
from smolm135.interop.loading import TRUST_ADVICE, TRUST_FLAG
from smolm135.errors import EMPTY_PATH_ADVICE, UserError, is_int, is_number, path_argument, speaks_for_its_node
# interop is an earlier stage than training (tests/test_structure.py): the recipe asks it for the built-in name
from smolm135.interop.pretrained import BUILTIN_MODELS, SMOLLM2_INSTRUCT, is_pretrained_source
from smolm135.lora import BLOCK_PROJECTIONS, settings_problems as lora_problems
from smolm135.data.sources import DEFAULT_TEXT_FIELD
from smolm135.training.tracking import REPORT_TO
from smolm135.data.tokenizer import CHAT_TEMPLATES, END_OF_TEXT, SMALLEST_BPE_VOCABULARY

OPTIMIZERS = ("adamw", "muon")  # built by smolm135/training/optim.py
# A model trained from scratch reads GPT-2's tokens (gpt2) or a byte-level BPE of its vocabulary size learned
# from the corpus (corpus); auto takes GPT-2's where the model's vocabulary holds it. A checkpoint or a
# pretrained model brings its own.
TOKENIZERS = ("auto", "gpt2", "corpus")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults are the seed recipe: 5,000 steps of 32 x 128 tokens, AdamW, lr 6e-4 with 2,000 warm-up steps
    and cosine decay to 10%, bf16 autocast where supported.

    The config carries the model it trains (`model`); `preset` fills it when no model is given, and then only
    names it in logs. To train another shape, pass `model=ModelConfig(...)` (replacing `preset` alone on an
    existing config keeps its model). A checkpoint stores `to_dict()` (the recipe) beside the model config."""

    data: str = DEFAULT_DATA
    text_field: str = DEFAULT_TEXT_FIELD  # the column holding the text in .jsonl, .parquet and datasets
    format: str = "auto"  # what --data holds: auto (told by its columns) | text | chat (see chat_data.py)
    loss_on: str = "assistant"  # of conversations: assistant (the answers only) | all (every token)
    skip_bad_records: bool = False  # leave out (and count) conversation records that cannot be trained on
    # of conversations on a model without a chat template: the named one (CHAT_TEMPLATES) and its special tokens
    # join the tokenizer and the embedding, and the checkpoints carry them from then on; None: the model's own
    chat_template: str | None = None
    allow_binary: bool = False  # train on --data that does not look like text (see data.check_looks_like_text)
    tokenizer: str = "auto"  # of a model trained from scratch: auto | gpt2 | corpus (see TOKENIZERS)
    preset: str = "smolm135"  # the model's name in logs; when `model` is not given, the built-in config it names
    model: ModelConfig | None = None  # the model to train; None: the preset's
    max_steps: int = 5000  # under a --minutes budget, the most steps it may fix
    minutes: float = 0.0  # a wall-clock budget for the whole run: the step count is fixed to end within it; 0: none
    budgeted_steps: int | None = None  # the step count --minutes fixed (max_steps then equals it); None: not fixed
    batch_size: int = 32  # sequences per micro-batch per process; global = batch_size * grad_accum * processes
    seq_len: int = 128
    grad_accum: int = 1
    lr: float = 6e-4
    min_lr: float | None = None  # None: 10% of lr
    warmup_steps: int = 2000
    lr_decay_steps: int | None = None  # where the cosine reaches min_lr; None: max_steps
    weight_decay: float = 0.1  # applied to matrices only (see configure_optimizer)
    beta1: float = 0.9
    beta2: float = 0.95
    optimizer: str = "adamw"  # adamw (the seed recipe) | muon (Muon for the blocks' matrices, AdamW for the rest)
    muon_momentum: float = 0.95
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500
    sample_prompt: str | None = None  # None: the opening of the validation text; "": the start token
    sample_tokens: int = 100
    eval_every: int = 250
    eval_batches: int = 20
    val_fraction: float = 0.1
    log_every: int = 1
    out_dir: str = "."
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast dtype)
    compile: bool = False
    grad_checkpointing: bool = False
    # LoRA (smolm135/lora.py): a rank above 0 trains low-rank adapters on --lora-targets, the base weights frozen
    lora_rank: int = 0
    lora_alpha: float = 16.0  # the adapters' update is scaled by alpha / rank
    lora_dropout: float = 0.0
    lora_targets: str = ",".join(BLOCK_PROJECTIONS)
    seed: int = 1337
    resume: str = "auto"  # auto | never | PATH
    init_from: str | None = None  # a checkpoint to start from (weights, optimizer, step) when not resuming
    trust_remote_code: bool = False  # a --init-from folder may bring code that is not ours (smolm135.interop.loading)
    progress: bool = True  # console progress bar
    recipe: str = "seed"  # the named recipe (RECIPES) the command line's flags were laid over; recorded, not applied
    report_to: str = "none"  # also send the log's numbers to: none | tensorboard | wandb | trackio (REPORT_TO)

    def __post_init__(self):
        if self.model is None and self.preset in PRESETS:  # an unknown name is reported by validate()
            object.__setattr__(self, "model", PRESETS[self.preset])

    @property
    def learns_tokenizer(self) -> bool:
        """Whether a model trained from scratch reads a BPE learned from the corpus rather than GPT-2's."""
        small_vocabulary = self.model is not None and self.model.vocab_size < GPT2_VOCAB_SIZE
        return self.tokenizer == "corpus" or (self.tokenizer == "auto" and small_vocabulary)

    @property
    def final_lr(self) -> float:
        return self.min_lr if self.min_lr is not None else self.lr / 10

    @property
    def decay_steps(self) -> int:
        return self.lr_decay_steps if self.lr_decay_steps is not None else self.max_steps

    def global_batch(self, world_size: int) -> int:
        """Sequences per optimizer step: per micro-batch x micro-batches x processes."""
        return self.batch_size * self.grad_accum * world_size

    def with_budgeted_steps(self, steps: int) -> "TrainConfig":
        """The config once --minutes has fixed the run's step count (the schedule's horizon with it)."""
        return replace(self, max_steps=steps, budgeted_steps=steps)

    def to_dict(self) -> dict:
        """The recipe as plain data, without the model config (a checkpoint stores that beside it)."""
        recipe = asdict(self)
        del recipe["model"]
        return recipe

    @classmethod
    def from_dict(cls, recipe: dict, model: ModelConfig) -> "TrainConfig":
        """The recipe `to_dict` wrote (fields a newer or older version does not know are left out), for `model`."""
        return cls(**{**known_fields(cls, recipe), "model": model})


@dataclass(frozen=True)
class Recipe:
    """A named set of training flag values: what a command line starts from before its own flags."""

    description: str  # one line, for --help and --recipe list
    values: Mapping[str, object] = field(default_factory=dict)  # TrainConfig fields; the others keep their defaults

    def __post_init__(self):
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))  # frozen all the way down


# The recipes, written once: the README, the demo and the benchmarks name them instead of spelling their flags.
RECIPES: Mapping[str, Recipe] = MappingProxyType({
    "seed": Recipe("TrainConfig's defaults: the full model, 5,000 steps of 32 x 128 tokens, AdamW at 6e-4 after "
                   "2,000 warm-up steps (hours on a GPU)"),
    # 4 layers of 256 with a 4,096-token BPE learned from the corpus, Muon for the blocks' matrices (bench/README.md,
    # "From scratch on a CPU"). The budget decides the step count, so a faster host trains more steps in the same
    # 10 minutes with the schedule fitted to them; --max-steps only bounds it.
    "cpu-scratch": Recipe("from scratch on 2 CPU cores: the cpu-scratch model, Muon at 6e-3 on 16 x 128 tokens, "
                          "as many steps as fit 10 minutes",
                          {"preset": "cpu-scratch", "optimizer": "muon", "max_steps": 20_000, "warmup_steps": 50,
                           "lr": 6e-3, "batch_size": 16, "seq_len": 128, "eval_every": 120, "eval_batches": 8,
                           "sample_every": 720, "checkpoint_every": 720, "minutes": 10}),
    # A short fine-tune at a low rate on long windows (bench/README.md, "Fine-tuning SmolLM2-135M-Instruct on a
    # CPU"): as many steps as fit 10 minutes, where a fixed 50 left half of them unused on a host with fast bf16.
    # The seed recipe is made for random weights: hours a run on a CPU, at a rate that wears the pretraining away.
    # Ten warm-up steps: the budget is fixed at the end of warm-up, and the full model's first four steps on a CPU
    # run up to twice as long as the rest (so four fixed a count that left two of the ten minutes unused).
    "finetune": Recipe("a pretrained --init-from's (taken when no recipe is named): one 1,024-token window a "
                       "step at 1e-4, as many steps as fit 10 minutes",
                       {"max_steps": 2_000, "batch_size": 1, "seq_len": 1024, "lr": 1e-4, "warmup_steps": 10,
                        "eval_every": 25, "eval_batches": 4, "sample_every": 50, "minutes": 10}),
    # The finetune recipe on conversations with answers that can be checked: the built-in quiz (which play a
    # passage is from, written when absent) in 512-token windows of about five conversations each, at a rate
    # that teaches the answers' form within the 10 minutes (bench/README.md, "A chat fine-tune on a CPU").
    "chat": Recipe("fine-tune SmolLM2-135M-Instruct on conversations, the built-in Shakespeare quiz unless --data "
                   "says otherwise, judged by held-out answers right, before and after: 10 minutes",
                   {"init_from": SMOLLM2_INSTRUCT, "data": DEFAULT_CHAT_DATA, "out_dir": "chat-run",
                    "max_steps": 2_000, "batch_size": 1, "seq_len": 512, "lr": 2e-4, "warmup_steps": 4,
                    "eval_every": 25, "eval_batches": 16, "sample_every": 50, "minutes": 10}),
})
DEFAULT_RECIPE = "seed"
PRETRAINED_RECIPE = "finetune"  # for a pretrained --init-from when the command line names no recipe


def recipe_named(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)} (--recipe list shows them)")
    return RECIPES[name]


def from_recipe(name: str, **overrides) -> TrainConfig:
    """The named recipe's config with `overrides` (TrainConfig fields) on top: `--recipe NAME` from Python."""
    return TrainConfig(**{**recipe_named(name).values, **overrides, "recipe": name})


def recipe_flags(values: Mapping[str, object]) -> str:
    """Values as the flags that set them: `--max-steps 50 --lr 0.0001`."""
    return " ".join(f"{_flag(name)} {value}" for name, value in values.items())


def recipe_table() -> str:
    """Every recipe: its name, what it is for, and its values (what --recipe list prints)."""
    return "\n".join(f"{name}: {recipe.description}\n    {recipe_flags(recipe.values) or '(the defaults)'}"
                     for name, recipe in RECIPES.items())

MAX_SEED = 2**32 - 1  # numpy, torch and Python all accept it; the demo's seed has the same range
PATH_FIELDS = ("out_dir", "resume", "init_from")  # files and folders besides --data (whose check names its forms)
_POSITIVE_INTS = ("max_steps", "batch_size", "seq_len", "grad_accum", "checkpoint_every", "sample_every",
                  "sample_tokens", "eval_every", "eval_batches", "log_every", "keep_checkpoints")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def validate(cfg: TrainConfig) -> None:
    """Collect every problem with the recipe and raise once, naming the flags to fix. Every number must
    be finite and in its range: NaN compares false with everything, so each test is written to fail on it."""
    problems = []
    for name in _POSITIVE_INTS:
        value = getattr(cfg, name)
        if not (is_int(value) and value > 0):
            problems.append(f"{_flag(name)} must be a positive whole number (got {value})")
    if not (is_int(cfg.warmup_steps) and cfg.warmup_steps >= 0):
        problems.append(f"--warmup-steps must be a whole number, 0 or more (got {cfg.warmup_steps})")
    if cfg.lr_decay_steps is not None and not (is_int(cfg.lr_decay_steps) and cfg.lr_decay_steps > 0):
        problems.append(f"--lr-decay-steps must be a positive whole number (got {cfg.lr_decay_steps})")
    if not (is_number(cfg.minutes) and cfg.minutes >= 0):
        problems.append(f"--minutes must be a finite number, 0 (no budget) or more (got {cfg.minutes})")
    elif cfg.minutes and is_int(cfg.warmup_steps) and cfg.warmup_steps < MEASURING_STEPS:
        problems.append(f"--minutes times the first {MEASURING_STEPS} steps before it fixes the step count, and "
                        f"their learning rate must not depend on it: --warmup-steps must be at least "
                        f"{MEASURING_STEPS} (got {cfg.warmup_steps})")
    if not (is_int(cfg.seed) and 0 <= cfg.seed <= MAX_SEED):
        problems.append(f"--seed must be a whole number from 0 to {MAX_SEED} (got {cfg.seed})")
    if not (is_number(cfg.lr) and cfg.lr > 0):
        problems.append(f"--lr must be a positive number (got {cfg.lr})")
    elif cfg.min_lr is not None and not (is_number(cfg.min_lr) and 0 <= cfg.min_lr <= cfg.lr):
        problems.append(f"--min-lr must be between 0 and --lr (got {cfg.min_lr})")
    if cfg.tokenizer not in TOKENIZERS:
        problems.append(f"--tokenizer must be one of {', '.join(TOKENIZERS)} (got {cfg.tokenizer})")
    elif cfg.tokenizer != "auto" and cfg.init_from:
        problems.append(f"--tokenizer {cfg.tokenizer} is for models trained from scratch: the --init-from model "
                        f"brings its own tokenizer; leave --tokenizer out")
    elif cfg.tokenizer == "gpt2" and cfg.model is not None and cfg.model.vocab_size < GPT2_VOCAB_SIZE:
        problems.append(f"--tokenizer gpt2 needs a vocabulary of {GPT2_VOCAB_SIZE:,} tokens, the {cfg.preset} "
                        f"model has {cfg.model.vocab_size:,}: use --tokenizer corpus (or auto)")
    elif cfg.learns_tokenizer and not cfg.init_from and cfg.model.vocab_size < SMALLEST_BPE_VOCABULARY:
        problems.append(f"a tokenizer learned from the corpus needs a vocabulary of at least "
                        f"{SMALLEST_BPE_VOCABULARY} tokens (every byte and {END_OF_TEXT}), the {cfg.preset} model "
                        f"has {cfg.model.vocab_size}: choose a preset with a larger vocab_size")
    if cfg.format not in FORMATS:
        problems.append(f"--format must be one of {', '.join(FORMATS)} (got {cfg.format})")
    if cfg.loss_on not in LOSS_ON:
        problems.append(f"--loss-on must be one of {', '.join(LOSS_ON)} (got {cfg.loss_on})")
    if cfg.chat_template is not None and cfg.chat_template not in CHAT_TEMPLATES:
        problems.append(f"unknown --chat-template {cfg.chat_template!r}: the known templates are "
                        f"{', '.join(CHAT_TEMPLATES)}")
    elif cfg.chat_template is not None and cfg.lora_rank:
        problems.append("--chat-template adds tokens whose embedding rows must learn, and --lora-rank freezes the "
                        "embedding: leave --lora-rank out for this run (later runs can train adapters)")
    if cfg.trust_remote_code and not cfg.init_from:
        problems.append(f"{TRUST_FLAG} applies to the model named by --init-from: name the folder or Hub id")
    if cfg.optimizer not in OPTIMIZERS:
        problems.append(f"--optimizer must be one of {', '.join(OPTIMIZERS)} (got {cfg.optimizer})")
    for name in ("weight_decay", "grad_clip"):
        value = getattr(cfg, name)
        if not (is_number(value) and value >= 0):
            problems.append(f"{_flag(name)} must be a finite number, 0 or more (got {value})")
    for name in ("beta1", "beta2"):
        value = getattr(cfg, name)
        if not (is_number(value) and 0 <= value < 1):
            problems.append(f"{_flag(name)} must be at least 0 and below 1 (got {value})")
    if not (is_number(cfg.muon_momentum) and 0 <= cfg.muon_momentum < 1):
        problems.append(f"--muon-momentum must be at least 0 and below 1 (got {cfg.muon_momentum})")
    if not (is_number(cfg.val_fraction) and 0 < cfg.val_fraction < 1):
        problems.append(f"--val-fraction must be between 0 and 1 (got {cfg.val_fraction})")
    if not cfg.data.strip():
        problems.append(EMPTY_DATA)
    problems += lora_problems(cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    for name in PATH_FIELDS:  # an empty path is the current folder: never what was meant
        value = getattr(cfg, name)
        if value is not None and not value.strip():
            problems.append(f"{_flag(name)} is empty: {EMPTY_PATH_ADVICE}")
    if cfg.report_to not in REPORT_TO:
        problems.append(f"--report-to must be one of {', '.join(REPORT_TO)} (got {cfg.report_to})")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        problems.append(f"--dtype must be auto, float32, bfloat16 or float16 (got {cfg.dtype})")
    if cfg.model is None:
        problems.append(f"unknown preset {cfg.preset!r}: choose one of {', '.join(PRESETS)}")
    else:
        problems += [f"model config: {problem}" for problem in cfg.model.validate()]
        if is_int(cfg.seq_len) and cfg.seq_len > cfg.model.block_size:
            problems.append(f"--seq-len {cfg.seq_len} is longer than the {cfg.preset} context length "
                            f"({cfg.model.block_size}): lower --seq-len")
    if problems:
        raise UserError("; ".join(problems))


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, cosine decay, then the floor."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.decay_steps:
        return cfg.final_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.decay_steps - cfg.warmup_steps)
    return cfg.final_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.final_lr)


# ------------------------------------------------------------------ command line

_HELP = {
    "data": "a .txt, .jsonl, .jsonl.gz or .parquet file, a folder or glob of them, a datasets save_to_disk folder, "
            "or hf:NAME[:CONFIG][:SPLIT] (default input.txt; written from Shakespeare if absent)",
    "text_field": "the column holding the text in .jsonl, .parquet and datasets (default text)",
    "format": "what --data holds: auto (conversations when a table has a 'messages' column, 'prompt' and "
              "'completion', or 'instruction' and 'output'; else text), text, or chat",
    "loss_on": "of conversations: assistant (the loss counts the answers and their end-of-turn token only) or all",
    "skip_bad_records": "leave out conversation records that cannot be trained on (and count them) instead of "
                        "stopping at the first",
    "chat_template": f"of conversations on a model without a chat template (GPT-2's tokenizer or one learned from "
                     f"text): {', '.join(CHAT_TEMPLATES)} adds that template and its special tokens (ChatML's "
                     f"<|im_start|> and <|im_end|>) to the tokenizer and the embedding; the model keeps them",
    "tokenizer": "of a model trained from scratch: auto (GPT-2's where the model's vocabulary holds it, else "
                 "corpus), gpt2, or corpus (a byte-level BPE of the model's vocabulary size learned from --data)",
    "optimizer": "adamw (the seed recipe), or muon: Muon for the blocks' matrices, AdamW for embeddings and norms",
    "preset": f"model size: {', '.join(PRESETS)}",
    "batch_size": "sequences per micro-batch per process",
    "grad_accum": "micro-batches per optimizer step",
    "min_lr": "learning rate at the end of the cosine (default: lr / 10)",
    "lr_decay_steps": "step at which the cosine reaches min-lr (default: max-steps)",
    "out_dir": "the folder a run writes its checkpoints, models, logs and token cache under",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "dtype": "autocast precision: auto (bf16 where supported; float16 with loss scaling on older GPUs), "
             "float32, bfloat16, float16",
    "resume": "auto (newest checkpoint in out-dir if any), never, or a checkpoint path",
    "init_from": "when there is nothing to resume: a checkpoint to continue (weights, optimizer, step), or a "
                 f"pretrained model to fine-tune ({', '.join(BUILTIN_MODELS)}, a .gguf, a Hugging Face folder or "
                 f"Hub id), which takes the {PRETRAINED_RECIPE} recipe unless --recipe names another",
    "recipe": f"a named set of flag values, which the flags given override: {', '.join(RECIPES)} (listed below); "
              f"default {DEFAULT_RECIPE}, or {PRETRAINED_RECIPE} for a pretrained --init-from; list prints them",
    "sample_prompt": "the text every sample continues (default: the first tokens of the validation text, the same "
                     "at every sample; an empty one starts from the tokenizer's start token)",
    "max_steps": "optimizer steps of the run; under --minutes, the most it may take",
    "minutes": "a wall-clock budget for the whole run: the trainer times its first steps, then fixes the step "
               "count (and the learning-rate schedule) so that training, evaluations, samples and saves end "
               "within it; a resumed run keeps that count. 0: no budget (default)",
    "trust_remote_code": f"read a --init-from Hugging Face folder whose Python code is not this project's "
                         f"({TRUST_ADVICE})",
    "compile": "torch.compile the model",
    "grad_checkpointing": "recompute activations in backward to save memory",
    "progress": "show the console progress bar",
    "lora_rank": "train LoRA adapters of this rank on --lora-targets, every other weight frozen (default 0: train "
                 "every weight)",
    "lora_alpha": "scale of the LoRA update: alpha / rank (default 16)",
    "lora_dropout": "dropout on the LoRA adapters' input while training (default 0)",
    "lora_targets": f"the block projections LoRA adapts, comma-separated (default {','.join(BLOCK_PROJECTIONS)}: "
                    f"attention and MLP)",
    "allow_binary": "train on --data that does not look like text (NUL bytes, or much that is not UTF-8), its "
                    "undecodable bytes replaced by U+FFFD",
    "report_to": f"also send the logged numbers to: {', '.join(REPORT_TO)} (each but none an optional extra: "
                 f"pip install -e \".[NAME]\")",
}


def add_train_arguments(parser: argparse.ArgumentParser, only: set[str] | None = None) -> None:
    """One flag per TrainConfig field (--max-steps for max_steps, ...), defaults from the dataclass; with
    --recipe, the recipes and their values close the help."""
    if only is None or "recipe" in only:
        parser.epilog = "recipes:\n" + recipe_table()
    for flag_field in fields(TrainConfig):
        if flag_field.name in ("model", "budgeted_steps") or (only is not None and flag_field.name not in only):
            continue  # --preset fills the model; the trainer fixes budgeted_steps
        flag = "--" + flag_field.name.replace("_", "-")
        default = flag_field.default
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=_HELP.get(flag_field.name))
        else:
            kind = {"int": int, "float": float, "str": str}[str(flag_field.type).split(" |")[0]]
            kind = path_argument if flag_field.name in PATH_FIELDS else kind
            parser.add_argument(flag, type=kind, default=default, help=_HELP.get(flag_field.name, f"default {default}"))


def parse_train_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line, with `given` added: the names of the TrainConfig fields it sets. (argparse
    leaves a value already in the namespace it is given alone when the flag is absent.) `--recipe list`
    prints the recipes and exits, as --help does."""
    absent = object()
    args = parser.parse_args(argv, argparse.Namespace(**{field.name: absent for field in fields(TrainConfig)}))
    args.given = {name for name, value in vars(args).items() if value is not absent}
    for name in set(vars(args)) - args.given - {"given"}:
        setattr(args, name, parser.get_default(name))
    if args.recipe == "list":
        if speaks_for_its_node():
            print(recipe_table())
        parser.exit(0)
    return args


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    """The recipe of a parsed command line: the flags it gives (`args.given`, from parse_train_args) over the
    named --recipe; without one, `finetune` for a pretrained --init-from, else `seed`. A recipe that fills
    flags says which. (A namespace without `given` is taken as it is.)"""
    values = known_fields(TrainConfig, vars(args))
    values.pop("model", None)  # the model comes from --preset or an override, never from a flag
    given = getattr(args, "given", None)
    if given is None:
        return TrainConfig(**{**values, **overrides})
    name = values["recipe"] if "recipe" in given else _implied_recipe(values.get("init_from"))
    filled = {key: value for key, value in recipe_named(name).values.items() if key not in given}
    if filled and speaks_for_its_node():
        print(f"recipe {name}: {recipe_flags(filled)} (give a flag to change one; --recipe list shows the recipes)")
    return TrainConfig(**{**values, **filled, "recipe": name, **overrides})


def _implied_recipe(init_from: str | None) -> str:
    return PRETRAINED_RECIPE if init_from and is_pretrained_source(init_from) else DEFAULT_RECIPE
