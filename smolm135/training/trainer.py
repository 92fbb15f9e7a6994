"""The training loop and the trainer's command line (the script `Model_smollm135_trainer.py` runs `main`)."""
from __future__ import annotations

import contextlib
import math
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from smollm135_model import SmoLM135_Model
from smolm135.training.budget import (
    PLANNING_MARGIN,
    Costs,
    evaluation_seconds,
    fixing_step,
    save_seconds,
    steps_within,
)
from smolm135.training.chat import (
    answer_sample,
    assistant_loss,
    check_chat_template_flag,
    conversation_shape,
    load_conversations,
    refuse_without_template,
    train_batch,
)
from smolm135.checkpoint import TRAINING, Progress, RunLayout, run_timestamp
from smolm135.data.corpus import TRAIN_STREAM, VAL_STREAM, batch_offsets, get_batch, local_rows
from smolm135.errors import CommandLineParser, UserError
from smolm135.inference.chat_scoring import AnswersRight
from smolm135.inference.generation import answer, continue_ids
from smolm135.loss_plot import plot_losses
from smolm135.lora import LoraSettings, add_adapters, trainable_parameters
from smolm135.training.optim import configure_optimizer, set_learning_rate
from smolm135.training.run import (
    Run,
    add_chat_template,
    check_corpus_fits,
    check_resumable,
    check_training_data,
    find_resume_checkpoint,
    fresh_tokenizer,
    load_training_data,
    new_model,
    resume,
    starting_point,
    wrap_for_steps,
)
from smolm135.runtime.device import (
    autocast,
    choose_precision,
    configure_backends,
    device_description,
    peak_flops,
    pick_device,
    run_on_main,
    setup_distributed,
    teardown_distributed,
)
from smolm135.training.config import TrainConfig, add_train_arguments, config_from_args, parse_train_args, validate
from smolm135.training.tracking import start_tracker, tracking_backend
from smolm135.training.log import RunLog

MAX_NONFINITE_STEPS_IN_A_ROW = 5
# What a model with a chat template is asked at every sample, through its template: the same question each
# time, so the log shows how a fine-tune changes the answers.
SAMPLE_MESSAGE = "Tell me about the sea in two sentences."


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint at the next step boundary and stops."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------ the run: setup -> steps -> finish


def train(cfg: TrainConfig, layout: RunLayout = TRAINING,
          clock: Callable[[], float] = time.monotonic) -> tuple[SmoLM135_Model, dict]:
    """Train (or resume) per `cfg`; returns the trained model and a summary of the run. `layout` says where
    under --out-dir this kind of run writes (continue_training.py passes its own). `clock` (seconds) times
    a --minutes budget, which counts from this call."""
    budget = StepBudget(clock)
    validate(cfg)
    layout = layout.under(cfg.out_dir)
    distributed = setup_distributed(cfg.device)
    try:
        timestamp = run_timestamp()
        log = RunLog(layout.log_path(timestamp), writes=distributed.is_main)
        try:
            return train_run(set_up(cfg, layout, timestamp, distributed, log), budget)
        finally:
            log.close()
    finally:
        teardown_distributed(distributed)


