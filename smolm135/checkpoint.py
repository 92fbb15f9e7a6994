"""The checkpoint: what a training checkpoint holds, where a run writes it, and how it is read back.

This module is the only one that spells a checkpoint key or an output folder name; everything else goes
through `Checkpoint` (the record of one checkpoint), `TrainingFacts` (what a model card or the demo says
about a training run) and `RunLayout` (where a run writes).

A checkpoint file is a dict of plain data and tensors (`Checkpoint.to_state`), so
`torch.load(path, weights_only=True)` reads it and a checkpoint from a stranger cannot run code. Writing
goes to a temporary file in the same folder, is flushed and fsynced, then renamed over the target: a kill
at any instant leaves either the previous file or the new one, never a torn one.

Format versions (`format_version` in the file):
  1  written before the version was recorded: no `format_version`, no `nonfinite_in_a_row`, and a
     `data_position.next_step` equal to `step`. Still read.
  2  adds `format_version` and `nonfinite_in_a_row`; `data_position` holds seed, global batch size,
     sequence length and corpus key, which a resume compares with its own.
  3  adds `tokenizer`: the record of the tokenizer the model reads (`smolm135.data.tokenizer.tokenizer_from_record`),
     GPT-2's or a pretrained model's own tokenizer.json. Versions 1 and 2 used GPT-2.
  4  adds `lora`: a LoRA run's settings and adapters (smolm135/lora.py); `model_state_dict` then holds the
     base weights, unmerged. A reader of version 3 would load the base alone, so the version says it cannot.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from smollm135_model import ModelConfig, SmoLM135_Model, clean_state_dict, vocab_size_for, with_new_token_rows

from smolm135.runtime.disk import make_room, remove_interrupted_writes, temporary_path, write_failure
from smolm135.errors import UserError, is_int, is_number
from smolm135.lora import is_adapter_record, load_weights
from smolm135.runtime.probes import hand_decode_probe
from smolm135.runtime.device import is_precision_record
from smolm135.data.tokenizer import tokenizer_from_record, tokenizer_record_problem

FORMAT_NAME = "smolm135-checkpoint"
FORMAT_VERSION = 4
REQUIRED_KEYS = ("model_state_dict", "model_config")
# Everything else is optional: a checkpoint converted back from a Hugging Face folder has no optimizer,
# no RNG state and (without training_info.json) no step; a missing key reads as its default below.
OPTIONAL_KEYS = ("format", "format_version", "train_config", "optimizer_state_dict", "grad_scaler_state_dict",
                 "step", "tokens_seen", "elapsed_seconds", "nonfinite_in_a_row", "history", "data_position",
                 "rng_state", "train_loss", "val_loss", "data_name", "torch_version", "converted_from", "final_model",
                 "num_threads", "tokenizer", "precision", "lora")
TRAINING_INFO_FILE = "training_info.json"  # a checkpoint's training facts, beside an exported model's weights
_EXPORT_FILES = "export_files"  # training_info.json's list of the files an export wrote (not training facts)

# An optimizer made of several (optim.OptimizerPair) saves one state dict per optimizer under this key.
PARTS_KEY = "optimizers"
# AdamW's count of a parameter's updates, a 0-dim float tensor in its state; every other tensor of a
# parameter's state (AdamW's two moments, Muon's momentum buffer) has the parameter's shape and dtype.
STEP_COUNT = "step"


def required_state(optimizer: torch.optim.Optimizer) -> tuple[str, ...]:
    """What `optimizer` keeps per parameter once it has stepped it: a state missing one fails mid-step."""
    if isinstance(optimizer, torch.optim.Muon):
        return ("momentum_buffer",)
    return (STEP_COUNT, "exp_avg", "exp_avg_sq")


def saved_state_problem(optimizer: torch.optim.Optimizer, param: torch.Tensor, saved) -> str | None:
    """Why one parameter's saved state cannot go into `optimizer`, in words; None when it fits (an empty
    state is a parameter not stepped yet, filled at its first step). torch's load_state_dict takes tensors of
    any shape, and the fused AdamW kernel then reads past the end of a smaller one: the process dies
    (SIGSEGV or SIGBUS) instead of raising."""
    if not isinstance(saved, dict):
        return f"a {type(saved).__name__} instead of a dict of tensors"
    missing = [key for key in required_state(optimizer) if key not in saved]
    if saved and missing:
        return f"no {missing[0]}"
    for key, value in saved.items():
        if not isinstance(value, torch.Tensor):
            return f"{key} is a {type(value).__name__}, not a tensor"
        problem = step_count_problem(value) if key == STEP_COUNT else (
            None if (value.shape, value.dtype) == (param.shape, param.dtype)
            else f"is {_described(value)}, its parameter {_described(param)}")
        if problem:
            return f"{key} {problem}"
    return None


def step_count_problem(count: torch.Tensor) -> str | None:
    """Why a saved step count is not one: a single float, 0 or more (a negative count makes the bias
    correction negative); None when it is."""
    if count.dim() != 0 or not count.is_floating_point():
        return f"is {_described(count)}, not one float"
    return "is negative" if count < 0 else None


def _described(tensor: torch.Tensor) -> str:
    return f"a {tuple(tensor.shape)} {str(tensor.dtype).replace('torch.', '')} tensor"


class CheckpointError(UserError):
    """A checkpoint file that cannot be read (missing, truncated, corrupt, or not ours)."""


class NewerCheckpointError(CheckpointError):
    """A checkpoint written by a newer smolm135, in a format this one does not know: intact, not corrupt."""


# ------------------------------------------------------------------ where a run writes


LOGS_DIR = "logs"
CACHE_DIR = "cache"
LATEST = "latest.pt"
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")
_TIMESTAMP = re.compile(r"_(\d{8}_\d{6})(?:_\d+)?\.pt$")


def run_timestamp() -> str:
    """The <timestamp> in a run's file names: 20260131_235959."""
    return time.strftime("%Y%m%d_%H%M%S")


