"""One training run's state as one object (`Run`), how it is set up, and how it becomes a checkpoint and
comes back from one. The loop that drives it is `Model_smollm135_trainer.train`."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from smollm135_model import PRESETS, ModelConfig, SmoLM135_Model, vocab_size_for, with_new_token_rows

from smolm135.checkpoint import (
    Checkpoint,
    DataPosition,
    Progress,
    RunLayout,
    capture_rng_state,
    CheckpointError,
    load_checkpoint,
    newest_intact_checkpoint,
    no_intact_checkpoint,
    save_atomic,
    save_training_checkpoint,
    set_aside,
)
from smolm135.data import sources
from smolm135.data.chat import ChatData
from smolm135.inference.chat_scoring import AnswersRight
from smolm135.training.chat import bits_per_answer_byte
from smolm135.data.corpus import (
    Corpus,
    available_cpus,
    check_looks_like_text,
    check_not_empty,
    corpus_tokenizer,
    load_corpus,
    most_tokens,
    resolve_sources,
    split_train_val,
)
from smolm135.errors import UserError
from smolm135.inference.generation import opening_of, prompt_ids_of
from smolm135.interop.loading import load_model
from smolm135.lora import LoraSettings, adapter_record, mismatch, split_state_dict
from smolm135.interop.pretrained import PretrainedModel, is_pretrained_source
from smolm135.runtime.probes import hand_decode_probe
from smolm135.runtime.device import Distributed, main_process_first, precision_record, run_on_main
from smolm135.data.tokenizer import GPT2TextTokenizer, has_chat_template_named, with_chat_template
from smolm135.training.config import TrainConfig, validate
from smolm135.training.log import RunLog


@dataclass
class Run:
    """Everything one process of a training run holds while it trains."""

    cfg: TrainConfig
    layout: RunLayout  # bound to the run's --out-dir
    timestamp: str  # in the names of the final model, log and plot
    distributed: Distributed
    device: torch.device
    dtype: torch.dtype  # the autocast precision
    log: RunLog
    corpus: Corpus
    train_tokens: np.ndarray  # (N_train,) token ids
    val_tokens: np.ndarray  # (N_val,)
    model: SmoLM135_Model  # the weights, without wrappers: what checkpoints and samples use
    step_model: torch.nn.Module  # the model as a step runs it: compiled and/or DistributedDataParallel
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # float16's loss scale; disabled otherwise
    progress: Progress
    final_model: str | None = None  # the final model's file name, chosen when the last step is reached
    chat: ChatData | None = None  # packed conversations, when --data holds them (else batches read the tokens)
    # of conversations, per evaluation of this process's run: (step, held-out answers given word for word)
    answers_right: list[tuple[int, AnswersRight]] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.distributed.is_main

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step, over every process and micro-step."""
        return self.cfg.global_batch(self.distributed.world_size)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.cfg.seq_len

    @property
    def tokenizer(self):
        return self.corpus.tokenizer

    @functools.cached_property
    def val_bytes(self) -> int:
        """UTF-8 bytes of the validation text, counted once."""
        return self.tokenizer.text_bytes(self.val_tokens)

    @functools.cached_property
    def sample_prompt_ids(self) -> list[int]:
        """What every sample of the run continues: --sample-prompt, else the opening of the validation text,
        so that the log shows one text continued better and better."""
        if self.cfg.sample_prompt is not None:
            return prompt_ids_of(self.tokenizer, self.cfg.sample_prompt)
        return opening_of(self.val_tokens, self.tokenizer.document_separator_id)

    def bits_per_byte(self, loss: float) -> float:
        """A loss in nats per token as bits per byte of text: the figure comparable across tokenizers (of a
        conversation run: bits per byte of the held-out answers)."""
        if self.chat is not None:
            return bits_per_answer_byte(self.chat, loss, self.cfg.eval_batches * self.global_batch)
        return loss / math.log(2) * len(self.val_tokens) / max(1, self.val_bytes)

    @property
    def data_position(self) -> DataPosition:
        return DataPosition(self.cfg.seed, self.global_batch, self.cfg.seq_len, self.corpus.key)

    # ---- checkpoints

    def to_checkpoint(self) -> Checkpoint:
        """The run as it stands, as a checkpoint record (a LoRA run's: the base weights and the adapters apart)."""
        weights, adapters = split_state_dict(self.model)
        lora = LoraSettings.of(self.cfg)
        return Checkpoint(weights, self.model.config.to_dict(), self.cfg.to_dict(), self.progress,
                          self.optimizer.state_dict(), self.scaler.state_dict(), self.data_position,
                          capture_rng_state(), self.corpus.name, str(torch.__version__),
                          final_model=self.final_model, num_threads=torch.get_num_threads(),
                          tokenizer=self.tokenizer.to_record(),
                          precision=precision_record(self.device, self.dtype,
                                                     self.model.cpu_kernels.training_attention_by_matmuls),
                          lora=adapter_record(lora, adapters) if lora else None)

    def save_checkpoint(self) -> Path:
        """The step's checkpoint and latest.pt (rank 0 alone; the others wait and learn of a failure)."""
        return run_on_main(self.distributed, lambda: save_training_checkpoint(
            self.to_checkpoint(), self.layout.checkpoint_dir, self.cfg.keep_checkpoints))

    def choose_final_model(self) -> None:
        """Name the final model before the last checkpoint is written, so that checkpoint records it."""
        self.final_model = self.final_model or self.layout.final_path(self.timestamp).name

    @property
    def final_model_missing(self) -> bool:
        """A finished run whose final model is not on disk (killed while writing it)."""
        return self.final_model is not None and not (self.layout.final_dir / self.final_model).exists()

    def save_final(self) -> Path | None:
        """The finished model, under the name the last checkpoint recorded (rank 0 alone; None on the others)."""
        self.choose_final_model()
        return run_on_main(self.distributed, lambda: save_atomic(self.to_checkpoint(),
                                                                 self.layout.final_dir / self.final_model))

    def restore(self, checkpoint: Checkpoint) -> None:
        """Take weights, optimizer, loss scale, progress and RNG state from a checkpoint of the same model."""
        checkpoint.load_weights_into(self.model)
        if checkpoint.optimizer_state_dict is not None:
            checkpoint.load_optimizer_into(self.optimizer)
        if checkpoint.grad_scaler_state_dict and self.scaler.is_enabled():
            self.scaler.load_state_dict(checkpoint.grad_scaler_state_dict)
        self.progress = checkpoint.progress
        if checkpoint.rng_state is not None:
            checkpoint.restore_rng()
        if checkpoint.started_from == self.cfg.init_from:  # this run's own checkpoint, not the one it started from
            self.final_model = checkpoint.final_model


