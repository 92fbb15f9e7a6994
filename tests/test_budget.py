"""--minutes: the step count fixed from the first steps, recorded, and kept by a resumed run (a fake clock
makes every figure exact; nothing here measures real time)."""
import pytest
import torch

from smolm135.training.trainer import StepBudget, train
from smolm135.training.budget import Costs, events, fixing_step, seconds_to_finish, steps_within
from smolm135.checkpoint import load_checkpoint
from smolm135.errors import UserError
from smolm135.training.config import TrainConfig, validate

from conftest import tiny_train_config


class FakeClock:
    """A clock that moves `tick` seconds each time it is read: every timed piece takes `tick` seconds."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_the_step_count_pays_for_the_steps_evaluations_samples_and_saves_it_brings():
    cfg = TrainConfig(max_steps=100, eval_every=10, sample_every=20, checkpoint_every=50)
    costs = Costs(step=1.0, evaluation=5.0, sample=2.0, save=3.0)
    assert events(3, 10, 10) == 1 and events(3, 12, 10) == 2 and events(10, 20, 10) == 1 and events(5, 5, 10) == 0
    # steps 4..20: 17 steps, evaluations at 10 and 20, a sample at 20, no checkpoint but the last and the final model
    assert seconds_to_finish(cfg, 3, 20, costs) == 17 + 2 * 5 + 2 + 2 * 3
    assert steps_within(35.0, cfg, 3, costs) == 20
    assert steps_within(34.9, cfg, 3, costs) == 19  # 16 steps, evaluations at 10 and 19, a sample, 2 saves: 34
    assert steps_within(1e9, cfg, 3, costs) == 100  # --max-steps is the most a budget fixes
    assert steps_within(0.0, cfg, 3, costs) == 3  # time is up: the run ends at the step it has reached


def test_the_count_waits_for_the_end_of_warm_up_and_one_slow_step_does_not_decide_it():
    """A fine-tune's second step took 5.4 s and every later one about 2.8 s: the mean of the two steps timed
    after the first fixed a count that left a third of the 10 minutes unused."""
    assert [fixing_step(warmup) for warmup in (3, 4, 50, 2000)] == [3, 4, 20, 20]
    ends_of_steps = iter([0.0, 0.0, 3.6, 9.0, 12.0, 14.8])  # the start, before step 1, after steps 1 to 4
    budget = StepBudget(clock=ends_of_steps.__next__)
    for _ in range(5):
        budget.mark()
    assert budget.step_seconds() == 3.0  # the median of 5.4, 3.0 and 2.8: the warm-up step is left out
    resumed = StepBudget(clock=iter([0.0, 0.0, 3.5]).__next__)  # resumed just before the count is fixed
    resumed.mark(), resumed.mark()
    assert resumed.step_seconds() == 3.5  # the one step this process took

def test_a_budget_needs_warm_up_steps_to_time_and_a_sane_number():
    with pytest.raises(UserError, match="--warmup-steps must be at least 3"):
        validate(TrainConfig(minutes=10, warmup_steps=2))
    with pytest.raises(UserError, match="--minutes must be a finite number"):
        validate(TrainConfig(minutes=float("nan")))
    validate(TrainConfig(minutes=10, warmup_steps=3))


@pytest.mark.slow  # two short trainings
def test_a_budgeted_run_records_its_step_count_and_a_resumed_one_ends_bitwise_equal(corpus_file, tmp_path):
    budget = dict(minutes=0.5, max_steps=40, warmup_steps=3, eval_every=4, eval_batches=1, checkpoint_every=4,
                  keep_checkpoints=10, sample_every=8, sample_tokens=2, batch_size=4)
    straight = tiny_train_config(corpus_file, tmp_path / "straight", **budget)
    _, summary = train(straight, clock=FakeClock(1.0))
    final = load_checkpoint(summary["final_model_path"])
    steps = final.train_config["budgeted_steps"]
    assert 3 < steps < 40 and final.progress.step == steps == final.train_config["max_steps"] == summary["steps"]
    assert f"0.5 minutes: {steps} steps at 1.00 s" in open(summary["log_path"]).read()

    # the same run resumed from its step-4 checkpoint, on a clock ten times slower: it does not time its steps
    # again, it trains to the recorded count, and ends where the uninterrupted run did, bit for bit
    resumed_cfg = tiny_train_config(corpus_file, tmp_path / "resumed", **budget,
                                    resume=str(tmp_path / "straight" / "checkpoints" / "step_0000004.pt"))
    _, resumed = train(resumed_cfg, clock=FakeClock(10.0))
    assert resumed["start_step"] == 4 and resumed["steps"] == steps
    a, b = final, load_checkpoint(resumed["final_model_path"])
    assert a.progress.history["train"] == b.progress.history["train"]
    for key, tensor in a.model_state_dict.items():
        assert torch.equal(tensor, b.model_state_dict[key]), key
    assert b.train_config["budgeted_steps"] == steps