@dataclass(frozen=True)
class RunLayout:
    """Where a kind of run writes, under `out_dir` (the trainer's --out-dir)."""

    checkpoint_subdir: str = "checkpoints"
    final_subdir: str = "models"
    final_prefix: str = "final_model"
    log_prefix: str = "training"
    out_dir: Path = Path(".")

    def under(self, out_dir: str | os.PathLike) -> "RunLayout":
        return replace(self, out_dir=Path(out_dir))

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / self.checkpoint_subdir

    @property
    def final_dir(self) -> Path:
        return self.out_dir / self.final_subdir

    @property
    def logs_dir(self) -> Path:
        return self.out_dir / LOGS_DIR

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / CACHE_DIR  # the tokenized corpora, shared by every kind of run

    @property
    def latest_checkpoint(self) -> Path:
        return self.checkpoint_dir / LATEST

    @property
    def final_glob(self) -> str:
        """The finished models of this kind of run, relative to out_dir."""
        return f"{self.final_subdir}/{self.final_prefix}_*.pt"

    def final_path(self, timestamp: str) -> Path:
        """models/final_model_<timestamp>.pt, or with _2, _3, ... when two runs finish in the same second."""
        return unused_path(self.final_dir / f"{self.final_prefix}_{timestamp}.pt")

    def log_path(self, timestamp: str) -> Path:
        return self.logs_dir / f"{self.log_prefix}_{timestamp}.log"

    def plot_path(self, timestamp: str) -> Path:
        return self.logs_dir / f"{self.log_prefix}_{timestamp}.png"

    def remove_interrupted_writes(self) -> list[Path]:
        """The temporary checkpoint and final-model files that killed runs left behind, deleted."""
        return remove_interrupted_writes(self.checkpoint_dir) + remove_interrupted_writes(self.final_dir)

    def make_dirs(self) -> None:
        try:
            for folder in (self.checkpoint_dir, self.final_dir, self.logs_dir):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"cannot write to --out-dir {self.out_dir}: {error.strerror}; "
                            f"choose a writable folder") from None


TRAINING = RunLayout()
CONTINUED = RunLayout(checkpoint_subdir="checkpoints/continued", final_subdir="continued_models",
                      final_prefix="continued_model", log_prefix="continued_training")
FINAL_MODEL_GLOB = TRAINING.final_glob
TRAINED_MODEL_GLOBS = (TRAINING.final_glob, CONTINUED.final_glob)