# ------------------------------------------------------------------ setting a run up


def load_training_data(cfg: TrainConfig, layout: RunLayout, distributed: Distributed, tokenizer=None):
    """The corpus, tokenized by the main process first (the others then read its cache), and its split."""
    corpus = main_process_first(distributed, lambda: load_corpus(
        cfg.data, layout.cache_dir, show_progress=cfg.progress and distributed.is_main,
        quiet=not distributed.is_main, text_field=cfg.text_field, tokenizer=tokenizer))
    train_tokens, val_tokens = split_train_val(corpus.tokens, cfg.val_fraction)
    return corpus, train_tokens, val_tokens


def check_training_data(cfg: TrainConfig, global_batch: int) -> None:
    """What can be known of --data before anything is written (a refused run leaves no file behind): its
    sources exist and can be read, hold text (unless --allow-binary) and the column read, and plain text
    holds bytes enough for one batch, since a token spans at least one byte."""
    files = resolve_sources(cfg.data)
    check_not_empty(cfg.data, files)
    check_looks_like_text(files, cfg.allow_binary)
    sources.check_text_field(files, cfg.text_field)
    upper_bound = most_tokens(files)
    if upper_bound is not None and not holds_a_batch(upper_bound, cfg, global_batch):
        name = files[0].name if len(files) == 1 else f"{len(files)} files"
        raise UserError(too_small(f"{name} has at most {upper_bound:,} tokens", cfg, global_batch))


