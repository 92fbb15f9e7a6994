"""What this host computes fastest: measured once, remembered, and named on the console.

A precision or kernel that is faster on one processor can be twice as slow on another: bf16 autocast runs
3.3x faster than fp32 on a CPU with AVX512-BF16 and AMX-less AMD cores, and 1.6x slower on an Intel Xeon
with the same instructions; a split matrix product doubles decoding speed under one build of MKL and
halves it under another. So wherever the model has two ways to compute the same values, the choice is
made by a short measurement on the running host (a fraction of a second), remembered in a small JSON file
per host, torch version and model shape, and the plain way is kept wherever the other is not faster.

The file lives in `$SMOLM135_CACHE_DIR`, else `$XDG_CACHE_HOME/smolm135`, else `~/.cache/smolm135`.
Deleting it (or changing the torch version, the thread count or the processor) measures again.
"""
from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch

from smolm135.runtime.disk import write_text_atomically

CACHE_DIR_ENV = "SMOLM135_CACHE_DIR"
CACHE_FILE = "probes.json"
# Bumped when a probe measures something different, so old answers are not reused for new questions.
PROBE_VERSION = 1

# The instruction-set flags (Linux /proc/cpuinfo names) that decide how fast bf16, int8 and fp32 run.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16",
             "amx_int8", "asimd", "asimddp", "bf16", "i8mm", "sve", "sve2", "sme")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 bf16 dot products, AMX tiles, ARMv8.6 BF16

# bf16 autocast is taken only when it beats fp32 by more than this: inside it, the two are equally fast
# within the noise of a short probe, and fp32 is the more exact.
BF16_MIN_SPEEDUP = 1.05


# ------------------------------------------------------------------ the host


@dataclass(frozen=True)
class Host:
    """The processor and software a measurement holds for."""

    cpu_model: str
    cores: int  # logical processors the OS reports
    threads: int  # torch's intra-op threads: what a measurement ran on
    flags: tuple[str, ...]  # the ISA_FLAGS present; empty where the OS does not list them
    flags_known: bool  # False where no flag list could be read (macOS, Windows): only a probe can tell
    capability: str  # the vector code torch's kernels dispatched to (AVX2, AVX512, SVE256, ...)
    torch_version: str
    blas: str

    @property
    def native_bf16(self) -> bool | None:
        """Whether the processor multiplies bf16 natively; None where its flags are unknown."""
        if not self.flags_known:
            return None
        return any(flag in self.flags for flag in NATIVE_BF16_FLAGS)

    def key(self) -> str:
        return "|".join([self.cpu_model, str(self.cores), str(self.threads), ",".join(self.flags),
                         self.capability, self.torch_version, self.blas])

    def line(self) -> str:
        flags = " ".join(self.flags) if self.flags_known else "flags unknown"
        return (f"host: {self.cpu_model}, {self.cores} cores ({self.threads} torch threads), ISA {flags}, "
                f"torch kernels {self.capability}, torch {self.torch_version}, BLAS {self.blas}")


def this_host() -> Host:
    model, flags, known = _cpu_model_and_flags()
    return Host(model, os.cpu_count() or 1, torch.get_num_threads(), flags, known,
                torch.backends.cpu.get_cpu_capability(), torch.__version__, _blas())


@lru_cache(maxsize=None)
def _cpu_model_and_flags() -> tuple[str, tuple[str, ...], bool]:
    try:
        info = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        info = ""
    model = re.search(r"^(?:model name|Processor|cpu model)\s*:\s*(.+)$", info, re.MULTILINE)
    listed = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", info, re.MULTILINE)
    present = set(listed.group(1).split()) if listed else set()
    flags = tuple(flag for flag in ISA_FLAGS if flag in present)
    name = model.group(1).strip() if model else (platform.processor() or platform.machine() or "unknown CPU")
    # a virtual machine may call very different processors just "AMD EPYC": family and model tell them apart
    family, number = (re.search(rf"^{field}\s*:\s*(\d+)$", info, re.MULTILINE) for field in ("cpu family", "model"))
    if family and number:
        name += f" (family {family.group(1)}, model {number.group(1)})"
    return name, flags, listed is not None


@lru_cache(maxsize=None)
def _blas() -> str:
    """MKL / OpenBLAS / Accelerate and oneDNN versions, from torch's build description."""
    config = torch.__config__.show()
    found = []
    mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
    if mkl:
        found.append(f"MKL {mkl.group(1)}")
    blas_info = re.search(r"BLAS_INFO=(\w+)", config)
    if blas_info and not mkl:
        found.append(blas_info.group(1))
    onednn = re.search(r"MKL-DNN (v[\w.]+)", config)
    if onednn:
        found.append(f"oneDNN {onednn.group(1)}")
    return ", ".join(found) or "unknown"


