"""The Muon + AdamW optimizer: which parameters each updates, its state, and AdamW stays the default (its exact
resume after SIGKILL: test_resume)."""
import collections
import json
import re
from pathlib import Path

import pytest
import torch

from smolm135.training.trainer import train
from smollm135_model import PRESETS, SmoLM135_Model
from smolm135.errors import UserError
from smolm135.training.optim import OptimizerPair, configure_optimizer
from smolm135.training.budget import MEASURING_STEPS
from smolm135.training.config import TrainConfig, validate

from conftest import tiny_train_config


def test_the_seed_recipe_keeps_adamw():
    assert TrainConfig().optimizer == "adamw"
    model = SmoLM135_Model(PRESETS["tiny"])
    assert isinstance(configure_optimizer(model, TrainConfig(preset="tiny"), torch.device("cpu")), torch.optim.AdamW)


def test_muon_updates_the_blocks_matrices_and_adamw_the_embeddings_and_norms():
    model = SmoLM135_Model(PRESETS["tiny"])
    optimizer = configure_optimizer(model, TrainConfig(preset="tiny", optimizer="muon"), torch.device("cpu"))
    assert isinstance(optimizer, OptimizerPair)
    muon, adamw = optimizer.optimizers
    muon_params = {id(p) for group in muon.param_groups for p in group["params"]}
    adamw_params = {id(p) for group in adamw.param_groups for p in group["params"]}
    names = {id(p): name for name, p in model.named_parameters()}
    assert muon_params.isdisjoint(adamw_params) and muon_params | adamw_params == set(names)
    assert all(".h." in names[i] and not names[i].endswith("norm.weight") for i in muon_params)
    assert {names[i] for i in adamw_params} >= {"transformer.wte.weight", "transformer.wpe.weight"}


@pytest.mark.parametrize("nesterov", [True, False])
def test_our_muon_in_bf16_is_torchs_to_the_bit_and_in_fp32_close_to_it(nesterov):
    from smolm135.training.optim import Muon

    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(48, 16, generator=generator), torch.randn(16, 40, generator=generator)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(4)]
    options = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")

    def trained(make):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = make(params)
        for step_grads in grads:
            for param, grad in zip(params, step_grads):
                param.grad = grad.clone()
            optimizer.step()
        return [p.detach() for p in params], optimizer.state_dict()

    reference, reference_state = trained(lambda params: torch.optim.Muon(params, **options))
    ours_bf16, ours_state = trained(lambda params: Muon(params, orthogonalize_dtype=torch.bfloat16, **options))
    ours_fp32, _ = trained(lambda params: Muon(params, orthogonalize_dtype=torch.float32, **options))
    assert all(torch.equal(a, b) for a, b in zip(ours_bf16, reference))
    assert all(torch.equal(a["momentum_buffer"], b["momentum_buffer"])
               for a, b in zip(ours_state["state"].values(), reference_state["state"].values()))
    for a, b in zip(ours_fp32, reference):  # bf16 rounds each iteration's products: close, not equal
        torch.testing.assert_close(a, b, rtol=0, atol=0.02)
        assert not torch.equal(a, b)


def test_muon_orthogonalizes_in_fp32_unless_the_run_trains_in_bf16():
    model = SmoLM135_Model(PRESETS["tiny"])
    cfg = TrainConfig(preset="tiny", optimizer="muon")
    for dtype, expected in [(torch.float32, torch.float32), (torch.float16, torch.float32),
                            (torch.bfloat16, torch.bfloat16)]:
        muon, _ = configure_optimizer(model, cfg, torch.device("cpu"), dtype).optimizers
        assert muon.orthogonalize_dtype == expected


@pytest.mark.slow
def test_resuming_with_another_optimizer_is_one_line_and_keeps_the_checkpoints(corpus_file, tmp_path):
    short = dict(max_steps=4, checkpoint_every=2, eval_every=4, sample_every=100)
    train(tiny_train_config(corpus_file, tmp_path, optimizer="muon", **short))
    before = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(UserError, match="--optimizer it was trained with"):
        train(tiny_train_config(corpus_file, tmp_path, optimizer="adamw", **{**short, "max_steps": 8}))
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == before  # nothing renamed corrupt


def recipe_of(*argv) -> TrainConfig:
    from smolm135.training.trainer import build_parser
    from smolm135.training.config import config_from_args, parse_train_args

    return config_from_args(parse_train_args(build_parser(), list(argv)))


def test_a_named_recipe_fills_the_flags_and_the_command_line_overrides_it(capsys):
    from smolm135.training.config import RECIPES, from_recipe

    scratch = recipe_of("--recipe", "cpu-scratch", "--lr", "1e-3", "--out-dir", "run")
    assert scratch.recipe == "cpu-scratch" and scratch.lr == 1e-3 and scratch.out_dir == "run"
    assert all(getattr(scratch, name) == value for name, value in RECIPES["cpu-scratch"].values.items()
               if name != "lr")
    assert scratch.model == PRESETS["cpu-scratch"] and scratch.optimizer == "muon"
    said = capsys.readouterr().out
    assert said.startswith("recipe cpu-scratch: --preset cpu-scratch --optimizer muon") and "--lr" not in said
    assert scratch == from_recipe("cpu-scratch", lr=1e-3, out_dir="run")  # the same recipe from Python
    assert recipe_of() == TrainConfig() and recipe_of().recipe == "seed"  # seed: the dataclass's defaults
    assert recipe_of("--recipe", "cpu-scratch", "--minutes", "0").minutes == 0  # its budget, turned off