def holds_a_batch(n_tokens: int, cfg: TrainConfig, global_batch: int) -> bool:
    """Whether a corpus of `n_tokens` split per --val-fraction holds one training batch and one validation
    window (the split is `split_train_val`'s: more tokens never hold less)."""
    n_val = int(n_tokens * cfg.val_fraction)
    return n_tokens - n_val >= global_batch * cfg.seq_len + 1 and n_val >= cfg.seq_len + 1


def too_small(what: str, cfg: TrainConfig, global_batch: int) -> str:
    needed_train = global_batch * cfg.seq_len + 1
    needed_total = math.ceil(max(needed_train / (1 - cfg.val_fraction), (cfg.seq_len + 1) / cfg.val_fraction))
    return (f"{what}, but one batch of {global_batch} x {cfg.seq_len} needs at least {needed_total:,} (with "
            f"{cfg.val_fraction:.0%} held out for validation): add text, or lower --batch-size / --seq-len")


def check_corpus_fits(corpus: Corpus, cfg: TrainConfig, global_batch: int) -> None:
    if corpus.max_token_id >= cfg.model.vocab_size:
        raise UserError(f"the corpus holds token id {corpus.max_token_id}, outside the model's vocabulary of "
                        f"{cfg.model.vocab_size}: use a preset whose vocab_size covers the tokenizer")
    if not holds_a_batch(len(corpus.tokens), cfg, global_batch):
        raise UserError(too_small(f"{corpus.name} has {len(corpus.tokens):,} tokens", cfg, global_batch))


def new_model(cfg: TrainConfig, device: torch.device) -> SmoLM135_Model:
    torch.manual_seed(cfg.seed)  # identical initial weights on every process and every fresh run
    model = hand_decode_probe(SmoLM135_Model(cfg.model).to(device))
    model.gradient_checkpointing = cfg.grad_checkpointing
    return model


def wrap_for_steps(model: SmoLM135_Model, cfg: TrainConfig, distributed: Distributed,
                   device: torch.device) -> torch.nn.Module:
    """The model as the steps call it: compiled with --compile, under DistributedDataParallel with torchrun."""
    step_model = torch.compile(model) if cfg.compile else model
    if distributed.enabled:
        # gradient_as_bucket_view: gradients live in DDP's all-reduce buckets, not in a second copy
        step_model = DistributedDataParallel(step_model, device_ids=[device.index] if device.type == "cuda" else None,
                                             gradient_as_bucket_view=True)
    return step_model


# ------------------------------------------------------------------ resuming


def find_resume_checkpoint(cfg: TrainConfig, layout: RunLayout, log: RunLog) -> Checkpoint | None:
    """The checkpoint to continue from: this run's own (per --resume), else --init-from, else none."""
    found = None
    if cfg.resume == "auto":
        found = newest_intact_checkpoint(layout.checkpoint_dir, warn=log.say)
        if found is not None and found.started_from != cfg.init_from:
            log.say(f"ignoring {found.source}: it started from {found.started_from}, this run from {cfg.init_from}")
            found = None
    elif cfg.resume != "never":
        found = load_checkpoint(cfg.resume)
    if found is None and cfg.init_from and not is_pretrained_source(cfg.init_from):
        found = load_checkpoint(cfg.init_from)
    return found


# ------------------------------------------------------------------ starting from a pretrained model


@dataclass(frozen=True)
class StartingPoint:
    """What a run starts from besides its recipe: the checkpoint to continue (if any), the pretrained weights
    of a fresh start from SmolLM & co (if any), and the tokenizer the model reads."""

    checkpoint: Checkpoint | None
    pretrained: PretrainedModel | None
    tokenizer: object