# ------------------------------------------------------------------ the cache


def cache_path() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]) / CACHE_FILE
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "smolm135" / CACHE_FILE


def remembered(question: str, measure: Callable[[], dict]) -> dict:
    """The answer to `question` on this host: from the cache file, or measured now and stored there.
    A cache that cannot be read or written only means measuring again next time."""
    key = f"v{PROBE_VERSION}|{question}|{this_host().key()}"
    path = cache_path()
    answers = _read_answers(path)
    if key in answers:
        return answers[key]
    answer = measure()
    answers = _read_answers(path)  # another process may have added its own answers meanwhile
    answers[key] = answer
    _write_answers(path, answers)
    return answer


def _read_answers(path: Path) -> dict:
    try:
        answers = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return answers if isinstance(answers, dict) else {}


def _write_answers(path: Path, answers: dict) -> None:
    """Written to a temporary file and renamed over the old one, so no reader ever sees half a file."""
    try:
        write_text_atomically(path, json.dumps(answers, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home: the answer still holds for this process


# ------------------------------------------------------------------ timing


def median_seconds(candidates: dict[str, Callable[[], object]], budget_seconds: float,
                   min_rounds: int = 3, max_rounds: int = 15) -> dict[str, float]:
    """Median seconds per call of each candidate, from rounds that alternate them (so a slow spell of a
    shared machine hits all alike), after one untimed round; as many rounds as fit in the budget."""
    started = time.perf_counter()
    for run in candidates.values():
        run()
    one_round = max(time.perf_counter() - started, 1e-6)
    rounds = max(min_rounds, min(max_rounds, int(budget_seconds / one_round)))
    seconds = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


# ------------------------------------------------------------------ training precision


@dataclass(frozen=True)
class PrecisionChoice:
    dtype: torch.dtype
    reason: str  # said on the console: "bf16: 1.4x faster than fp32 here"
    # whether bf16 attention up to MATMUL_ATTENTION_MAX_LENGTH is faster by two matmuls than by SDPA here
    # (measured with the precision; False where bf16 was not measured)
    bf16_attention_by_matmuls: bool = False


def cpu_training_precision(model_config, seq_len: int) -> PrecisionChoice:
    """fp32 or bf16 autocast for training `model_config` at `seq_len` on this CPU, whichever is faster.

    Where the processor lists no native bf16 instructions, fp32 without measuring (bf16 is emulated there,
    many times slower). Elsewhere one block of the model and its loss head run forward and backward in
    both precisions (a second or two, once per host and shape)."""
    if this_host().native_bf16 is False:
        return PrecisionChoice(torch.float32, "fp32: this CPU has no fast bf16")
    seq_len = max(1, min(seq_len, model_config.block_size))
    question = f"cpu training precision|{_shape_key(model_config)}|T={seq_len}"
    answer = remembered(question, lambda: _measure_training_precision(model_config, seq_len))
    speedup = answer["fp32_seconds"] / answer["bf16_seconds"]
    by_matmuls = answer["bf16_attention_by_matmuls"]
    if speedup > BF16_MIN_SPEEDUP:
        return PrecisionChoice(torch.bfloat16, f"bf16: {speedup:.1f}x faster than fp32 here", by_matmuls)
    return PrecisionChoice(torch.float32, f"fp32: bf16 took {1 / speedup:.2f}x the time of fp32 here", by_matmuls)


def _shape_key(cfg) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(asdict(cfg).items()) if k not in ("init_std",))


def _measure_training_precision(cfg, seq_len: int, screen: bool = True) -> dict:
    """Estimated seconds of a forward and backward pass over the model, fp32 and bf16 autocast: n_layer
    times one block's, plus the loss head's, for 128 positions. In bf16 at short lengths, attention both by
    SDPA and by matmuls (the faster is taken). With `screen`, one small matmul first: where bf16 runs it at
    under half fp32's speed (emulated), the model is not measured, as bf16 cannot win."""
    from smollm135_model import MATMUL_ATTENTION_MAX_LENGTH, Block, linear_cross_entropy

    if screen:
        matmul_speedup = _bf16_matmul_speedup(cfg)
        if matmul_speedup < 0.5:
            return {"fp32_seconds": matmul_speedup, "bf16_seconds": 1.0, "bf16_attention_by_matmuls": False}
    generator = torch.Generator().manual_seed(0)  # leaves the global RNG, and so the run, untouched
    rows = 128
    batch = max(1, rows // seq_len)
    block = Block(cfg)
    x = torch.randn(batch, seq_len, cfg.n_embd, generator=generator).requires_grad_()  # (B, T, C)
    head = (torch.randn(cfg.vocab_size, cfg.n_embd, generator=generator) * 0.02).requires_grad_()  # (V, C)
    hidden = torch.randn(rows, cfg.n_embd, generator=generator).requires_grad_()  # (N, C)
    targets = torch.randint(0, cfg.vocab_size, (rows,), generator=generator)  # (N,)

    def block_step(dtype, by_matmuls=False):
        def run():
            block.attn.matmul_attention_max_length = MATMUL_ATTENTION_MAX_LENGTH if by_matmuls else 0
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                block(x).float().square().mean().backward()
        return run

    def head_step(dtype):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                linear_cross_entropy(hidden, head, targets).backward()
        return run

    candidates = {"fp32 block": block_step(torch.float32), "bf16 block": block_step(torch.bfloat16),
                  "fp32 head": head_step(torch.float32), "bf16 head": head_step(torch.bfloat16)}
    if seq_len <= MATMUL_ATTENTION_MAX_LENGTH:
        candidates["bf16 block, attention by matmuls"] = block_step(torch.bfloat16, by_matmuls=True)
    seconds = median_seconds(candidates, budget_seconds=1.0)
    by_matmuls = seconds.get("bf16 block, attention by matmuls", float("inf")) < seconds["bf16 block"]
    bf16_block = min(seconds["bf16 block"], seconds.get("bf16 block, attention by matmuls", float("inf")))
    return {"fp32_seconds": cfg.n_layer * seconds["fp32 block"] + seconds["fp32 head"],
            "bf16_seconds": cfg.n_layer * bf16_block + seconds["bf16 head"],
            "bf16_attention_by_matmuls": by_matmuls}


def _bf16_matmul_speedup(cfg) -> float:
    """fp32 time / bf16 time of one (32, C) x (C, intermediate) matmul: milliseconds, even emulated."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(32, cfg.n_embd, generator=generator)
    b = torch.randn(cfg.n_embd, cfg.intermediate_size, generator=generator)
    a16, b16 = a.bfloat16(), b.bfloat16()
    seconds = median_seconds({"fp32": lambda: a @ b, "bf16": lambda: a16 @ b16}, budget_seconds=0.2)
    return seconds["fp32"] / seconds["bf16"]


# ------------------------------------------------------------------ decoding kernels


def hand_decode_probe(model):
    """Let `model.generate` take, on a CPU, the decode kernels measured fastest on this host (the model file
    measures nothing itself, so an exported folder never benchmarks its host). Returns the model."""
    model.decode_kernel_probe = cpu_decode_kernels
    return model


def cpu_decode_kernels(model) -> dict[str, bool]:
    """Which of the model's equal ways of decoding one token is fastest on this CPU, for its weights' dtype:
    {"split_products": few_row_linear instead of F.linear, "decode_attention_by_matmuls": two matmuls
    instead of SDPA} (CpuKernels fields). Measured on the model itself, one token against a short cache (a fraction of a second)."""
    dtype = model.lm_head.weight.dtype
    question = f"cpu decode kernels|{_shape_key(model.config)}|{dtype}"
    return remembered(question, lambda: _measure_decode_kernels(model))


def _measure_decode_kernels(model) -> dict[str, bool]:
    from smollm135_model import KVCache

    cfg = model.config
    weight = model.lm_head.weight
    past = min(64, cfg.block_size - 1)
    cache = KVCache(cfg, 1, past + 1, weight.device, weight.dtype)
    token = torch.zeros(1, 1, dtype=torch.long, device=weight.device)  # (B=1, T=1)
    before = model.cpu_kernels

    def step(split_products, attention_by_matmuls):
        def run():
            model.use_cpu_kernels(split_products=split_products, decode_attention_by_matmuls=attention_by_matmuls)
            cache.length = past  # the same step every time: one token after `past` cached positions
            model(token, kv_cache=cache, logits_to_keep=1)
        return run

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            seconds = median_seconds({"plain": step(False, False), "split products": step(True, False),
                                      "attention by matmuls": step(False, True)}, budget_seconds=0.5)
    finally:
        model.use_cpu_kernels(**asdict(before))
        model.train(was_training)
    return {"split_products": seconds["split products"] < seconds["plain"],
            "decode_attention_by_matmuls": seconds["attention by matmuls"] < seconds["plain"]}