def test_the_quick_start_recipes_are_valid_and_let_their_budget_decide_the_steps():
    for name in ("cpu-scratch", "finetune", "chat"):
        cfg = recipe_of("--recipe", name)
        validate(cfg)
        # the step count is the budget's (--max-steps only bounds it); the last step, whichever the budget
        # fixes, is evaluated, sampled and checkpointed like every run's
        assert cfg.minutes == 10 and cfg.max_steps >= 1000 and cfg.warmup_steps >= MEASURING_STEPS


def test_the_chat_recipe_fine_tunes_the_instruct_model_on_the_built_in_quiz_in_its_own_folder(tmp_path, monkeypatch):
    from smolm135.data.corpus import DEFAULT_CHAT_DATA, resolve_sources
    from smolm135.data.chat import detect_shape
    from smolm135.interop.pretrained import BUILTIN_MODELS

    cfg = recipe_of("--recipe", "chat")
    assert (cfg.init_from, cfg.data, cfg.out_dir) == ("smollm2-135m-instruct", DEFAULT_CHAT_DATA, "chat-run")
    assert cfg.init_from in BUILTIN_MODELS  # the name its owner loads, not a copy that could drift from it
    monkeypatch.chdir(tmp_path)
    [path] = resolve_sources(cfg.data)  # written when absent, as input.txt is
    assert path == Path(DEFAULT_CHAT_DATA) and detect_shape([path]).name == "messages"


def test_the_quiz_asks_about_every_play_alike_with_passages_whose_speakers_are_named(tmp_path):
    from smolm135.data.shakespeare import QUIZ_PASSAGES_PER_PLAY, QUIZ_QUESTION, play_files, write_play_quiz

    path = write_play_quiz(tmp_path / "quiz.jsonl")
    records = [json.loads(line)["messages"] for line in path.read_text(encoding="utf-8").splitlines()]
    titles = collections.Counter(messages[1]["content"] for messages in records)
    assert len(titles) == len(play_files()) == 38 and set(titles.values()) == {QUIZ_PASSAGES_PER_PLAY}
    assert {"Hamlet", "All's Well That Ends Well", "Measure for Measure"} <= set(titles)  # the last two: no heading
    for messages in records:
        assert [m["role"] for m in messages] == ["user", "assistant"]
        question, passage = messages[0]["content"].split("\n\n", 1)
        assert question == QUIZ_QUESTION and len(passage.splitlines()) == 4
        assert all(re.match(r"^[A-Z][A-Za-z .,'&-]*: \S", line) for line in passage.splitlines())
    assert write_play_quiz(tmp_path / "again.jsonl").read_bytes() == path.read_bytes()  # shuffled, the same way
    assert [m[1]["content"] for m in records[:38]] != sorted(m[1]["content"] for m in records[:38])


def test_recipe_list_prints_each_recipe_with_its_values_and_exits_0(capsys):
    from smolm135.training.trainer import main
    from smolm135.training.config import RECIPES

    with pytest.raises(SystemExit) as exit_info:
        main(["--recipe", "list"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for name, recipe in RECIPES.items():
        assert f"{name}: {recipe.description}" in listed
    assert "--seq-len 1024" in listed and "--optimizer muon" in listed


def test_help_names_the_recipes(capsys):
    from smolm135.training.trainer import main
    from smolm135.training.config import RECIPES

    with pytest.raises(SystemExit):
        main(["--help"])
    helped = capsys.readouterr().out
    assert all(f"{name}: {recipe.description}" in helped for name, recipe in RECIPES.items())


def test_an_unknown_recipe_is_one_line_naming_the_known_ones():
    with pytest.raises(UserError, match=r"^unknown recipe 'fast': choose one of seed, cpu-scratch, finetune, chat"):
        recipe_of("--recipe", "fast")


def test_the_log_and_the_checkpoint_record_the_recipe_and_its_resolved_values(trained_run):
    from smolm135.checkpoint import load_checkpoint

    cfg, _, summary, _ = trained_run
    recorded = load_checkpoint(summary["final_model_path"]).train_config
    assert recorded == cfg.to_dict() and recorded["recipe"] == "seed" and recorded["max_steps"] == cfg.max_steps
    log = open(summary["log_path"]).read()
    assert "recipe seed:" in log and "'recipe': 'seed'" in log


@pytest.mark.slow  # imports the demo (gradio)
def test_the_demo_and_the_benchmark_name_the_recipe_instead_of_spelling_its_flags():
    from smolm135.inference import demo as app
    from bench.learning import RECIPES as BENCH_RECIPES
    from smolm135.training.config import RECIPES

    assert app.TRAIN_COMMAND == "python Model_smollm135_trainer.py --recipe cpu-scratch"
    assert all(BENCH_RECIPES["cpu-scratch"][name] == value for name, value in RECIPES["cpu-scratch"].values.items()
               if name in BENCH_RECIPES["cpu-scratch"])
