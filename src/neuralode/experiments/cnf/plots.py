"""Figures of ``train cnf``: the fit beside its target or data, and the flow part-way (Fig. 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...data import sample_toy
from ...data.densities import PLOT_BOUNDS, Bounds, EnergyTarget
from ...nn import CNF, PlanarFlow, density_grid, flow_snapshots
from .._run.plots import pyplot, save

# Fixed seeds: a figure drawn again from the same weights is the same figure.
PLOT_SEED = 577_215
SAMPLES = 20_000
# Grid cells per axis of the fit's density and of each snapshot; snapshot samples.
GRID, SNAPSHOT_GRID, SNAPSHOT_SAMPLES = 100, 60, 2_000


def bounds_for(target: EnergyTarget | None, dataset: str) -> Bounds:
    """The plotted square: the targets' usual [−4, 4]², or one that frames the data."""
    if target is not None:
        return PLOT_BOUNDS
    data = sample_toy(dataset, SAMPLES, torch.Generator().manual_seed(PLOT_SEED))
    half = 1.15 * float(data.abs().quantile(0.999))
    return ((-half, half), (-half, half))


def _image(ax: Any, xs: torch.Tensor, ys: torch.Tensor, values: torch.Tensor, title: str) -> None:
    ax.pcolormesh(xs.numpy(), ys.numpy(), values.numpy(), shading="auto", cmap="viridis")
    _frame(ax, title)


def _histogram(ax: Any, points: torch.Tensor, bounds: Bounds, title: str) -> None:
    ax.hist2d(points[:, 0].numpy(), points[:, 1].numpy(), bins=100, range=list(bounds),
              cmap="viridis")  # fmt: skip
    _frame(ax, title)


def _frame(ax: Any, title: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_fit(
    flow: CNF | PlanarFlow, target: EnergyTarget | None, dataset: str, folder: Path, name: str
) -> str:
    """Target density (or data) | learned density | model samples; returns the file name."""
    plt = pyplot()
    bounds = bounds_for(target, dataset)
    gen = torch.Generator().manual_seed(PLOT_SEED)
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
    if target is not None:
        xs, ys, log_p = density_grid(target.log_prob, bounds, GRID)
        _image(axes[0], xs, ys, log_p.exp(), f"target {target.name.upper()}")
    else:
        data = sample_toy(dataset, SAMPLES, torch.Generator().manual_seed(PLOT_SEED + 1))
        _histogram(axes[0], data, bounds, f"data: {dataset} ({SAMPLES:,} fresh points)")
    xs, ys, log_q = density_grid(flow.log_prob, bounds, GRID)
    _image(axes[1], xs, ys, log_q.exp(), f"learned density, {name}")
    _histogram(axes[2], flow.sample(SAMPLES, gen), bounds, f"samples ({SAMPLES:,})")
    return save(fig, folder, "fit.png")


def plot_flow(
    flow: CNF | PlanarFlow, target: EnergyTarget | None, dataset: str, folder: Path, name: str
) -> str:
    """Samples and density at 5/20/40/60/80/100% of the flow (of the layers, for an NF)."""
    plt = pyplot()
    bounds = bounds_for(target, dataset)
    gen = torch.Generator().manual_seed(PLOT_SEED)
    snaps = flow_snapshots(flow, n_samples=SNAPSHOT_SAMPLES, bounds=bounds,
                           resolution=SNAPSHOT_GRID, generator=gen)  # fmt: skip
    columns = len(snaps.fractions)
    fig, axes = plt.subplots(2, columns, figsize=(2.2 * columns, 4.6), squeeze=False)
    for i, fraction in enumerate(snaps.fractions):
        if isinstance(flow, CNF):
            label = f"t = {flow.time(fraction):.3g} ({100 * fraction:.0f}%)"
        else:
            label = f"{round(fraction * len(flow.layers))} layers ({100 * fraction:.0f}%)"
        points = snaps.samples[i]
        axes[0, i].scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=1, alpha=0.5)
        axes[0, i].set_xlim(*bounds[0])
        axes[0, i].set_ylim(*bounds[1])
        _frame(axes[0, i], f"samples, {label}")
        _image(axes[1, i], snaps.xs, snaps.ys, snaps.log_density[i].exp(), f"density, {label}")
    fig.suptitle(f"{name}: base → data", fontsize=10)
    return save(fig, folder, "flow.png")