def set_up(cfg: TrainConfig, layout: RunLayout, timestamp: str, distributed, log: RunLog) -> Run:
    """The starting point (a checkpoint to continue, or pretrained weights), device, data in the model's
    tokenizer, model, optimizer; then the checkpoint's or the pretrained model's weights. Everything that can
    refuse the run is checked before `open_run` writes its first file, so a refused run leaves nothing behind
    (only the corpus's own token count and ids need the token cache first)."""
    device = pick_device(cfg.device, distributed)
    configure_backends(device)
    # rank 0 picks and reads the checkpoint, every process resumes from it (no shared disk needed)
    checkpoint = run_on_main(distributed, lambda: find_resume_checkpoint(cfg, layout, log), send_result_to_all=True)
    cfg, start = starting_point(cfg, checkpoint, log)
    shape = conversation_shape(cfg)  # None: --data is text
    check_chat_template_flag(cfg, shape, start.tokenizer)
    cfg, start = add_chat_template(cfg, start, log)
    refuse_without_template(cfg, shape, start.tokenizer)
    checkpoint = start.checkpoint  # with the rows of the tokens --chat-template added
    if checkpoint is not None:
        check_resumable(checkpoint, cfg)
    # chosen on rank 0 (auto asks this host which precision trains faster), so every process agrees; a
    # resumed run keeps the one it started with
    precision = run_on_main(distributed, lambda: choose_precision(
        cfg.dtype, device, cfg.model, cfg.seq_len, checkpoint.precision if checkpoint else None),
        send_result_to_all=True)
    dtype = precision.dtype
    tracking_backend(cfg.report_to)
    global_batch = cfg.global_batch(distributed.world_size)
    chat = None
    if shape is None:
        run_on_main(distributed, lambda: check_training_data(cfg, global_batch))
    else:  # conversations are read whole and their records checked before anything is written
        chat, corpus, train_tokens, val_tokens = load_conversations(cfg, shape, start.tokenizer)
    open_run(cfg, layout, timestamp, distributed, log)
    tokenizer = start.tokenizer or fresh_tokenizer(cfg, layout, distributed)
    if shape is None:
        corpus, train_tokens, val_tokens = load_training_data(cfg, layout, distributed, tokenizer)
        check_corpus_fits(corpus, cfg, global_batch)
    model = new_model(cfg, device)
    model.use_cpu_kernels(training_attention_by_matmuls=precision.bf16_attention_by_matmuls)
    if start.pretrained is not None:
        model.load_state_dict(start.pretrained.state_dict)  # the optimizer below starts fresh, at step 0
    lora = LoraSettings.of(cfg)
    if lora is not None:
        add_adapters(model, lora, cfg.seed)  # from here on only the adapters train
    run = Run(cfg, layout, timestamp, distributed, device, dtype, log, corpus, train_tokens, val_tokens, model,
              step_model=model, optimizer=configure_optimizer(model, cfg, device, dtype),
              scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), progress=Progress(),
              chat=chat)
    describe(run)
    if precision.reason:
        log.say(f"--dtype auto: {precision.reason}")
    if checkpoint is not None:
        resume(run, checkpoint)
    return run


def open_run(cfg: TrainConfig, layout: RunLayout, timestamp: str, distributed, log: RunLog) -> None:
    """The run is accepted: its folders, its log file (with the lines said so far), its tracker; and what an
    interrupted run left half-written is removed. Only rank 0 writes files; a failure stops every process."""
    run_on_main(distributed, layout.make_dirs)
    leftovers = run_on_main(distributed, layout.remove_interrupted_writes) or []
    if distributed.is_main:
        log.open()
        log.tracker = start_tracker(cfg.report_to, layout.log_path(timestamp).with_suffix(""),
                                    layout.log_path(timestamp).stem, cfg.to_dict())
    if leftovers:
        log.say(f"removed {len(leftovers)} temporary file(s) that an interrupted run left behind")


def describe(run: Run) -> None:
    cfg, log, params = run.cfg, run.log, run.model.num_parameters()
    log.write(f"config: {cfg.to_dict()}")
    log.write(f"model: {cfg.model.to_dict()}")
    log.say(f"smolm135 preset {cfg.preset}, recipe {cfg.recipe}: {params['total']:,} parameters "
            f"({params['non_embedding']:,} non-embedding) on {device_description(run.device)}, precision "
            f"{str(run.dtype).replace('torch.', '')}"
            + (f", {run.distributed.world_size} processes" if run.distributed.enabled else ""))
    if run.chat is None:
        log.say(f"data: {run.corpus.name}, {len(run.corpus.tokens):,} tokens ({len(run.train_tokens):,} train, "
                f"{len(run.val_tokens):,} validation){' from cache' if run.corpus.from_cache else ''} with "
                f"{run.tokenizer.description}; {run.global_batch} x {cfg.seq_len} = {run.tokens_per_step:,} tokens "
                f"per step")
    else:
        for line in run.chat.summary(cfg.seq_len):
            log.say(line)
        log.say(f"conversations rendered by the chat template of {run.tokenizer.description}, loss on "
                f"{'the assistant' if cfg.loss_on == 'assistant' else 'every token'}; {run.global_batch} x "
                f"{cfg.seq_len} = {run.tokens_per_step:,} tokens per step")
    lora = LoraSettings.of(cfg)
    if lora is not None:
        trainable = trainable_parameters(run.model)
        log.say(f"{lora.describe()}: {trainable:,} trainable parameters ({trainable / params['total']:.2%}), "
                f"the rest frozen")
    if run.device.type == "cpu" and params["total"] > 50e6 and run.is_main and cfg.preset.startswith("smolm135"):
        log.say(f"note: the {cfg.preset} model on CPU takes about a minute per step; "
                f"try --preset tiny for a model that learns in minutes")