def unused_path(path: Path) -> Path:
    """`path`, or `path` with _2, _3, ... before the suffix when it exists already."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    return candidate


# ------------------------------------------------------------------ what a checkpoint holds


@dataclass
class Progress:
    """Where a run stands: everything a checkpoint carries besides weights, optimizer and RNG."""

    step: int = 0  # optimizer steps completed; also the data position (batches are a function of it)
    tokens_seen: int = 0
    elapsed_seconds: float = 0.0
    history: dict = field(default_factory=lambda: {"train": [], "val": []})  # [[step, loss], ...]
    nonfinite_in_a_row: int = 0  # updates skipped in a row for a loss or gradient that was not finite

    @property
    def last_train_loss(self) -> float | None:
        return self.history["train"][-1][1] if self.history["train"] else None

    @property
    def last_val_loss(self) -> float | None:
        return self.history["val"][-1][1] if self.history["val"] else None


@dataclass(frozen=True)
class DataPosition:
    """What, besides the step, decides the batches a run trains on (a batch is a pure function of these)."""

    seed: int
    global_batch_size: int
    seq_len: int
    corpus_key: str | None  # the hash of the tokenized text

    def differences(self, now: "DataPosition") -> list[str]:
        """Sentences on what a resumed run (`now`) changes about the batches of the saved one (`self`)."""
        notes = []
        if self.global_batch_size != now.global_batch_size:  # e.g. resumed with another number of processes
            notes.append(f"the checkpoint trained with a global batch of {self.global_batch_size} sequences, this "
                         f"run uses {now.global_batch_size} (batch size x grad accum x processes); set "
                         f"--batch-size or --grad-accum to keep {self.global_batch_size}")
        if self.seq_len != now.seq_len:
            notes.append(f"the checkpoint trained on sequences of {self.seq_len} tokens, this run on {now.seq_len}")
        if self.seed != now.seed:
            notes.append(f"the checkpoint's batches were drawn with --seed {self.seed}, this run's with {now.seed}")
        if self.corpus_key is not None and self.corpus_key != now.corpus_key:
            notes.append("the tokenized text differs from the one the checkpoint trained on (another text, or "
                         "another version of the token cache): training goes on with this run's text")
        return notes


@dataclass(frozen=True)
class TrainingFacts:
    """What a checkpoint says about its training run, as a model card, training_info.json or the demo shows
    it (None where a checkpoint does not say)."""

    data_name: str | None = None
    step: int | None = None
    tokens_seen: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    history: dict | None = None  # {"train": [[step, loss], ...], "val": [...]}
    train_config: dict | None = None

    def to_info(self) -> dict:
        """The contents of training_info.json."""
        return asdict(self)

    @classmethod
    def from_info(cls, info: dict) -> "TrainingFacts":
        """From training_info.json (an older or hand-written one may hold only some of the fields)."""
        return cls(**{name: info.get(name) for name in cls.__dataclass_fields__})


def write_training_info(folder: Path, facts: TrainingFacts) -> Path:
    path = Path(folder) / TRAINING_INFO_FILE
    path.write_text(json.dumps(facts.to_info(), indent=2) + "\n", encoding="utf-8")
    return path


def record_export_files(folder: Path) -> None:
    """List in the folder's training_info.json the names the export wrote in it (itself included): a later
    export over the folder keeps every other file, which the user added."""
    path = Path(folder) / TRAINING_INFO_FILE
    info = json.loads(path.read_text(encoding="utf-8"))
    info[_EXPORT_FILES] = sorted(entry.name for entry in Path(folder).iterdir())
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def recorded_export_files(folder: Path) -> set[str] | None:
    """The names an export listed as its own (record_export_files); None when it listed none (an export
    written before the list, or no export)."""
    try:
        names = json.loads((Path(folder) / TRAINING_INFO_FILE).read_text(encoding="utf-8")).get(_EXPORT_FILES)
    except (OSError, ValueError, AttributeError):
        return None
    return set(names) if isinstance(names, list) else None


def read_training_info(folder: Path) -> TrainingFacts:
    """The facts in a folder's training_info.json; all None when the folder has none."""
    path = Path(folder) / TRAINING_INFO_FILE
    return TrainingFacts.from_info(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else TrainingFacts()


@dataclass
class Checkpoint:
    """One checkpoint, as a record: `to_state()` is the dict written to disk, `from_state()` reads one back."""

    model_state_dict: dict
    model_config: dict  # ModelConfig.to_dict(): rebuilds the model
    train_config: dict = field(default_factory=dict)  # TrainConfig.to_dict(): the recipe, without the model
    progress: Progress = field(default_factory=Progress)
    optimizer_state_dict: dict | None = None
    grad_scaler_state_dict: dict = field(default_factory=dict)  # float16 training's loss scale; {} otherwise
    data_position: DataPosition | None = None
    rng_state: dict | None = None  # capture_rng_state()
    data_name: str | None = None
    torch_version: str | None = None
    converted_from: str | None = None  # the Hugging Face folder this checkpoint was made from
    # The file name (in the layout's final folder) of the finished model, in the checkpoint of a run's last
    # step: a re-run that finds the run finished but that file missing (killed while writing it) writes it.
    final_model: str | None = None
    # The CPU threads the run computes with: a CPU sum split over another number of threads rounds
    # differently, so a resume computes with the saved number to stay bitwise on the uninterrupted path.
    num_threads: int | None = None
    tokenizer: dict | None = None  # the tokenizer's record (plain strings); None: GPT-2, as before format 3
    # The precision the run computes in (runtime.precision_record). `--dtype auto` measures it on a CPU, and a
    # measurement can come out otherwise on a later start (another load, a cleared cache), so a resume takes
    # the recorded one and computes as the uninterrupted run did.
    precision: dict | None = None
    # A LoRA run's adapters (lora.adapter_record): settings and tensors; model_state_dict holds the base weights,
    # and a plain model built from the checkpoint gets them merged (`load_weights_into`)
    lora: dict | None = None
    source: str = "checkpoint"  # where it was read from, for messages; not saved

    # ---- reading and writing

    def to_state(self) -> dict:
        state = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                 "model_state_dict": clean_state_dict(self.model_state_dict), "model_config": self.model_config,
                 "train_config": self.train_config, "grad_scaler_state_dict": self.grad_scaler_state_dict,
                 **{name: getattr(self.progress, name) for name in
                    ("step", "tokens_seen", "elapsed_seconds", "nonfinite_in_a_row", "history")},
                 "train_loss": self.progress.last_train_loss, "val_loss": self.progress.last_val_loss,
                 "data_name": self.data_name, "torch_version": self.torch_version}
        optional = {"optimizer_state_dict": self.optimizer_state_dict, "rng_state": self.rng_state,
                    "data_position": asdict(self.data_position) if self.data_position else None,
                    "converted_from": self.converted_from, "final_model": self.final_model,
                    "num_threads": self.num_threads, "tokenizer": self.tokenizer, "precision": self.precision,
                    "lora": self.lora}
        return state | {key: value for key, value in optional.items() if value is not None}

    @classmethod
    def from_state(cls, state, source: str | os.PathLike = "checkpoint") -> "Checkpoint":
        """The record of a loaded dict; CheckpointError if it is not ours, comes from a newer version, or
        holds a field of the wrong kind or an absurd size (checked before anything is built from it)."""
        check_format(state, source)
        problems = state_problems(state)
        if problems:
            raise CheckpointError(f"{source} is not a usable smolm135 checkpoint: {'; '.join(problems[:3])}")
        position = state.get("data_position")
        return cls(
            model_state_dict=state["model_state_dict"], model_config=state["model_config"],
            train_config=state.get("train_config") or {},
            progress=Progress(int(state.get("step") or 0), int(state.get("tokens_seen") or 0),
                              float(state.get("elapsed_seconds") or 0.0),
                              state.get("history") or {"train": [], "val": []},
                              int(state.get("nonfinite_in_a_row") or 0)),
            optimizer_state_dict=state.get("optimizer_state_dict"),
            grad_scaler_state_dict=state.get("grad_scaler_state_dict") or {},
            data_position=DataPosition(position["seed"], position["global_batch_size"], position["seq_len"],
                                       position.get("corpus_key")) if position else None,
            rng_state=state.get("rng_state"), data_name=state.get("data_name"),
            torch_version=state.get("torch_version"), converted_from=state.get("converted_from"),
            final_model=state.get("final_model"), num_threads=state.get("num_threads"),
            tokenizer=state.get("tokenizer"), precision=state.get("precision"), lora=state.get("lora"),
            source=str(source))

    @classmethod
    def from_facts(cls, model: SmoLM135_Model, facts: TrainingFacts, converted_from: str,
                   tokenizer: dict | None = None) -> "Checkpoint":
        """A checkpoint of a model that comes with only the facts of its training (a Hugging Face folder)."""
        history = facts.history or {"train": [], "val": []}
        return cls(clean_state_dict(model.state_dict()), model.config.to_dict(), facts.train_config or {},
                   Progress(facts.step or 0, facts.tokens_seen or 0, history=history),
                   data_name=facts.data_name, converted_from=converted_from, tokenizer=tokenizer)

    # ---- what readers ask of it

    @property
    def facts(self) -> TrainingFacts:
        return TrainingFacts(self.data_name, self.progress.step, self.progress.tokens_seen,
                             self.progress.last_train_loss, self.progress.last_val_loss, self.progress.history,
                             self.train_config)

    @property
    def started_from(self) -> str | None:
        """The checkpoint the run that wrote this one started from (--init-from), if any."""
        return self.train_config.get("init_from")

    def model_mismatch(self, model_config: ModelConfig) -> list[str]:
        """The fields where `model_config` differs from this checkpoint's model, as sentences."""
        wanted = model_config.to_dict()
        saved = ModelConfig.from_dict(self.model_config).to_dict()  # fields added since read as their defaults
        return [f"{key}: checkpoint has {saved.get(key)}, this run has {wanted[key]}"
                for key in wanted if saved.get(key) != wanted[key]]

    def build_tokenizer(self):
        """The tokenizer the model reads, rebuilt from the checkpoint alone (no other file)."""
        return tokenizer_from_record(self.tokenizer)

    def with_added_tokens(self, tokenizer, n_tokens: int) -> "Checkpoint":
        """This checkpoint for `tokenizer`, whose ids from `n_tokens` on are tokens the recorded tokenizer lacks
        (`data.tokenizer.with_chat_template`): the embedding gains their rows (`with_new_token_rows`), and the
        record names the tokenizer. Where the embedding grows, the optimizer state is left out: its moments no
        longer fit the weights, and training goes on with fresh ones (as from a converted checkpoint)."""
        config = ModelConfig.from_dict(self.model_config)
        vocab_size = vocab_size_for(tokenizer.n_vocab, config.vocab_size)
        weights = with_new_token_rows(clean_state_dict(self.model_state_dict), n_tokens,
                                      range(n_tokens, tokenizer.n_vocab), vocab_size)
        optimizer_state = self.optimizer_state_dict if vocab_size == config.vocab_size else None
        return replace(self, model_state_dict=weights, model_config=replace(config, vocab_size=vocab_size).to_dict(),
                       optimizer_state_dict=optimizer_state, tokenizer=tokenizer.to_record())

    def build_model(self) -> SmoLM135_Model:
        """The native model this checkpoint describes, with its weights loaded, in eval mode."""
        model = hand_decode_probe(SmoLM135_Model(ModelConfig.from_dict(self.model_config)))
        self.load_weights_into(model)
        return model.eval()

    def load_optimizer_into(self, optimizer: torch.optim.Optimizer) -> None:
        """The saved optimizer state, after checking that it has this optimizer's parameter groups and that
        every parameter's saved state fits it (`saved_state_problem`: torch would accept a misfit, and
        fail mid-step or crash the process). An optimizer made of several (`optim.OptimizerPair`) is checked
        one part at a time."""
        saved = self.optimizer_state_dict
        parts = getattr(optimizer, "optimizers", (optimizer,))
        saved_parts = saved[PARTS_KEY] if PARTS_KEY in saved else [saved]
        saved_sizes = [[len(group["params"]) for group in part["param_groups"]] for part in saved_parts]
        sizes = [[len(group["params"]) for group in part.param_groups] for part in parts]
        if saved_sizes != sizes:
            raise CheckpointError(f"{self.source}: its optimizer state has parameter groups of {saved_sizes} "
                                  f"parameters, this run's optimizer {sizes}: it belongs to another model or "
                                  f"recipe (resume with the --optimizer it was trained with)")
        for part, saved_part in zip(parts, saved_parts):
            saved_ids = [index for group in saved_part["param_groups"] for index in group["params"]]
            for index, param in zip(saved_ids, (param for group in part.param_groups for param in group["params"])):
                problem = saved_state_problem(part, param, saved_part["state"].get(index, {}))
                if problem:
                    raise CheckpointError(f"{self.source}: its optimizer state does not fit the model's "
                                          f"parameters (parameter {index}: {problem})")
        try:
            optimizer.load_state_dict(saved)
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{self.source}: its optimizer state does not load "
                                  f"({str(error).splitlines()[0][:120]})") from None

    def restore_rng(self) -> None:
        """Put the saved generators back (the checks in `state_problems` cover their kinds, torch the rest)."""
        try:
            restore_rng_state(self.rng_state)
        except (ValueError, KeyError, TypeError, RuntimeError, OverflowError) as error:
            raise CheckpointError(f"{self.source}: its random generator state does not load "
                                  f"({type(error).__name__})") from None

    def load_weights_into(self, model: torch.nn.Module) -> None:
        """The weights into a native model; a LoRA checkpoint's adapters merged, unless the model has adapters
        of its own to take them (lora.load_weights)."""
        try:
            load_weights(model, clean_state_dict(self.model_state_dict), self.lora)
        except RuntimeError as error:
            raise CheckpointError(f"{self.source}: the weights do not fit the model config stored with them "
                                  f"({str(error).splitlines()[0]})") from None


