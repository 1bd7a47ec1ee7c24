"""Figures drawn from a run's history (matplotlib, the ``cli`` extra; Agg, no display)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .extras import require
from .files import atomic_write_bytes


def pyplot() -> Any:
    """The ``matplotlib.pyplot`` module, on the file-only Agg backend."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    return require("matplotlib.pyplot")


def epoch_axis(ax: Any) -> None:
    """Label the x axis ``epoch`` with whole-number ticks only."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(require("matplotlib.ticker").MaxNLocator(integer=True))


def save(fig: Any, folder: Path, name: str) -> str:
    """Save ``fig`` as ``folder/name`` (PNG, 120 dpi), close it, and return ``name``."""
    buffer = io.BytesIO()
    fig.tight_layout()
    # bbox "tight" as well: square (equal-aspect) panels shrink after tight_layout, which
    # pushed their titles out of the canvas.
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight", pad_inches=0.1)
    pyplot().close(fig)
    # Like every file of a run folder: atomically, with a clear error on a full disk.
    atomic_write_bytes(folder / name, buffer.getvalue())
    return name


def plot_history(history: Sequence[Mapping[str, Any]], folder: Path) -> list[str]:
    """Learning curves (every train_/val_ metric) and NFE per epoch; returns file names."""
    if not history:
        return []
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    metrics = sorted({k.split("_", 1)[1] for k in history[0] if k.startswith(("train_", "val_"))})
    metrics = [m for m in metrics if m != "seconds"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for split in ("train", "val"):
            key = f"{split}_{metric}"
            if key in history[0]:
                ax.plot(epochs, [row[key] for row in history], marker="o", label=split)
        epoch_axis(ax)
        ax.set_title(metric.replace("_", " "))
        ax.grid(alpha=0.3)
        ax.legend()
    names = [save(fig, folder, "learning_curves.png")]

    if any(row.get("nfe_forward", 0) for row in history):
        fig, ax = plt.subplots(figsize=(5, 3.4))
        ax.plot(epochs, [row["nfe_forward"] for row in history], marker="o", label="forward")
        if any(row.get("nfe_backward", 0) for row in history):
            ax.plot(epochs, [row["nfe_backward"] for row in history], marker="s", label="backward")
        epoch_axis(ax)
        ax.set_ylabel("function evaluations per step")
        ax.set_title("NFE per training step (Figure 3d)")
        ax.grid(alpha=0.3)
        ax.legend()
        names.append(save(fig, folder, "nfe_per_epoch.png"))
    return names
