"""The Muon + AdamW optimizer: which parameters each updates, its state, and AdamW stays the default (its exact
resume after SIGKILL: test_resume)."""
import pytest
import torch

from Model_smollm135_trainer import train
from smollm135_model import PRESETS, SmoLM135_Model
from smolm135.errors import UserError
from smolm135.optim import OptimizerPair, configure_optimizer
from smolm135.train_config import TrainConfig

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
    from smolm135.optim import Muon

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


def test_the_readme_from_scratch_command_is_a_valid_cpu_scratch_recipe():
    from Model_smollm135_trainer import build_parser
    from smolm135.train_config import config_from_args, validate

    from conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    command = next(line for line in readme.splitlines()
                   if line.startswith("python Model_smollm135_trainer.py --preset cpu-scratch"))
    cfg = config_from_args(build_parser().parse_args(command.split()[2:]))
    validate(cfg)
    assert cfg.model == PRESETS["cpu-scratch"] and cfg.optimizer == "muon"
    assert cfg.max_steps % cfg.eval_every == 0 and cfg.checkpoint_every == cfg.max_steps  # evaluated at the end