def starting_point(cfg: TrainConfig, checkpoint: Checkpoint | None, log: RunLog) -> tuple[TrainConfig, StartingPoint]:
    """A checkpoint brings its tokenizer; a pretrained --init-from (when there is no checkpoint of this run to
    resume) brings its weights, config and tokenizer, and the recipe's model becomes its config. Without
    either, the model is the preset's, and its tokenizer (None here) is `fresh_tokenizer`'s."""
    pretrained = None
    if cfg.init_from and is_pretrained_source(cfg.init_from):
        if checkpoint is None:
            pretrained = pretrained_start(cfg.init_from, cfg.trust_remote_code)
            log.say(f"starting from {pretrained.description}: its weights and tokenizer, {fresh_optimizer(0)}")
        model_config = pretrained.config if pretrained else ModelConfig.from_dict(checkpoint.model_config)
        cfg = adopt_model(cfg, model_config, cfg.init_from)
    if pretrained is not None:
        tokenizer = pretrained.tokenizer
    else:
        tokenizer = checkpoint.build_tokenizer() if checkpoint is not None else None
    return cfg, StartingPoint(checkpoint, pretrained, tokenizer)


def add_chat_template(cfg: TrainConfig, start: StartingPoint, log: RunLog) -> tuple[TrainConfig, StartingPoint]:
    """--chat-template NAME (checked by `training.chat.check_chat_template_flag`): the model's tokenizer (GPT-2's for
    a model trained from scratch) gains the template and the special tokens it lacks, after its vocabulary; the
    model's embedding and output head gain their rows (a checkpoint's or pretrained weights: `with_new_token_rows`),
    and the recipe's model its vocabulary. A tokenizer that has the template (the checkpoint of a run resumed with
    the same command) is kept as it is."""
    if cfg.chat_template is None:
        return cfg, start
    tokenizer = start.tokenizer if start.tokenizer is not None else GPT2TextTokenizer()
    if has_chat_template_named(tokenizer, cfg.chat_template):
        return adopt_vocabulary(cfg, tokenizer), start
    grown = with_chat_template(tokenizer, cfg.chat_template)
    cfg = adopt_vocabulary(cfg, grown)
    checkpoint, pretrained = start.checkpoint, start.pretrained
    if checkpoint is not None:
        checkpoint = checkpoint.with_added_tokens(grown, tokenizer.n_vocab)
    if pretrained is not None:
        pretrained = replace(pretrained, config=cfg.model, tokenizer=grown, state_dict=with_new_token_rows(
            pretrained.state_dict, tokenizer.n_vocab, range(tokenizer.n_vocab, grown.n_vocab), cfg.model.vocab_size))
    has_weights = checkpoint is not None or pretrained is not None
    rows = "; their rows start as the mean of the other tokens'" if has_weights else ""
    log.say(f"--chat-template {cfg.chat_template}: the tokenizer is now {grown.description}, ids "
            f"{tokenizer.n_vocab}-{grown.n_vocab - 1} added, in an embedding of {cfg.model.vocab_size:,} rows{rows}")
    return cfg, StartingPoint(checkpoint, pretrained, grown)


def adopt_vocabulary(cfg: TrainConfig, tokenizer) -> TrainConfig:
    """The recipe's model with the embedding rows `tokenizer`'s vocabulary needs (`vocab_size_for`)."""
    return replace(cfg, model=replace(cfg.model, vocab_size=vocab_size_for(tokenizer.n_vocab, cfg.model.vocab_size)))


def pretrained_start(spec: str, trust_remote_code: bool) -> PretrainedModel:
    """The weights, config and tokenizer of a pretrained --init-from, read by the one loader
    (smolm135.interop.loading) under its trust policy."""
    loaded = load_model(spec, trust_remote_code=trust_remote_code, native_only=True)
    return PretrainedModel(loaded.model.config, loaded.model.state_dict(), loaded.tokenizer, loaded.description)


