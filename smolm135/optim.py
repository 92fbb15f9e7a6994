"""The optimizer of the recipe: AdamW with weight decay on matrices only, and its learning rate per step."""
from __future__ import annotations

import torch

from .train_config import TrainConfig, get_lr


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying norm gains would only fight the normalisation."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=True if device.type == "cuda" else None)  # one kernel for all params


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> float:
    """Set the schedule's learning rate for optimizer step `step` (0-based) on every group; returns it."""
    lr = get_lr(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
