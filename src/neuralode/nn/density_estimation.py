"""Losses, evaluation and plot-ready arrays for flows (:class:`CNF`, :class:`PlanarFlow`).

The two tasks of Chen et al. (2018, §4):

- density matching: fit ``q`` to a target ``p = exp(−U)/Z`` known up to ``Z`` by the
  reverse KL, ``KL(q‖p) = E_q[log q(x) + U(x)] + log Z`` (Rezende & Mohamed 2015, §6.1);
  ``log Z`` is a constant, so the training loss drops it and the evaluation adds the
  quadrature value back: the reported KL is exact up to Monte Carlo error.
- maximum likelihood on samples: ``−E_data[log q(x)]``.

Each loss returns ``(scalar loss, {name: float})``. Solver counters are not in the loss
metrics because the backward count exists only after ``backward()``: read them with
:func:`solver_metrics` then. Nothing here plots; the helpers return tensors to hand to a
plotting library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch

from ..data.densities import PLOT_BOUNDS, Bounds, EnergyTarget
from ..data.toy import sample_toy

#: Fractions of the flow time at which Chen et al. (2018, Fig. 5) show samples/densities.
FLOW_FRACTIONS = (0.05, 0.2, 0.4, 0.6, 0.8, 1.0)

Metrics = dict[str, float]


class DensityModel(Protocol):
    """What the losses and helpers need from a flow (``CNF`` and ``PlanarFlow`` have it)."""

    def log_prob(self, x: torch.Tensor, *, fraction: float = 1.0) -> torch.Tensor:
        """Log-density of each row of ``x``, ``(B,)``."""
        ...

    def sample_and_log_prob(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``(n, D)`` and their log-densities ``(n,)``."""
        ...

    def sample_trajectory(
        self, n: int, fractions: Sequence[float], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The same base samples at each fraction of the flow, ``(F, n, D)``."""
        ...


def _mean_and_stderr(values: torch.Tensor, name: str) -> Metrics:
    n = values.numel()
    std = float(values.std()) if n > 1 else math.nan
    return {name: float(values.mean()), f"{name}_stderr": std / math.sqrt(n)}


def _check_finite(loss: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(loss)):
        raise FloatingPointError(
            f"the {what} is not finite ({loss.item()}): the flow produced NaN/inf log-densities; "
            "lower the learning rate or tighten the solver tolerance"
        )


def reverse_kl_loss(
    model: DensityModel, target: EnergyTarget, n: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, Metrics]:
    """``E_q[log q(x) + U(x)]`` on ``n`` fresh model samples, and metrics.

    Returns:
        The loss (``KL(q‖p) − log Z``, differentiable) and floats: ``loss``, ``kl`` (the
        loss plus the quadrature ``log Z``: this batch's estimate of the true KL),
        ``energy`` (``E_q U``) and ``entropy`` (``−E_q log q``).
    """
    x, log_q = model.sample_and_log_prob(n, generator)
    energy = target.energy(x)
    loss = (log_q + energy).mean()
    _check_finite(loss, "reverse-KL loss")
    value = loss.item()
    return loss, {
        "loss": value,
        "kl": value + target.log_z,
        "energy": energy.mean().item(),
        "entropy": -log_q.mean().item(),
    }


def nll_loss(model: DensityModel, x: torch.Tensor) -> tuple[torch.Tensor, Metrics]:
    """The maximum-likelihood loss ``−mean log q(x)`` on a batch ``x`` ``(B, D)``.

    Returns:
        The loss (differentiable) and floats: ``loss`` and ``nll`` (the same number, in
        nats per sample).
    """
    loss = -model.log_prob(x).mean()
    _check_finite(loss, "negative log-likelihood")
    value = loss.item()
    return loss, {"loss": value, "nll": value}


def solver_metrics(model: object) -> Metrics:
    """``nfe_forward`` and ``nfe_backward`` of the model's last solve (``{}`` for an NF).

    Call after ``backward()``: ``nfe_backward`` is filled in by the gradient methods that
    solve backwards (``BacksolveAdjoint``, ``CheckpointAdjoint``); it stays 0 for
    ``DirectAdjoint``, whose backward pass replays no vector field.
    """
    stats = getattr(model, "stats", None)
    if stats is None:
        return {}
    return {"nfe_forward": float(stats.nfe), "nfe_backward": float(stats.nfe_backward)}


def _batches(n: int, batch_size: int) -> list[int]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (a standard error needs two), got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return [min(batch_size, n - i) for i in range(0, n, batch_size)]


def evaluate_kl(
    model: DensityModel,
    target: EnergyTarget,
    n: int = 10_000,
    generator: torch.Generator | None = None,
    *,
    batch_size: int = 2_000,
) -> Metrics:
    """Monte Carlo ``KL(q‖p)`` with the quadrature ``log Z``, on ``n`` model samples.

    The model's ``log q`` is used as it is configured: give a CNF the exact trace for
    evaluation (a Hutchinson trace keeps the estimate unbiased but adds variance).

    Returns:
        ``kl`` and ``kl_stderr`` (the Monte Carlo standard error), plus ``log_z`` and
        ``log_z_error`` (the quadrature's error estimate, far below the Monte Carlo one),
        and ``nfe_forward``: the solves' forward evaluations per batch (0 for an NF).
    """
    parts, nfe = [], 0.0
    batches = _batches(n, batch_size)
    with torch.no_grad():
        for size in batches:
            x, log_q = model.sample_and_log_prob(size, generator)
            parts.append((log_q + target.energy(x)).double())
            nfe += solver_metrics(model).get("nfe_forward", 0.0)
    normalizer = target.normalizer
    out = _mean_and_stderr(torch.cat(parts) + normalizer.log_z, "kl")
    return {**out, "log_z": normalizer.log_z, "log_z_error": normalizer.error,
            "nfe_forward": nfe / len(batches)}  # fmt: skip


def evaluate_nll(
    model: DensityModel,
    dataset: str,
    n: int = 10_000,
    generator: torch.Generator | None = None,
    *,
    batch_size: int = 2_000,
    dtype: torch.dtype = torch.float32,
) -> Metrics:
    """Test NLL (nats per sample) on ``n`` fresh points of the toy ``dataset``.

    Use a generator seeded differently from training's so the points are unseen;
    ``dtype`` is the model's. As for :func:`evaluate_kl`, evaluate a CNF with the exact
    trace.

    Returns:
        ``nll`` and ``nll_stderr`` (the standard error over the test points), and
        ``nfe_forward``: the solves' forward evaluations per batch (0 for an NF).
    """
    parts, nfe = [], 0.0
    batches = _batches(n, batch_size)
    with torch.no_grad():
        for size in batches:
            x = sample_toy(dataset, size, generator, dtype=dtype)
            parts.append(-model.log_prob(x).double())
            nfe += solver_metrics(model).get("nfe_forward", 0.0)
    return {**_mean_and_stderr(torch.cat(parts), "nll"), "nfe_forward": nfe / len(batches)}


def density_grid(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    bounds: Bounds = PLOT_BOUNDS,
    resolution: int = 100,
    *,
    batch_size: int = 5_000,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``log_prob`` on a ``resolution × resolution`` grid of cell centres, for contour plots.

    Args:
        log_prob: ``(B, 2) -> (B,)``, e.g. ``model.log_prob``, ``lambda x:
            model.log_prob(x, fraction=0.4)`` or a target's ``log_prob``.
        bounds: ``((x_min, x_max), (y_min, y_max))``.
        resolution: Cells per axis.
        batch_size: Points per call of ``log_prob``.
        dtype: Dtype of the grid points handed to ``log_prob``.
        device: Device of the grid points (a model's on a GPU).

    Returns:
        ``(xs, ys, log_density)``: the axis centres ``(R,)``, ``(R,)`` and the log-density
        ``(R, R)`` indexed ``[y, x]`` (matplotlib's ``pcolormesh(xs, ys, ...)`` layout).
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    axes = []
    for lo, hi in bounds:
        h = (hi - lo) / resolution
        axes.append(lo + h * (torch.arange(resolution, dtype=dtype, device=device) + 0.5))
    xs, ys = axes
    points = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)
    with torch.no_grad():
        values = torch.cat([log_prob(chunk) for chunk in torch.split(points, batch_size)])
    return xs, ys, values.reshape(resolution, resolution)


@dataclass(frozen=True)
class FlowSnapshots:
    """Samples and densities part-way through a flow (Chen et al. 2018, Fig. 5).

    Attributes:
        fractions: Fractions of the flow time (or of the layers, for a planar flow).
        samples: The same base samples pushed to each fraction, ``(F, n, 2)``.
        xs: Grid axis centres ``(R,)``.
        ys: Grid axis centres ``(R,)``.
        log_density: The model's log-density at each fraction on the grid, ``(F, R, R)``.
    """

    fractions: tuple[float, ...]
    samples: torch.Tensor
    xs: torch.Tensor
    ys: torch.Tensor
    log_density: torch.Tensor


def flow_snapshots(
    model: DensityModel,
    *,
    n_samples: int = 2_000,
    bounds: Bounds = PLOT_BOUNDS,
    resolution: int = 100,
    fractions: Sequence[float] = FLOW_FRACTIONS,
    generator: torch.Generator | None = None,
) -> FlowSnapshots:
    """Samples and grid densities of a 2-D flow at each of ``fractions``."""
    with torch.no_grad():
        samples = model.sample_trajectory(n_samples, fractions, generator)
    grids = [
        density_grid(
            partial(model.log_prob, fraction=f),
            bounds,
            resolution,
            dtype=samples.dtype,
            device=samples.device,
        )  # fmt: skip
        for f in fractions
    ]
    xs, ys, _ = grids[0]
    return FlowSnapshots(
        fractions=tuple(float(f) for f in fractions),
        samples=samples,
        xs=xs,
        ys=ys,
        log_density=torch.stack([g[2] for g in grids]),
    )
