"""--minutes: a run's wall-clock budget turned into a step count. The trainer times the run's first steps (and
its first evaluation and sample); these pure functions say how many steps, with the evaluations, samples and
saves they bring, fit in the time that is left.

The count is fixed once, at the end of warm-up (`fixing_step`), and recorded in the checkpoints, so a resumed
run trains to the same step as an uninterrupted one and never measures again. The measured steps are warm-up
steps (validate() requires at least MEASURING_STEPS of them): their learning rate depends on --lr and
--warmup-steps alone, not on the step count the measurement decides, so they are the run's real first steps.
"""
from __future__ import annotations

from dataclasses import dataclass

# At least this many steps run before the count is fixed: the first warms the kernels up (allocations, the CPU
# probes), the others are timed.
MEASURING_STEPS = 3
# At most this many: the early steps of a run can be slower than the rest (a fine-tune of SmolLM2-135M on a
# 2-core Zen 5 took 5.4 s for its second step and 2.8 s a step after that), so the count waits for the whole
# warm-up, where the learning rate does not yet depend on it, up to this step.
MOST_MEASURING_STEPS = 20
# Later steps run slower than the warm-up's: a cpu-scratch run on 2 cores of a Zen 5 took 0.177 s a step (the
# median) in its warm-up and 0.197 s on average over the whole run, so a count planned on the warm-up alone
# ended at 11 minutes of a 10-minute budget. The count is planned to fill the time left divided by this.
PLANNING_MARGIN = 1.1
# Checkpoint writes come after the count is fixed, so they are estimated: weights and optimizer state (at
# most three fp32 copies of the parameters, AdamW's two moments beside the weights) at a rate a laptop's
# disk sustains.
ASSUMED_WRITE_BYTES_PER_SECOND = 100e6
# An evaluation batch is a forward pass over a global batch, about a third of a training step's forward
# and backward; used when the run's first evaluation was not timed (a resumed run).
FORWARD_SHARE_OF_A_STEP = 1 / 3


@dataclass(frozen=True)
class Costs:
    """Seconds each recurring piece of a run takes."""

    step: float
    evaluation: float  # one evaluation of --eval-batches batches
    sample: float
    save: float  # one checkpoint or final model written


def fixing_step(warmup_steps: int) -> int:
    """The step after which the count is fixed: the last warm-up step, within MEASURING_STEPS and
    MOST_MEASURING_STEPS."""
    return max(MEASURING_STEPS, min(warmup_steps, MOST_MEASURING_STEPS))


def save_seconds(parameters: int) -> float:
    return 3 * 4 * parameters / ASSUMED_WRITE_BYTES_PER_SECOND


def evaluation_seconds(step_seconds: float, eval_batches: int) -> float:
    return step_seconds * eval_batches * FORWARD_SHARE_OF_A_STEP


def events(done: int, last: int, every: int) -> int:
    """How many of the steps after `done` up to `last` evaluate, sample or save when each does so every
    `every` steps and at the last step (as the trainer's after_step)."""
    if last <= done:
        return 0
    return last // every - done // every + (1 if last % every else 0)


def seconds_to_finish(cfg, done: int, last: int, costs: Costs) -> float:
    """The seconds from step `done` to the end of a run of `last` steps: its steps, its evaluations and
    samples, its checkpoints and the final model. `cfg` is the run's TrainConfig."""
    if last <= done:
        return 0.0
    saves = events(done, last, cfg.checkpoint_every) + 1  # + the final model
    return ((last - done) * costs.step + events(done, last, cfg.eval_every) * costs.evaluation
            + events(done, last, cfg.sample_every) * costs.sample + saves * costs.save)


def steps_within(seconds_left: float, cfg, done: int, costs: Costs) -> int:
    """The largest step count, from `done` up to cfg.max_steps (an upper bound under a budget), whose rest
    fits in `seconds_left`."""
    low, high = done, max(done, cfg.max_steps)
    while low < high:  # what is left to do only grows with the step count: bisect for the last that fits
        middle = (low + high + 1) // 2
        if seconds_to_finish(cfg, done, middle, costs) <= seconds_left:
            low = middle
        else:
            high = middle - 1
    return low