def train_run(run: Run, budget: StepBudget) -> tuple[SmoLM135_Model, dict]:
    """Steps until --max-steps (or the count --minutes fixes) or a stop signal, evaluating, sampling and
    checkpointing on the way."""
    start_step, cfg = run.progress.step, run.cfg
    if start_step >= cfg.max_steps and run.final_model_missing:
        run.log.say(f"the run reached step {start_step} but its final model {run.final_model} is missing (it was "
                    f"interrupted while writing it): writing it now")
        return finish(run, start_step, None)
    if start_step >= cfg.max_steps:
        run.log.say(f"step {start_step} already reaches --max-steps {cfg.max_steps}: nothing to train "
                    f"(raise --max-steps to train longer, or pass --resume never to start over)")
        return run.model, summarize(run, start_step, None, None)
    run.step_model = wrap_for_steps(run.model, cfg, run.distributed, run.device)
    if start_step == 0:
        budget.time("evaluation", lambda: evaluate_and_record(run))  # about ln(vocab) = 10.8 for a fresh model
        if run.is_main and run.chat is None:  # a chat run's evaluation answers its held-out question itself
            budget.time("sample", lambda: log_sample(run, 0))  # what the later samples are compared with
    run.step_model.train()
    display = StepDisplay(run)
    stopped_by = None
    budget.mark()
    with StopRequest() as stop:
        while run.progress.step < run.cfg.max_steps and not stopped_by:
            report = take_step(run, stop_requested=stop.signal_name is not None)
            display.show(report)
            stop_if_updates_are_skipped(run, start_step)
            budget.mark()
            if (run.cfg.minutes and run.cfg.budgeted_steps is None
                    and run.progress.step >= fixing_step(run.cfg.warmup_steps)):
                fix_step_count(run, budget)
                display.bar.total = run.cfg.max_steps
            stopped_by = after_step(run, report, stop)
    display.close()
    return finish(run, start_step, stopped_by)


# ------------------------------------------------------------------ --minutes


class StepBudget:
    """The times a --minutes budget is fixed from: since train() was called, of this process's steps (the
    first of which warms the kernels up), and of the run's first evaluation and sample."""

    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.started = clock()
        self.marks: list[float] = []  # clock() before this process's first step and after each step
        self.timed: dict[str, float] = {}

    def time(self, name: str, action: Callable[[], None]) -> None:
        began = self.clock()
        action()
        self.timed[name] = self.clock() - began

    def mark(self) -> None:
        self.marks.append(self.clock())

    def step_seconds(self) -> float:
        """A step's seconds: the median of the steps after the warm-up step, or the warm-up step itself when
        this process took no other yet (a run resumed just before the count was fixed). The median, because one
        slow step (a first allocation, a neighbour's burst on a shared machine) moves a mean of a few steps by
        half, and the whole run's count with it."""
        seconds = [after - before for before, after in zip(self.marks, self.marks[1:])]
        return statistics.median(seconds[1:] or seconds)

    def costs(self, run: Run) -> Costs:
        step = self.step_seconds()
        return Costs(step, self.timed.get("evaluation", evaluation_seconds(step, run.cfg.eval_batches)),
                     self.timed.get("sample", step), save_seconds(run.model.num_parameters()["total"]))


