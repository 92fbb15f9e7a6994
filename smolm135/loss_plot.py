"""The loss curves of a run as a PNG: drawn beside the run's log and into an exported model's card."""
from __future__ import annotations

from pathlib import Path


def plot_losses(history: dict, path: Path, title: str, bits_per_byte=None) -> Path:
    """PNG of training and validation loss against the step; with `bits_per_byte` (loss -> bits per byte of
    the validation text, a proportion) a second axis on the right reads the same curves in bits per byte."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    if history["train"]:
        steps, losses = zip(*history["train"])
        ax.plot(steps, losses, label="train", linewidth=1, alpha=0.8)
    if history["val"]:
        steps, losses = zip(*history["val"])
        ax.plot(steps, losses, label="validation", marker="o", markersize=3, linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    if bits_per_byte is not None:
        per_nat = bits_per_byte(1.0)  # bits per byte of one nat per token
        ax.secondary_yaxis("right", functions=(lambda loss: loss * per_nat, lambda bpb: bpb / per_nat)) \
            .set_ylabel("validation bits per byte")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