def fresh_tokenizer(cfg: TrainConfig, layout: RunLayout, distributed: Distributed):
    """The tokenizer of a model trained from scratch (see TOKENIZERS): a corpus BPE is learned by the main
    process, and the others read it from the cache."""
    if not cfg.learns_tokenizer:
        return GPT2TextTokenizer()
    return main_process_first(distributed, lambda: corpus_tokenizer(
        cfg.data, layout.cache_dir, cfg.model.vocab_size, cfg.val_fraction, cfg.text_field))


def adopt_model(cfg: TrainConfig, model_config: ModelConfig, source: str) -> TrainConfig:
    """The recipe for the pretrained model's own config. An explicit --preset must describe that model."""
    default_preset = TrainConfig.__dataclass_fields__["preset"].default
    if cfg.preset != default_preset and cfg.model != model_config:
        differences = cfg.model.differences(model_config) if cfg.model else []
        raise UserError(f"--preset {cfg.preset} is not the model {source} holds ({'; '.join(differences)}): "
                        f"leave --preset out to train that model as it is")
    name = next((n for n, preset in PRESETS.items() if preset == model_config), "custom")
    adopted = replace(cfg, model=model_config, preset=name)
    validate(adopted)  # e.g. --seq-len against the pretrained context length
    return adopted


def check_resumable(checkpoint: Checkpoint, cfg: TrainConfig) -> None:
    """The checkpoint describes the model and the optimizer the run builds (checked before the run writes
    anything). A flag that differs is the user's to change: the file is not at fault, so auto-resume must not
    set it aside as it does a checkpoint whose optimizer state does not fit (`restore_intact`)."""
    differences = checkpoint.model_mismatch(cfg.model)
    if differences:
        raise UserError(f"checkpoint {checkpoint.source} was trained with a different model "
                        f"({'; '.join(differences)}): use the same --preset, or --resume never to start fresh")
    # a checkpoint from before --optimizer existed was trained with AdamW, the default
    optimizer = checkpoint.train_config.get("optimizer", TrainConfig.optimizer)
    if checkpoint.optimizer_state_dict is not None and optimizer != cfg.optimizer:
        raise UserError(f"checkpoint {checkpoint.source} was trained with --optimizer {optimizer}, this run asks "
                        f"for --optimizer {cfg.optimizer}: resume with the --optimizer it was trained with, or pass "
                        f"--resume never to start fresh")


def resume(run: Run, checkpoint: Checkpoint) -> None:
    """Load a checkpoint of the run's model (see check_resumable) into the run; say where the run stands,
    and what (if anything) differs in the batches it will see."""
    check_resumable(checkpoint, run.cfg)
    lora = LoraSettings.of(run.cfg)
    if lora and checkpoint.lora is None and checkpoint.started_from != run.cfg.init_from:
        checkpoint.load_weights_into(run.model)  # an --init-from checkpoint without adapters: the base to adapt
        run.log.say(f"LoRA adapters start on the weights of {checkpoint.source}, with a fresh optimizer at step 0")
        return
    lora_difference = mismatch(lora, checkpoint.lora)
    if lora_difference:
        raise UserError(f"checkpoint {checkpoint.source}: {lora_difference}: give the run the same --lora-* "
                        f"flags, or pass --resume never to start fresh")
    use_threads_of(run, checkpoint)
    checkpoint = restore_intact(run, checkpoint)
    progress = run.progress
    run.log.say(f"continuing from {checkpoint.source} at step {progress.step} ({progress.tokens_seen:,} tokens "
                f"seen, last train loss {_fmt(progress.last_train_loss)}, validation loss "
                f"{_fmt(progress.last_val_loss)})")
    if checkpoint.optimizer_state_dict is None:  # e.g. a model converted back from a Hugging Face folder
        run.log.say(f"note: {checkpoint.source} holds no optimizer state: training goes on with "
                    f"{fresh_optimizer(progress.step)}")
    if checkpoint.data_position is not None:
        for note in checkpoint.data_position.differences(run.data_position):
            run.log.say(f"note: {note}")
    keep_budgeted_steps(run, checkpoint)