def fix_step_count(run: Run, budget: StepBudget) -> None:
    """Fix the run's step count from its first steps so that it ends within --minutes: rank 0 decides, every
    process takes its count. The config then records it, so a resumed run keeps it."""
    cfg, done = run.cfg, run.progress.step

    def decide() -> tuple[int, float]:
        costs = budget.costs(run)
        seconds_left = cfg.minutes * 60 - (budget.clock() - budget.started)
        return steps_within(seconds_left / PLANNING_MARGIN, cfg, done, costs), costs.step

    steps, step_seconds = run_on_main(run.distributed, decide, send_result_to_all=True)
    run.cfg = cfg.with_budgeted_steps(steps)
    capped = f", all that --max-steps {cfg.max_steps} allows" if steps == cfg.max_steps else ""
    run.log.say(f"{cfg.minutes:g} minutes: {steps} steps at {step_seconds:.2f} s{capped} (evaluations, samples "
                f"and saves included, with {PLANNING_MARGIN - 1:.0%} to spare; the schedule ends there)")


# ------------------------------------------------------------------ one step


@dataclass(frozen=True)
class StepReport:
    loss: float  # averaged over the global batch
    grad_norm: float
    lr: float
    seconds: float
    stop_votes: float  # processes that were asked to stop


def take_step(run: Run, stop_requested: bool) -> StepReport:
    """One optimizer step on step `run.progress.step`'s global batch, and the progress it makes."""
    progress = run.progress
    started = time.perf_counter()
    lr = set_learning_rate(run.optimizer, progress.step, run.cfg)
    step_loss, grad_norm, stop_votes = forward_backward(run, stop_requested)
    finite = apply_update(run, step_loss, grad_norm)
    progress.step += 1
    progress.tokens_seen += run.tokens_per_step
    step_seconds = time.perf_counter() - started
    progress.elapsed_seconds += step_seconds
    if finite:
        progress.history["train"].append([progress.step, step_loss])
    return StepReport(step_loss, grad_norm, lr, step_seconds, stop_votes)


def forward_backward(run: Run, stop_requested: bool) -> tuple[float, float, float]:
    """Gradients of this process's share of the step's global batch, clipped. Returns the loss averaged
    over the whole global batch, the gradient norm, and how many processes were asked to stop: the
    step's one host sync, as the three travel together. The scaler scales the loss for float16 (whose
    small gradients would otherwise flush to zero) and divides the gradients back before clipping."""
    cfg, distributed, device = run.cfg, run.distributed, run.device
    if run.chat is None:
        offsets = batch_offsets(len(run.train_tokens), cfg.seq_len, run.global_batch, cfg.seed, TRAIN_STREAM,
                                run.progress.step)
    loss_sum = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        # this process's share of the global batch: the same rows whatever the process count
        rows = local_rows(micro, distributed.rank, distributed.world_size, cfg.batch_size)
        documents = None  # packed conversations: which one each position belongs to (B, T)
        if run.chat is not None:
            x, y, documents = train_batch(run.chat, cfg.seed, run.progress.step, run.global_batch, rows, device)
        else:
            x, y = get_batch(run.train_tokens, offsets[rows], cfg.seq_len, device)  # (B, T) each
        last_micro = micro == cfg.grad_accum - 1
        # under DDP, gradients are all-reduced only once per step, after the last micro-batch
        sync = run.step_model.no_sync() if distributed.enabled and not last_micro else contextlib.nullcontext()
        with sync:
            with autocast(device, run.dtype):
                _, loss = run.step_model(x, y, return_logits=False, document_ids=documents)
            run.scaler.scale(loss / cfg.grad_accum).backward()
        loss_sum += loss.detach().float()
    run.scaler.unscale_(run.optimizer)  # a no-op unless float16
    grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip or float("inf"))
    reduced = torch.stack([loss_sum / cfg.grad_accum, grad_norm.float(),
                           torch.tensor(float(stop_requested), device=device)])
    if distributed.enabled:
        dist.all_reduce(reduced)
        reduced[:2] /= distributed.world_size  # every process holds the same (synced) gradient norm
    step_loss, grad_norm, stop_votes = reduced.tolist()
    return step_loss, grad_norm, stop_votes


