"""LoRA (Hu et al. 2021, low-rank adapters) through peft: what a run's adapters are (`LoraSettings`), putting
them on a native model with its base weights frozen, their place in a checkpoint, merging them into the base
weights, and writing them as a peft adapter folder for transformers' Llama.

peft injects its layers into the native model in place: a targeted `Linear` becomes a peft layer holding the
original as `base_layer` beside `lora_A` and `lora_B`, and the update is (alpha / rank) * B @ A. The model
stays a `SmoLM135_Model`, so the training loop, DDP and sampling run it as they run any model. A checkpoint
keeps our plain names: `model_state_dict` holds the base weights unmerged (so a resume is exact and names
its own base), and `lora` holds the settings and the adapters under peft's saved names (`...qkv_proj.lora_A
.weight`), never peft's wrapper prefixes. Every reader that builds a plain model from a checkpoint (evaluation,
the demo, exports) merges the adapters in (`merge_adapters`).

peft is imported only where adapters are made or merged: importing it imports transformers (seconds).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from smollm135_model import SmoLM135_Model

from smolm135.errors import is_int, is_number

# The Linear layers inside a Block of smollm135_model.py (attention: qkv_proj, o_proj; MLP: gate_up_proj,
# down_proj), the layers LoRA may adapt. The embedding and the output head, tied to it, are left out: an
# adapter on a tied matrix would untie it when merged.
BLOCK_PROJECTIONS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
ADAPTER_NAME = "default"  # peft's name of a model's one adapter; a checkpoint stores names without it
# A stored rank may not exceed this: building the adapters allocates rank x (in + out) numbers per layer.
MAX_RANK = 65536


@dataclass(frozen=True)
class LoraSettings:
    """The adapters of a LoRA run: `rank` R of each update B @ A, scaled by `alpha / rank`, dropout on the
    adapters' input while training, and the block projections they adapt."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]

    @classmethod
    def of(cls, cfg) -> "LoraSettings | None":
        """The settings a TrainConfig's --lora-* flags describe; None without --lora-rank (full training)."""
        if not cfg.lora_rank:
            return None
        return cls(cfg.lora_rank, float(cfg.lora_alpha), float(cfg.lora_dropout), parse_targets(cfg.lora_targets))

    def to_record(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_record(cls, record: dict) -> "LoraSettings":
        return cls(record["rank"], float(record["alpha"]), float(record["dropout"]), tuple(record["targets"]))

    def describe(self) -> str:
        return (f"LoRA rank {self.rank}, alpha {self.alpha:g}, dropout {self.dropout:g} on "
                f"{', '.join(self.targets)}")


def parse_targets(text: str) -> tuple[str, ...]:
    """--lora-targets "qkv_proj,o_proj" -> ("qkv_proj", "o_proj")."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def settings_problems(rank, alpha, dropout, targets: str) -> list[str]:
    """What is wrong with the --lora-* flags, as phrases for train_config.validate (empty: usable)."""
    if not (is_int(rank) and 0 <= rank <= MAX_RANK):
        return [f"--lora-rank must be a whole number from 0 (no LoRA) to {MAX_RANK} (got {rank})"]
    if rank == 0:
        return []
    problems = []
    if not (is_number(alpha) and alpha > 0):
        problems.append(f"--lora-alpha must be a positive number (got {alpha})")
    if not (is_number(dropout) and 0 <= dropout < 1):
        problems.append(f"--lora-dropout must be at least 0 and below 1 (got {dropout})")
    names = parse_targets(targets) if isinstance(targets, str) else ()
    unknown = [name for name in names if name not in BLOCK_PROJECTIONS]
    if not names or unknown:
        problems.append(f"--lora-targets must name one or more of {','.join(BLOCK_PROJECTIONS)}, separated by "
                        f"commas (got {targets!r})")
    return problems


# ------------------------------------------------------------------ adapters on a native model


def peft_wrapped(model: torch.nn.Module, settings: LoraSettings, target_names=None, seed: int = 0):
    """peft's wrapper around `model`, whose targeted layers it replaces in place by LoRA layers; every other
    weight is frozen. The adapters' initial values (A random, B zero: the update starts at 0) depend on
    `seed` alone, and the caller's random generators are left as they were."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(target_names or settings.targets), bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, config, adapter_name=ADAPTER_NAME)


def add_adapters(model: SmoLM135_Model, settings: LoraSettings, seed: int) -> None:
    """Give `model` trainable adapters on the targeted projections and freeze everything else."""
    peft_wrapped(model, settings, seed=seed)


def has_adapters(model: torch.nn.Module) -> bool:
    return any(_is_adapter_name(name) for name, _ in model.named_parameters())


def _is_adapter_name(name: str) -> bool:
    return ".lora_" in name


def _saved_name(name: str) -> str:
    """A state-dict name of a model with adapters as a checkpoint stores it: the base's plain native name
    (`...qkv_proj.base_layer.weight` -> `...qkv_proj.weight`), an adapter's without the adapter's name."""
    return name.replace(".base_layer.", ".").replace(f".{ADAPTER_NAME}.", ".")


def split_state_dict(model: torch.nn.Module) -> tuple[dict, dict]:
    """The model's base weights under their plain native names, and its adapters (empty without any)."""
    base, adapters = {}, {}
    for name, tensor in model.state_dict().items():
        (adapters if _is_adapter_name(name) else base)[_saved_name(name)] = tensor
    return base, adapters


def load_split_state_dict(model: torch.nn.Module, base: dict, adapters: dict) -> None:
    """The inverse of `split_state_dict`: every weight of the model with adapters, strictly (RuntimeError
    naming what is missing, left over or of another shape)."""
    saved = {**base, **adapters}
    own = model.state_dict()
    missing = [name for name in own if _saved_name(name) not in saved]
    unexpected = sorted(set(saved) - {_saved_name(name) for name in own})
    if missing or unexpected:
        raise RuntimeError(f"weights missing: {missing[:3]}, unexpected: {unexpected[:3]}")
    model.load_state_dict({name: saved[_saved_name(name)] for name in own})


# ------------------------------------------------------------------ the adapters in a checkpoint


def adapter_record(settings: LoraSettings, adapters: dict) -> dict:
    """The checkpoint's `lora` entry: the settings and the adapters' tensors (plain data, weights_only)."""
    return {"settings": settings.to_record(), "state_dict": adapters}


def is_adapter_record(value) -> bool:
    """Whether a loaded checkpoint's `lora` entry is one that `adapter_record` writes, with tensors of the
    rank it states (checked before any layer is built from it)."""
    if not isinstance(value, dict) or set(value) != {"settings", "state_dict"}:
        return False
    settings, tensors = value["settings"], value["state_dict"]
    if not (isinstance(settings, dict) and set(settings) == {"rank", "alpha", "dropout", "targets"}
            and isinstance(settings["targets"], list) and all(isinstance(t, str) for t in settings["targets"])
            and not settings_problems(settings["rank"], settings["alpha"], settings["dropout"],
                                      ",".join(settings["targets"])) and settings["rank"] > 0):
        return False
    return (isinstance(tensors, dict) and bool(tensors)
            and all(isinstance(name, str) and isinstance(t, torch.Tensor) and t.dim() == 2 for name, t in
                    tensors.items())
            and all(t.shape[0] == settings["rank"] for name, t in tensors.items() if ".lora_A." in name)
            and all(t.shape[1] == settings["rank"] for name, t in tensors.items() if ".lora_B." in name))


def mismatch(settings: LoraSettings | None, record: dict | None) -> str | None:
    """A sentence on how a run's adapters differ from a checkpoint's; None when they are the same."""
    saved = LoraSettings.from_record(record["settings"]) if record is not None else None
    if saved == settings:
        return None
    return f"the checkpoint trained with {_training(saved)}, this run asks for {_training(settings)}"


def _training(settings: LoraSettings | None) -> str:
    return settings.describe() if settings else "no LoRA (every weight trained)"


def load_weights(model: SmoLM135_Model, base: dict, record: dict | None) -> None:
    """A checkpoint's base weights and adapters (`record`, None without) into a native model. A model with
    adapters (a LoRA run's) takes both as they are, or keeps its own adapters where the checkpoint has none
    (a LoRA run starting on a checkpoint's weights); a plain model takes the adapters merged."""
    if has_adapters(model):
        load_split_state_dict(model, base, record["state_dict"] if record is not None else split_state_dict(model)[1])
    else:
        model.load_state_dict(base)
        if record is not None:
            merge_adapters(model, record)


def merge_adapters(model: SmoLM135_Model, record: dict) -> None:
    """Merge a checkpoint's adapters into `model`, which holds its base weights: the model becomes a plain
    one whose projections hold W + (alpha / rank) * B @ A (peft's merge)."""
    settings = LoraSettings.from_record(record["settings"])
    peft_model = peft_wrapped(model, settings)
    base, _ = split_state_dict(model)
    load_split_state_dict(model, base, record["state_dict"])
    peft_model.merge_and_unload()
    model.eval()


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