def check_format(state, source) -> None:
    """Refuse what is not a smolm135 checkpoint, or comes from a newer smolm135 than this one."""
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{source} is not a smolm135 checkpoint (no {'/'.join(REQUIRED_KEYS)})")
    if state.get("format", FORMAT_NAME) != FORMAT_NAME:
        raise CheckpointError(f"{source} is a {state['format']!r} file, not a smolm135 checkpoint")
    version = state.get("format_version", 1)
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise NewerCheckpointError(f"{source} has checkpoint format version {version}, and this smolm135 reads "
                              f"versions 1 to {FORMAT_VERSION}: update smolm135 to read it")


# ------------------------------------------------------------------ what a checkpoint may hold

MAX_THREADS = 4096
# A model config may not describe more than this many times the parameters its own weights hold (plus a
# margin): building the model allocates what the config says, and a hostile vocab_size of 10^13 would ask
# for petabytes. The estimate below is an upper bound of the architecture's count, not the exact count.
PARAMETER_BOUND_FACTOR = 2
PARAMETER_BOUND_MARGIN = 10**6


def _is_optimizer_state(value) -> bool:
    """A torch optimizer's state_dict: its moments per parameter index and its parameter groups."""
    return (isinstance(value, dict) and isinstance(value.get("state"), dict)
            and isinstance(value.get("param_groups"), list)
            and all(isinstance(group, dict) and isinstance(group.get("params"), list)
                    for group in value["param_groups"]))