def apply_update(run: Run, step_loss: float, grad_norm: float) -> bool:
    """The optimizer update, skipped when the loss or the gradients are not finite; True when finite."""
    scaler, progress = run.scaler, run.progress
    finite = math.isfinite(step_loss) and math.isfinite(grad_norm)
    if finite:
        scaler.step(run.optimizer)  # optimizer.step(), unless float16 gradients overflowed
        progress.nonfinite_in_a_row = 0
    elif scaler.is_enabled() and math.isfinite(step_loss) and scaler.get_scale() >= 1:
        # float16 gradients overflowed at this loss scale: skip the update, and `update` halves the
        # scale. Common in the first steps; only below a scale of 1 is it the gradients' fault.
        run.log.write(f"step {progress.step}: float16 gradients overflowed at loss scale "
                      f"{scaler.get_scale():g}; update skipped, scale halved")
    else:
        progress.nonfinite_in_a_row += 1
        run.log.say(f"step {progress.step}: loss {step_loss} / grad norm {grad_norm} is not finite; "
                    f"update skipped ({progress.nonfinite_in_a_row} in a row)")
    scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return finite


def stop_if_updates_are_skipped(run: Run, start_step: int) -> None:
    """A UserError after too many updates in a row were skipped (a loss or gradient that was not finite), and
    at the last step when every update of this run was: its final model would be the weights it started
    from, claimed as trained (weights that compute NaN skip every update). Checked before the step's
    checkpoint, which would name the final model, so no re-run writes it either."""
    progress = run.progress
    skipped, steps = progress.nonfinite_in_a_row, progress.step - start_step
    every_update = progress.step == run.cfg.max_steps and steps <= skipped
    if skipped < MAX_NONFINITE_STEPS_IN_A_ROW and not every_update:
        return
    what = (f"every update of this run ({steps} of {steps}) was skipped for a loss or gradient that was not "
            f"finite" if every_update else f"the loss was not finite for {skipped} steps in a row")
    raise UserError(f"{what} (up to step {progress.step}): no final model is written, and the last good checkpoint "
                    f"in {run.layout.checkpoint_dir} is kept. Lower --lr or check the data and the starting "
                    f"weights, then run again to resume")


