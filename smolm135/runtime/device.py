"""Where and how training runs: device choice, autocast precision, torchrun's process group, MFU.

CUDA-only features (TF32, bf16 capability checks) are asked about only on CUDA, so CPU and
Apple MPS never trip on them.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import platform
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from smolm135.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Dense bf16 tensor-core peaks (FLOP/s) of common GPUs, for MFU; fp32/TF32 runs are compared to the same.
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                  "L4": 121e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12}

# How long a process may wait for rank 0 (tokenizing a corpus of hundreds of GB, writing a checkpoint).
# The collectives' own timeout (10 to 30 minutes) would kill a healthy run that tokenizes a big corpus;
# a process that dies closes its sockets, which ends the wait at once, so this only bounds a silent hang.
COORDINATION_TIMEOUT = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run. One process: rank 0 of 1."""

    rank: int = 0
    local_rank: int = 0  # index on this node = the GPU it drives
    world_size: int = 1
    owns_process_group: bool = False  # set up here, so torn down here (not when a notebook made it)
    # A gloo group with a long timeout for waiting on rank 0 and for sharing its errors and results.
    coordination: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_request: str) -> Distributed:
    """Join torchrun's process group when launched by torchrun (RANK/WORLD_SIZE set), else one process.
    NCCL drives CUDA, gloo the CPU."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # --device cuda without a GPU joins with gloo, so pick_device can refuse it with its own message
    use_cuda = device_request.startswith(("cuda", "auto")) and torch.cuda.is_available()
    owns = not dist.is_initialized()
    if owns:
        if use_cuda:
            processes_here, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", "1")), torch.cuda.device_count()
            if processes_here > gpus:  # the same check, and so the same message, on every process
                raise UserError(f"torchrun starts {processes_here} processes on this node but it has {gpus} "
                                f"visible GPUs: use --nproc_per_node={gpus} (one process per GPU)")
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
    coordination = dist.new_group(backend="gloo", timeout=COORDINATION_TIMEOUT)
    return Distributed(dist.get_rank(), local_rank, dist.get_world_size(), owns, coordination)


def teardown_distributed(distributed: Distributed) -> None:
    """Leave the process group cleanly (NCCL warns, and may hang at exit, when it is left alive)."""
    if distributed.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


def run_on_main(distributed: Distributed, fn: Callable[[], Any], send_result_to_all: bool = False) -> Any:
    """fn() on rank 0 alone (a checkpoint write, choosing the checkpoint to resume). Every process then
    learns whether it failed, so a UserError on rank 0 stops all of them with its message instead of
    leaving them waiting in a collective. With send_result_to_all, every process gets rank 0's result
    (so other nodes need not see rank 0's disk); else the others get None."""
    result = _run_and_share_failures(distributed, fn, distributed.is_main)
    if send_result_to_all and distributed.enabled:
        box = [result]
        dist.broadcast_object_list(box, src=0, group=distributed.coordination)
        result = box[0]
    return result


def main_process_first(distributed: Distributed, fn: Callable[[], Any]) -> Any:
    """fn() on every process in three turns: rank 0, then the first process of each other node, then
    the rest. Rank 0 fills a cache (the tokenized corpus) that the others then read; a node that does
    not share rank 0's disk fills its own copy once, not once per GPU. Failures are shared as in
    run_on_main."""
    if not distributed.enabled:
        return fn()
    my_turn = 0 if distributed.is_main else 1 if distributed.local_rank == 0 else 2
    result = None
    for turn in range(3):
        outcome = _run_and_share_failures(distributed, fn, turn == my_turn)
        if turn == my_turn:
            result = outcome
    return result


def _run_and_share_failures(distributed: Distributed, fn: Callable[[], Any], run_here: bool) -> Any:
    if not distributed.enabled:
        return fn() if run_here else None
    result, own_error, message = None, None, None
    if run_here:
        try:
            result = fn()
        except UserError as error:
            own_error, message = error, str(error)
        except Exception as error:  # a bug: re-raised here with its traceback, named to the others
            own_error, message = error, f"process {distributed.rank} stopped on {type(error).__name__}: {error}"
    messages = [None] * distributed.world_size
    dist.all_gather_object(messages, message, group=distributed.coordination)
    if own_error is not None:
        raise own_error
    first = next((m for m in messages if m is not None), None)
    if first is not None:
        raise UserError(first)
    return result


def pick_device(requested: str, distributed: Distributed = Distributed()) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.local_rank)
        if torch.backends.mps.is_available() and not distributed.enabled:  # gloo cannot reduce MPS tensors
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
        elif distributed.enabled:  # refused on every process alike, so all stop with one message
            raise UserError(f"--device {requested} under torchrun would put several processes on one GPU: "
                            f"use --device cuda (each process takes the GPU of its LOCAL_RANK)")
    if device.type == "mps" and distributed.enabled:
        raise UserError("torchrun with --device mps is not supported (gloo cannot reduce MPS tensors): "
                        "run one process, or use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for but Apple MPS is not available: use --device cpu or auto")
    return device


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (float32: no autocast), why it was chosen, and the bf16 attention kernel."""

    dtype: torch.dtype
    reason: str | None = None  # said on the console where `auto` measured or detected it
    bf16_attention_by_matmuls: bool = False  # CpuKernels.training_attention_by_matmuls


def choose_precision(requested: str, device: torch.device, model_config=None, seq_len: int = 128,
                     resumed: dict | None = None) -> Precision:
    """The training precision. `auto`: on CUDA bf16 (float16 before Ampere); on a CPU whichever of fp32
    and bf16 autocast trains `model_config` (default: the smolm135 preset) faster on this host, measured
    once and remembered (smolm135/runtime/probes.py); elsewhere fp32. `resumed`, the precision record of the run
    being resumed (`precision_record`), is kept on the same kind of device unless --dtype names another."""
    from smolm135.runtime import probes

    if resumed and resumed["device"] == device.type and requested in ("auto", resumed["dtype"]):
        return Precision(DTYPES[resumed["dtype"]], f"{resumed['dtype']}, as the run being resumed computed"
                         if requested == "auto" else None, resumed["attention_by_matmuls"])
    if device.type == "cpu" and requested in ("auto", "bfloat16"):
        if model_config is None:
            from smollm135_model import ModelConfig
            model_config = ModelConfig()
        measured = probes.cpu_training_precision(model_config, seq_len)
        if requested == "auto":
            return Precision(measured.dtype, measured.reason, measured.bf16_attention_by_matmuls)
        return Precision(torch.bfloat16, None, measured.bf16_attention_by_matmuls)
    return Precision(pick_dtype(requested, device))


def precision_record(device: torch.device, dtype: torch.dtype, attention_by_matmuls: bool) -> dict:
    """What a checkpoint keeps of the precision a run computes in (see choose_precision's `resumed`)."""
    return {"device": device.type, "dtype": str(dtype).removeprefix("torch."),
            "attention_by_matmuls": attention_by_matmuls}


def is_precision_record(value) -> bool:
    """Whether a value read from a checkpoint is a record `precision_record` wrote, one choose_precision can use."""
    return (isinstance(value, dict) and set(value) == {"device", "dtype", "attention_by_matmuls"}
            and isinstance(value["device"], str) and value["dtype"] in DTYPES
            and isinstance(value["attention_by_matmuls"], bool))


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The autocast dtype; float32 means no autocast. On a CPU, `auto` is `choose_precision`'s choice for
    the smolm135 preset."""
    if requested == "auto":
        if device.type == "cuda":
            # GPUs before Ampere (e.g. a T4) lack bf16: float16 with the trainer's loss scaling, as nanoGPT
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu":
            return choose_precision(requested, device).dtype
        return torch.float32
    dtype = DTYPES[requested]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU has no bfloat16 support: use --dtype float16 or float32")
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError("--dtype float16 is for GPUs without bfloat16; on a CPU use --dtype bfloat16 or float32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_backends(device: torch.device, reuse_freed_memory: bool = True) -> None:
    if device.type == "cpu" and reuse_freed_memory:
        keep_freed_memory_for_reuse()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # TF32 matmuls: ~8x the fp32 throughput on Ampere and later for a negligible precision cost
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def keep_freed_memory_for_reuse() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of handing it back to the system.

    A training step allocates and frees the same large buffers every step (activations, gradients, the
    optimizer's temporaries). glibc maps each one over 32 MB afresh and unmaps it when freed, so every
    step page-faults all of their pages in again, a sizeable share of a CPU step (what a fault costs varies
    with the host; `bench/train_step.py --default-malloc` compares, bench/README.md has the figures).
    Keeping them costs a little more peak resident memory; the first few steps still fault while the heap
    settles. Linux with glibc only, and not when the environment already chooses (`MALLOC_*` variables, or
    another allocator through LD_PRELOAD). Returns whether it applied.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or "LD_PRELOAD" in os.environ:
        return False
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    libc = ctypes.CDLL(None)  # the C library the interpreter runs on
    # mallopt parameters from <malloc.h>: never serve an allocation with mmap, never trim the heap top
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


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