def _count(value, minimum: int = 0) -> bool:
    return is_int(value) and value >= minimum


def _recorded_loss(value) -> bool:
    return is_number(value, finite=False)


def model_config_problems(config) -> list[str]:
    """What is wrong with a stored model config: not a dict, a field of the wrong kind, an impossible shape."""
    if not isinstance(config, dict):
        return [f"model_config is a {type(config).__name__}, not a dict"]
    problems = []
    for spec in dataclasses.fields(ModelConfig):
        if spec.name not in config:
            continue
        value, default = config[spec.name], spec.default
        if isinstance(default, bool):
            fits = isinstance(value, bool)
        elif isinstance(default, int) or default is None:  # None: an optional count (n_kv_head)
            fits = is_int(value) or (default is None and value is None)
        elif isinstance(default, float):
            fits = is_number(value)
        else:
            fits = isinstance(value, type(default))
        if not fits:
            problems.append(f"model_config.{spec.name} is {value!r}")
    if problems:
        return problems
    return [f"model_config: {problem}" for problem in ModelConfig.from_dict(config).validate()]


def approximate_parameters(config: ModelConfig) -> int:
    """An upper bound of the parameters `config` builds: embeddings, positions, and per layer attention
    (as if every head had its own keys and values) and a three-matrix MLP."""
    per_layer = 4 * config.n_embd * config.n_head * config.head_dim + 3 * config.n_embd * config.intermediate_size
    return (config.vocab_size + config.block_size) * config.n_embd + config.n_layer * (per_layer + 4 * config.n_embd)