class StepDisplay:
    """The per-step log line (every --log-every steps) and the console progress bar."""

    def __init__(self, run: Run):
        self.run = run
        # the step's FLOPs are those of the global batch, so MFU compares them with every process's device
        self.peak = (peak_flops(run.device) or 0) * run.distributed.world_size
        self.flops_per_step = run.model.flops_per_token(run.cfg.seq_len) * run.tokens_per_step
        self.bar = tqdm(total=run.cfg.max_steps, initial=run.progress.step, desc="training", unit="step",
                        disable=not (run.cfg.progress and run.is_main), dynamic_ncols=True)

    def show(self, report: StepReport) -> None:
        step, cfg = self.run.progress.step, self.run.cfg
        tokens_per_second = self.run.tokens_per_step / report.seconds
        if step % cfg.log_every == 0:
            flops = self.flops_per_step / report.seconds
            mfu = f" | mfu {flops / self.peak:.1%}" if self.peak else ""
            self.run.log.write(f"step {step}/{cfg.max_steps} | loss {report.loss:.4f} | lr {report.lr:.3e} | "
                               f"grad_norm {report.grad_norm:.3f} | {tokens_per_second:,.0f} tok/s | "
                               f"{flops / 1e12:.2f} TFLOP/s{mfu}")
            self.run.log.track(step, {"train/loss": report.loss, "train/lr": report.lr,
                                      "train/grad_norm": report.grad_norm,
                                      "train/tokens_seen": self.run.progress.tokens_seen,
                                      "train/tokens_per_second": tokens_per_second})
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{report.loss:.3f}", tok_s=f"{tokens_per_second:,.0f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


# ------------------------------------------------------------------ between steps: evaluate, sample, checkpoint


def after_step(run: Run, report: StepReport, stop: StopRequest) -> str | None:
    """Evaluate, sample and checkpoint when their turn comes; returns what stopped the run, if anything."""
    step, cfg = run.progress.step, run.cfg
    done = step == cfg.max_steps
    if done:
        run.choose_final_model()  # recorded in the last checkpoint: a re-run can finish the final write
    evaluates = step % cfg.eval_every == 0 or done
    if evaluates:
        evaluate_and_record(run)  # of conversations: with the sample
    if run.is_main and (step % cfg.sample_every == 0 or done) and not (evaluates and run.chat is not None):
        log_sample(run, step)
    stopped_by = None
    if report.stop_votes > 0 and not done:
        stopped_by = stop.signal_name or "a signal on another process"
    if step % cfg.checkpoint_every == 0 or done or stopped_by:
        run.save_checkpoint()
    return stopped_by


@torch.no_grad()
def evaluate(run: Run) -> tuple[float, AnswersRight | None]:
    """Mean loss over a fixed validation set: --eval-batches global batches, the same rows at every
    evaluation and for every split into processes and micro-steps; each process evaluates its share.
    Of conversations, the loss per assistant token and the answers given word for word (else None)."""
    cfg, distributed, model = run.cfg, run.distributed, run.step_model
    if run.chat is not None:
        return assistant_loss(run.model, run.chat, cfg.batch_size, cfg.eval_batches * run.global_batch, run.device,
                              run.dtype, run.tokenizer.n_vocab, distributed.rank, distributed.world_size)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=run.device)
    for batch_index in range(cfg.eval_batches):
        offsets = batch_offsets(len(run.val_tokens), cfg.seq_len, run.global_batch, cfg.seed, VAL_STREAM,
                                batch_index)
        for micro in range(cfg.grad_accum):
            rows = local_rows(micro, distributed.rank, distributed.world_size, cfg.batch_size)
            x, y = get_batch(run.val_tokens, offsets[rows], cfg.seq_len, run.device)  # (B, T) each
            with autocast(run.device, run.dtype):
                _, loss = model(x, y, return_logits=False)
            loss_sum += loss.float()
    if distributed.enabled:
        dist.all_reduce(loss_sum)
    model.train(was_training)
    return (loss_sum / (cfg.eval_batches * cfg.grad_accum * distributed.world_size)).item(), None


def evaluate_and_record(run: Run) -> None:
    val_loss, right = evaluate(run)
    run.progress.history["val"].append([run.progress.step, val_loss])
    unit = ("per assistant token", "bits per assistant byte") if run.chat is not None else ("", "bits per byte")
    run.log.say(f"step {run.progress.step}: validation loss {val_loss:.4f}{' ' + unit[0] if unit[0] else ''} "
                f"({run.bits_per_byte(val_loss):.4f} {unit[1]})")
    run.log.track(run.progress.step, {"val/loss": val_loss, "val/bits_per_byte": run.bits_per_byte(val_loss)})
    if right is not None:
        run.answers_right.append((run.progress.step, right))
        run.log.say(f"step {run.progress.step}: held-out {right.describe()}")
        run.log.track(run.progress.step, {"val/answers_right": right.share})
        if run.is_main:  # a held-out question answered, at every evaluation
            log_sample(run, run.progress.step)


def log_sample(run: Run, step: int) -> None:
    """The step's sample in the log. A sample only shows how training goes: whatever makes it fail (odd
    weights, a tokenizer it cannot please) is one line in the log, and training goes on."""
    try:
        if run.chat is not None:
            text = answer_sample(run.model, run.tokenizer, run.chat.sample_messages, run.cfg.sample_tokens,
                                 seed=run.cfg.seed + step)
        else:
            text = sample_text(run, step)
        run.log.say(f"step {step} sample:\n{text}\n")
    except Exception as error:  # noqa: BLE001 (deliberately broad: see above)
        reason = (str(error).splitlines() or [""])[0][:200]
        run.log.say(f"step {step}: no sample ({type(error).__name__}: {reason}); training goes on")


