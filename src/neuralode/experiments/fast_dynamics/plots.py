"""P6's figure: NFE per training step over the epochs, one line per regulariser."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._run.plots import epoch_axis, pyplot, save


def plot_nfe_over_training(
    groups: Mapping[str, Mapping[str, Mapping[str, Any]]], labels: Mapping[str, str], path: Path
) -> Path:
    """One panel per group (model or dataset): NFE-F (solid) and NFE-B (dashed) per step.

    ``groups`` maps a panel title to ``{variant: summary}``; returns ``path``.
    """
    plt = pyplot()
    shown = {title: runs for title, runs in groups.items() if runs}
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 3.8), squeeze=False)
    for ax, (title, runs) in zip(axes[0], shown.items(), strict=True):
        for i, (variant, summary) in enumerate(runs.items()):
            epochs = [row["epoch"] for row in summary["history"]]
            color = f"C{i}"
            ax.plot(epochs, [row["nfe_forward"] for row in summary["history"]], marker="o",
                    color=color, label=labels.get(variant, variant))  # fmt: skip
            if any(row["nfe_backward"] for row in summary["history"]):
                ax.plot(epochs, [row["nfe_backward"] for row in summary["history"]], ls="--",
                        color=color)  # fmt: skip
        epoch_axis(ax)
        ax.set(ylabel="NFE per training step (dashed: backward)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(fig, path.parent, path.name)
    return path