def parameters_beyond_weights(config: ModelConfig, stored: int) -> int | None:
    """The parameters `config` describes (`approximate_parameters`) when that is more than the bound allows for
    weights holding `stored` numbers; None when the config fits them."""
    described = approximate_parameters(config)
    return described if described > PARAMETER_BOUND_FACTOR * stored + PARAMETER_BOUND_MARGIN else None


def state_problems(state: dict) -> list[str]:
    """Every field of a loaded checkpoint dict that is of the wrong kind, as short phrases (empty: usable)."""
    weights = state["model_state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                                for key, value in weights.items()):
        return ["model_state_dict is not a dict of named tensors"]
    problems = model_config_problems(state["model_config"])
    if not problems:
        stored = sum(tensor.numel() for tensor in weights.values())
        described = parameters_beyond_weights(ModelConfig.from_dict(state["model_config"]), stored)
        if described:
            problems.append(f"model_config describes about {described:,} parameters, but the weights hold "
                            f"{stored:,}")
    kinds = {
        "train_config": lambda v: isinstance(v, dict),
        "step": _count, "tokens_seen": _count, "nonfinite_in_a_row": _count,
        "elapsed_seconds": lambda v: is_number(v) and v >= 0,
        # a validation loss is recorded as it came out, NaN or infinite included (only a step's non-finite loss
        # skips its update), so a run's own checkpoint holding one must still load
        "train_loss": _recorded_loss, "val_loss": _recorded_loss,
        "history": lambda v: isinstance(v, dict) and all(
            isinstance(v.get(kind, []), list) and all(isinstance(point, (list, tuple)) and len(point) == 2
                                                      and _count(point[0]) and _recorded_loss(point[1])
                                                      for point in v.get(kind, [])) for kind in ("train", "val")),
        "optimizer_state_dict": lambda v: _is_optimizer_state(v) or (
            isinstance(v, dict) and isinstance(v.get(PARTS_KEY), list) and len(v) == 1
            and bool(v[PARTS_KEY]) and all(_is_optimizer_state(part) for part in v[PARTS_KEY])),
        "grad_scaler_state_dict": lambda v: isinstance(v, dict),
        "data_position": lambda v: isinstance(v, dict) and _count(v.get("seed")) and _count(v.get("global_batch_size"), 1)
        and _count(v.get("seq_len"), 1) and isinstance(v.get("corpus_key"), (str, type(None))),
        "rng_state": lambda v: isinstance(v, dict) and isinstance(v.get("python"), list)
        and isinstance(v.get("python_version_gauss"), list) and len(v["python_version_gauss"]) == 2
        and isinstance(v.get("numpy"), torch.Tensor) and _count(v.get("numpy_pos"))
        and isinstance(v.get("torch"), torch.Tensor) and v["torch"].dtype == torch.uint8,
        "data_name": lambda v: isinstance(v, str), "torch_version": lambda v: isinstance(v, str),
        "converted_from": lambda v: isinstance(v, str),
        # a bare file name: a checkpoint never chooses where a run writes
        "final_model": lambda v: isinstance(v, str) and v == Path(v).name and v.endswith(".pt"),
        "num_threads": lambda v: _count(v, 1) and v <= MAX_THREADS,
        "precision": is_precision_record,
        "lora": is_adapter_record,
        # plain strings only (tokenizer_from_record reads them); a kind it does not know is refused here
        "tokenizer": lambda v: isinstance(v, dict) and v.get("kind") in ("gpt2", "tokenizer.json")
        and all(isinstance(key, str) and isinstance(item, (str, type(None))) for key, item in v.items())
        and (v["kind"] != "tokenizer.json" or isinstance(v.get("tokenizer_json"), str)),
    }
    for key, fits in kinds.items():
        value = state.get(key)
        if value is not None and not fits(value):
            problems.append(f"{key} is {_short(value)}")
    if problems:
        return problems
    problems += progress_problems(state)
    if state.get("tokenizer") is not None:
        problem = tokenizer_record_problem(state["tokenizer"])
        problems += [f"its tokenizer record does not load ({problem})"] if problem else []
    adapters = state["lora"]["state_dict"] if state.get("lora") is not None else {}
    problems += [f"{where}[{name!r}] {problem}"
                 for where, tensors in (("model_state_dict", weights), ("lora adapters", adapters))
                 for name, tensor in tensors.items() if (problem := float_tensor_problem(tensor))]
    if state.get("optimizer_state_dict") is not None:  # a LoRA run's optimizer holds the adapters' moments
        problems += optimizer_tensor_problems(state["optimizer_state_dict"],
                                              {tensor.shape for tensor in [*weights.values(), *adapters.values()]})
    return problems


# No recipe takes a billion tokens in one optimizer step (the largest published pretraining runs take tens of
# millions): a count beyond that many per step is not one a run made. The recipe's own global batch is no
# bound, since a run may resume with a smaller one (and says so) after counting steps of a larger one.
MAX_TOKENS_PER_STEP = 2**30


def progress_problems(state: dict) -> list[str]:
    """Progress no run of the stored recipe can have made: a step beyond its max_steps (a run stops there),
    more tokens than the steps can hold, more losses recorded than there were steps to record them."""
    step = state.get("step") or 0
    max_steps = (state.get("train_config") or {}).get("max_steps")
    problems = []
    if _count(max_steps, 1) and step > max_steps:
        problems.append(f"step {step} is beyond the recipe's max_steps {max_steps}")
    if (state.get("tokens_seen") or 0) > step * MAX_TOKENS_PER_STEP:
        problems.append(f"tokens_seen {state['tokens_seen']} is more than {step} steps can take")
    if (state.get("nonfinite_in_a_row") or 0) > step:
        problems.append(f"nonfinite_in_a_row {state['nonfinite_in_a_row']} is more than its {step} steps")
    history = state.get("history") or {}
    for kind in ("train", "val"):
        points = history.get(kind, [])
        if len(points) > step + 1:  # one loss per step at most, and a validation loss at step 0 too
            problems.append(f"history[{kind!r}] holds {len(points)} losses, more than its {step} steps made")
        elif any(point[0] > step for point in points):
            problems.append(f"history[{kind!r}] holds a loss of a step beyond its step {step}")
    return problems


def float_tensor_problem(tensor: torch.Tensor) -> str | None:
    """Why a tensor of weights or optimizer moments is not usable, in words; None when it is finite floats.
    Integer weights would be cast silently; a NaN or an infinity trains (every update skipped) and serves
    a model that only says NaN."""
    if not tensor.is_floating_point():
        return f"is {str(tensor.dtype).replace('torch.', '')}, not floating point"
    if not torch.isfinite(tensor).all():
        return "holds NaN or infinite values"
    return None


def optimizer_tensor_problems(saved: dict, weight_shapes: set) -> list[str]:
    """What is wrong with the tensors of a stored optimizer state, whatever optimizer reads it: each is finite
    floats; a step count is one, 0 or more; a moment has the shape of one of the weights (which one,
    only the optimizer that loads it knows: `Checkpoint.load_optimizer_into` checks that)."""
    problems = []
    for part in saved[PARTS_KEY] if PARTS_KEY in saved else [saved]:
        for index, moments in part["state"].items():
            tensors = moments.items() if isinstance(moments, dict) else ()
            for key, value in ((key, value) for key, value in tensors if isinstance(value, torch.Tensor)):
                problem = float_tensor_problem(value)
                if problem is None and key == STEP_COUNT:
                    problem = step_count_problem(value)
                elif problem is None and value.shape not in weight_shapes:
                    problem = f"has shape {tuple(value.shape)}, which no weight has"
                if problem:
                    problems.append(f"optimizer state: parameter {index}'s {key} {problem}")
    return problems


def _short(value) -> str:
    text = repr(value) if not isinstance(value, (dict, list, torch.Tensor)) else f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------ RNG state


def capture_rng_state() -> dict:
    """Python's, numpy's, torch's and CUDA's generators, as plain data."""
    state = {
        "python": list(random.getstate()[1]),
        "python_version_gauss": [random.getstate()[0], random.getstate()[2]],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    version, gauss = state["python_version_gauss"]
    random.setstate((version, tuple(state["python"]), gauss))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ files


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every platform can open a folder (Windows); the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _WriteRecorder:
    """A file for torch.save that remembers the OSError of a failed write: torch reports it only as
    `RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos`, without the reason."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        self.file.flush()

    def __getattr__(self, name):  # otherwise the file it wraps (truncate, fileno, ...)
        return getattr(self.file, name)


def _tensor_bytes(value) -> int:
    """The bytes of every tensor in a nested checkpoint dict: about what its file needs on disk."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


def save_atomic(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """torch.save the checkpoint to `path` so that `path` is never seen half-written. A failed write (a full
    disk) removes its temporary file and raises a UserError naming the disk and the space needed."""
    path = Path(path)
    tmp = temporary_path(path)
    state = checkpoint.to_state()
    recorder = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            recorder = _WriteRecorder(f)
            torch.save(state, recorder)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as error:
        tmp.unlink(missing_ok=True)
        cause = recorder.error if recorder is not None and recorder.error else error
        if not isinstance(cause, OSError):
            raise  # a RuntimeError that no failed write explains is a bug, not a disk problem
        raise UserError(write_failure(str(path), path.parent, cause, _tensor_bytes(state)) + "; the temporary file "
                        "is removed and any previous checkpoint there is intact: "
                        f"{make_room(cause, 'another --out-dir')} and run the same command again") from None
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> Checkpoint:
    """Read a checkpoint with weights_only=True; CheckpointError if it is missing, torn, not ours or newer."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a torn or foreign file
        raise CheckpointError(f"checkpoint {path} is unreadable (truncated or corrupt: "
                              f"{type(error).__name__})") from None
    return Checkpoint.from_state(state, path)


def save_training_checkpoint(checkpoint: Checkpoint, checkpoint_dir: Path, keep: int) -> Path:
    """Write checkpoints/step_<N>.pt, then point checkpoints/latest.pt at it, then drop all but the newest
    `keep` step files. latest.pt is replaced in one rename, after the new file is safely on disk."""
    step_path = save_atomic(checkpoint, checkpoint_dir / f"step_{checkpoint.progress.step:07d}.pt")
    latest = checkpoint_dir / LATEST
    tmp_link = temporary_path(latest)
    tmp_link.unlink(missing_ok=True)
    try:
        os.link(step_path, tmp_link)  # a hard link: latest.pt costs no extra disk space
    except OSError:
        shutil.copyfile(step_path, tmp_link)
    os.replace(tmp_link, latest)
    _fsync_dir(checkpoint_dir)
    for old in step_checkpoints(checkpoint_dir)[keep:]:
        old.unlink(missing_ok=True)
    return latest


def step_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """step_<N>.pt files, newest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in checkpoint_dir.iterdir() if (m := _STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def newest_intact_checkpoint(checkpoint_dir: Path, warn=print) -> Checkpoint | None:
    """latest.pt if it loads, else the newest step file that does; None when there is no checkpoint.
    A corrupt file is renamed to `<name>.corrupt` (kept as evidence, out of the way of the next save);
    when every checkpoint is corrupt, CheckpointError: never silently start over."""
    candidates = [p for p in [checkpoint_dir / LATEST] + step_checkpoints(checkpoint_dir) if p.exists()]
    for path in candidates:
        try:
            return load_checkpoint(path)
        except NewerCheckpointError:
            raise  # a file this version cannot read is not corrupt: leave it where it is
        except CheckpointError as error:
            set_aside(path, error, warn)
    if candidates:
        raise no_intact_checkpoint(checkpoint_dir)
    return None


def set_aside(path: Path, error: CheckpointError, warn=print) -> None:
    """Rename a checkpoint that cannot be resumed to `<name>.corrupt`: kept as evidence, out of the way of
    the next save and of the next search for an intact one."""
    evidence = path.with_name(path.name + ".corrupt")
    os.replace(path, evidence)
    warn(f"warning: {error}; moved it to {evidence}")


def no_intact_checkpoint(checkpoint_dir: Path) -> CheckpointError:
    return CheckpointError(f"no intact checkpoint left in {checkpoint_dir} (the corrupt ones were renamed "
                           f"*.corrupt): pass --resume never to start fresh, or --resume PATH")


def newest_trained_model(search_dirs: list[Path], patterns=TRAINED_MODEL_GLOBS) -> Path | None:
    """The newest final or continued model in any of the folders, by the timestamp in its name, then its
    modification time; None when there is none."""
    candidates = [path for folder in search_dirs for pattern in patterns for path in Path(folder).glob(pattern)]

    def newness(path: Path):
        match = _TIMESTAMP.search(path.name)
        return (match.group(1) if match else "", path.stat().st_mtime)

    return max(candidates, key=newness, default=None)

