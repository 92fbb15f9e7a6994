"""Where and how training runs: device choice, autocast precision, torchrun's process group, MFU.

CUDA-only features (TF32, fused AdamW, bf16 capability checks) are asked about only on CUDA, so CPU and
Apple MPS never trip on them.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Dense bf16 tensor-core peaks (FLOP/s) of common GPUs, for MFU; fp32/TF32 runs are compared to the same.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                  "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12}


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_request: str) -> Distributed:
    """Join torchrun's process group when launched by torchrun (RANK/WORLD_SIZE set), else one process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    use_cuda = device_request.startswith("cuda") or (device_request == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Distributed(dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), dist.get_world_size())


def main_process_first(distributed: Distributed, work):
    """Run `work()` on the main process, then on the others: the main one creates shared files (token
    cache, renamed corrupt checkpoints) that the others then only read."""
    if distributed.is_main:
        result = work()
    if distributed.enabled:
        dist.barrier()
    if not distributed.is_main:
        result = work()
    return result


def pick_device(requested: str, distributed: Distributed = Distributed()) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto")
        if distributed.enabled and device.index is None:
            device = torch.device("cuda", distributed.local_rank)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but Apple MPS is not available: use --device cpu or auto")
    return device


def cpu_supports_bf16() -> bool:
    """True where the processor has native bf16 dot products (AVX512-BF16 or AMX), so autocast pays off."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The autocast dtype; float32 means no autocast."""
    if requested == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return torch.float32
    dtype = DTYPES[requested]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bfloat16 support: use --dtype float16 or float32")
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("float16 autocast is not supported on CPU: use --dtype bfloat16 or float32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # TF32 matmuls: ~8x the fp32 throughput on Ampere and later for a negligible precision cost
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s, where we know it."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in GPU_PEAK_FLOPS.items() if key in name), None)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