def sample_text(run: Run, step: int) -> str:
    """The step's sample: the run's prompt (`Run.sample_prompt_ids`) and its continuation by --sample-tokens
    under the generation policy, seeded by the step; a model with a chat template also answers
    SAMPLE_MESSAGE through it."""
    cfg, tokenizer, seed = run.cfg, run.tokenizer, run.cfg.seed + step
    prompt, continuation = continue_ids(run.model, tokenizer, run.sample_prompt_ids, cfg.sample_tokens, seed)
    text = f"prompt: {tokenizer.decode(prompt)}\ncontinued: {tokenizer.decode(continuation)}"
    if tokenizer.has_chat_template:
        reply = answer(run.model, tokenizer, SAMPLE_MESSAGE, cfg.sample_tokens, seed)
        text += f"\nuser: {SAMPLE_MESSAGE}\nassistant: {reply}"
    return text


# ------------------------------------------------------------------ the end


def finish(run: Run, start_step: int, stopped_by: str | None) -> tuple[SmoLM135_Model, dict]:
    """After the last step: the final model and the loss plot, or after a stop, how to resume."""
    if run.distributed.enabled:
        dist.barrier()
    if stopped_by:
        run.log.say(f"stopped by {stopped_by} at step {run.progress.step}: checkpoint saved to "
                    f"{run.layout.latest_checkpoint}; run the same command again to resume")
        return run.model, summarize(run, start_step, None, stopped_by)
    final_path = run.save_final()
    if run.is_main:
        try:
            plot = plot_losses(run.progress.history, run.layout.plot_path(run.timestamp),
                               f"smolm135 {run.cfg.preset} on {run.corpus.name}", bits_per_byte=run.bits_per_byte)
        except OSError as error:  # the model is saved; a plot that does not fit on the disk is no reason to fail
            plot = f"not written ({error.strerror or error})"
        run.log.say(f"saved {final_path}; loss plot {plot}")
    return run.model, summarize(run, start_step, final_path, None)


def summarize(run: Run, start_step: int, final_path: Path | None, stopped_by: str | None) -> dict:
    progress, log = run.progress, run.log
    this_run = [loss for step, loss in progress.history["train"] if step > start_step]
    summary = {
        "steps": progress.step,
        "start_step": start_step,
        "tokens_seen": progress.tokens_seen,
        "seconds": round(progress.elapsed_seconds, 2),
        "final_train_loss": progress.last_train_loss,
        "final_val_loss": progress.last_val_loss,
        "initial_val_loss": progress.history["val"][0][1] if progress.history["val"] else None,
        # the validation losses as bits per byte of the validation text (comparable across tokenizers)
        "final_val_bpb": round(run.bits_per_byte(progress.last_val_loss), 4) if progress.history["val"] else None,
        "initial_val_bpb": round(run.bits_per_byte(progress.history["val"][0][1]), 4) if progress.history["val"] else None,
        "first_train_loss_this_run": this_run[0] if this_run else None,
        "final_model_path": str(final_path) if final_path else None,
        "log_path": str(log.path) if log.writes else None,
        "stopped_by": stopped_by,
    }
    if run.answers_right:  # of conversations: the held-out answers given word for word, as a share
        first_step, first = run.answers_right[0]
        if first_step == 0:  # a resumed run's first evaluation is no initial one
            summary["initial_answers_right"] = round(first.share, 4)
        summary["final_answers_right"] = round(run.answers_right[-1][1].share, 4)
    if this_run:
        log.say(f"train loss over steps {start_step + 1}-{progress.step}: first {this_run[0]:.4f}, "
                f"last {this_run[-1]:.4f}, mean {sum(this_run) / len(this_run):.4f}")
    log.say("summary: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return summary


# ------------------------------------------------------------------ command line


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(__doc__)
    add_train_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = parse_train_args(build_parser(), argv)
    _, summary = train(config_from_args(args))
    if summary["stopped_by"] in ("SIGINT", "SIGTERM"):
        sys.exit(128 + signal.Signals[summary["stopped_by"]].value)  # the shell's convention for signals
    return summary
