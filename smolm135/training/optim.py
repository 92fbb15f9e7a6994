"""The optimizer of the recipe, and its learning rate per step.

`adamw` (the seed recipe): AdamW with weight decay on matrices only. `muon`: Muon (`torch.optim.Muon`,
momentum orthogonalized by Newton-Schulz) for the matrices inside the blocks, AdamW for the embeddings and
the norm gains, as the speed-run recipes do; Muon's step is scaled to match AdamW's update size
(`adjust_lr_fn="match_rms_adamw"`), so one --lr and one schedule drive both.
"""
from __future__ import annotations

import math

import torch

from smolm135.checkpoint import PARTS_KEY
from smolm135.errors import UserError
from smolm135.training.config import TrainConfig, get_lr


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                        dtype: torch.dtype = torch.float32):
    """The optimizer --optimizer names, over the model's trainable parameters (a LoRA run's adapters alone:
    frozen weights get no moments); `dtype` is the training precision."""
    if cfg.optimizer == "muon":
        return muon_with_adamw(model, cfg, device, dtype)
    return adamw(model, cfg, device)


def adamw(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: decaying norm gains would only fight the normalisation."""
    matrices = [p for p in trainable(model) if p.dim() >= 2]
    vectors = [p for p in trainable(model) if p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": vectors, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused_adamw(device))


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def fused_adamw(device: torch.device) -> bool | None:
    """One kernel for every parameter's update on CUDA and CPU. On a CPU the plain AdamW runs about ten
    separate passes over each tensor; at the 50,304 x 128 embedding of a small model those passes took
    longer than the forward and backward matmuls together (bench/README.md, "From scratch on a CPU")."""
    return True if device.type in ("cuda", "cpu") else None


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig) -> float:
    """Set the schedule's learning rate for optimizer step `step` (0-based) on every group; returns it."""
    lr = get_lr(step, cfg)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def muon_with_adamw(model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> "OptimizerPair":
    """Muon for the blocks' 2-D weights (attention and MLP projections); AdamW for the token and position
    embeddings (a lookup table, not a linear map: orthogonalizing its update has no meaning, and it is tied
    to the output head) and for the norm gains. Muon orthogonalizes in bf16 where the run trains in bf16
    (the host multiplies it fast), else in fp32."""
    in_blocks = {id(p) for block in model.transformer.h for p in block.parameters() if p.dim() == 2}
    matrices = [p for p in trainable(model) if id(p) in in_blocks]
    embeddings = [p for p in trainable(model) if id(p) not in in_blocks and p.dim() >= 2]
    vectors = [p for p in trainable(model) if p.dim() < 2]
    muon = Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                adjust_lr_fn="match_rms_adamw", orthogonalize_dtype=dtype if dtype == torch.bfloat16 else torch.float32)
    rest = torch.optim.AdamW([{"params": embeddings, "weight_decay": cfg.weight_decay},
                              {"params": vectors, "weight_decay": 0.0}], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             fused=fused_adamw(device))
    return OptimizerPair(muon, rest)


class Muon(torch.optim.Muon):
    """`torch.optim.Muon` with its Newton-Schulz iteration in a chosen precision. torch's runs it in bf16, which
    a CPU without bf16 instructions emulates: on 2 cores of an AMD EPYC (Zen 3, AVX2) one 768 x 256 matrix took
    0.68 s in bf16 and 0.062 s in fp32, most of a small model's step. The state (a momentum buffer per matrix),
    the options and, in bf16, every bit of the update are torch's, so checkpoints resume in either."""

    def __init__(self, params, orthogonalize_dtype: torch.dtype = torch.bfloat16, **options):
        super().__init__(params, **options)
        self.orthogonalize_dtype = orthogonalize_dtype

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            for param in (p for p in group["params"] if p.grad is not None):
                grad = param.grad
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buffer = state["momentum_buffer"]
                buffer.lerp_(grad, 1 - group["momentum"])
                update = grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.orthogonalize_dtype)
                param.mul_(1 - group["lr"] * group["weight_decay"])
                param.add_(update, alpha=-group["lr"] * muon_lr_ratio(group["adjust_lr_fn"], param.shape))


def orthogonalize(matrix: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (torch.optim.Muon's, in `dtype`): roughly U V^T of the matrix's
    SVD, its singular values pushed towards 1, computed on the wide orientation."""
    a, b, c = coefficients
    x = matrix.to(dtype, copy=True)  # never the momentum buffer itself
    if matrix.size(0) > matrix.size(1):
        x = x.T
    x.div_(x.norm().clamp(min=eps))  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if matrix.size(0) > matrix.size(1) else x


def muon_lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's scaling of the learning rate for a matrix of `shape`."""
    rows, columns = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / columns))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, columns))
    return 1.0


class OptimizerPair:
    """Two optimizers over disjoint parameters that the loop drives as one: one step, one zero_grad, their
    param_groups side by side (so the schedule sets every learning rate), and one state_dict of plain
    data holding both, so that a checkpoint restores each exactly. GradScaler only needs `step` and
    `param_groups` of what it steps."""

    def __init__(self, first: torch.optim.Optimizer, second: torch.optim.Optimizer):
        self.optimizers = (first, second)

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    @property
    def state(self) -> dict:
        return {key: value for optimizer in self.optimizers for key, value in optimizer.state.items()}

    def step(self, closure=None) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {PARTS_KEY: [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get(PARTS_KEY)
        if not isinstance(saved, list) or len(saved) != len(self.optimizers):
            raise UserError("the checkpoint's optimizer state is not Muon + AdamW: resume with the --optimizer "
                            "it was trained with, or pass --resume never to start fresh")
        for optimizer, state in zip(self.optimizers, saved):
            optimizer.load_state_dict(state)