def restore_intact(run: Run, checkpoint: Checkpoint) -> Checkpoint:
    """run.restore(checkpoint); returns the checkpoint restored. Some faults only the run's optimizer can tell
    (a moment of another parameter's shape or precision, a missing one, parameter groups of other sizes): under
    auto-resume a checkpoint of the run's own folder with one is set aside, as one that does not load is, and
    the run restores the next intact one instead of failing at every re-run."""
    while True:
        try:
            run.restore(checkpoint)
            return checkpoint
        except CheckpointError as error:
            if not found_by_auto_resume(run, checkpoint):
                raise
            refused = checkpoint
            checkpoint = run_on_main(run.distributed, lambda: next_intact_checkpoint(run, refused, error),
                                     send_result_to_all=True)
            check_resumable(checkpoint, run.cfg)
            use_threads_of(run, checkpoint)


def found_by_auto_resume(run: Run, checkpoint: Checkpoint) -> bool:
    return (run.cfg.resume == "auto" and checkpoint.source != run.cfg.init_from
            and Path(checkpoint.source).resolve().parent == run.layout.checkpoint_dir.resolve())


def next_intact_checkpoint(run: Run, refused: Checkpoint, error: CheckpointError) -> Checkpoint:
    """Set `refused` aside and read the newest intact checkpoint left beside it. The run's data was tokenized
    with the refused one's tokenizer, so one with another tokenizer is named, not taken."""
    set_aside(Path(refused.source), error, run.log.say)
    found = newest_intact_checkpoint(run.layout.checkpoint_dir, warn=run.log.say)
    if found is None:
        raise no_intact_checkpoint(run.layout.checkpoint_dir)
    if found.tokenizer != refused.tokenizer or found.started_from != refused.started_from:
        raise UserError(f"{found.source}, the intact checkpoint left, reads another tokenizer or started from "
                        f"another model than {refused.source}: resume it with --resume {found.source}")
    return found


def keep_budgeted_steps(run: Run, checkpoint: Checkpoint) -> None:
    """A run under --minutes resumes to the step count its budget fixed when it started, recorded in its
    checkpoints: the schedule depends on that count, and timing the steps again would change it."""
    recorded = checkpoint.train_config.get("budgeted_steps")
    own = checkpoint.started_from == run.cfg.init_from  # not the checkpoint another run started from
    if not (run.cfg.minutes and own and isinstance(recorded, int) and recorded >= checkpoint.progress.step):
        return
    minutes = checkpoint.train_config.get("minutes")
    run.cfg = run.cfg.with_budgeted_steps(recorded)
    run.log.say(f"the run's budget ({minutes} minutes) fixed {recorded} steps when it started: it trains to step "
                f"{recorded}" + ("" if minutes == run.cfg.minutes else
                                 f", not timed again for --minutes {run.cfg.minutes:g}"))


def fresh_optimizer(step: int) -> str:
    """How a run that starts without saved optimizer state says so, wherever it starts."""
    return f"a fresh optimizer (its moments at zero) at step {step}"


def use_threads_of(run: Run, checkpoint: Checkpoint) -> None:
    """Compute with the CPU threads the checkpoint's run used: a sum split over another number of threads
    rounds differently (about 1e-7), and the resumed run would drift from the uninterrupted one. Where this
    machine allows fewer, keep its own and say so."""
    saved, own = checkpoint.num_threads, torch.get_num_threads()
    if saved is None or saved == own:
        return
    if saved <= available_cpus():
        torch.set_num_threads(saved)
        run.log.write(f"computing with {saved} CPU threads, as the checkpoint's run did (not {own})")
    else:
        run.log.say(f"note: the checkpoint's run computed with {saved} CPU threads, this machine allows {own}: "
                    f"the results can differ from an uninterrupted run in the last bits")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
