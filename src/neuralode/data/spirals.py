"""The noisy 2-D spirals of the paper's latent-ODE experiment (Chen et al. 2018, §5.1).

The generator follows torchdiffeq's ``examples/latent_ode.py`` as it actually runs: its
``__main__`` sets ``ntotal = 1000`` but never passes it on, so the grid is the function's
default of 500 points on ``[0, 6π]``; spiral parameters ``a = 0, b = 0.3``. Clockwise:
``θ = 6π + 1 − t``, ``r = b·50/θ``, centre ``(−5, 0)``; counter-clockwise: ``θ = t``,
``r = b·θ``, centre ``(5, 0)``. Each spiral picks a direction with probability ½ and a
window of consecutive grid points; its times are measured from the window's start, as in
torchdiffeq (the dynamics are time-invariant).

Protocol P4 (docs/protocols.md) extends torchdiffeq's window from 100 to 200
points: the first 100 are the observation window, of which ``n_observed`` are drawn
without replacement (different points for every spiral), and the next 100 are the
extrapolation targets, kept both noisy and noise-free.
"""

from __future__ import annotations

import math

import torch

from ._checks import check_float_dtype, check_int, check_real, check_seed
from .irregular import IrregularSeries

__all__ = ["make_spirals", "spiral_curves"]


def spiral_curves(grid: torch.Tensor, b: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """The clockwise and counter-clockwise curves on a time grid ending at ``grid[-1]``.

    Args:
        grid: ``(T,)`` times from 0 to the end of the curve (``6π`` in the paper).
        b: Growth rate of the Archimedean spiral ``r = a + b·θ`` (``a = 0``).

    Returns:
        ``(clockwise, counter_clockwise)``, each ``(T, 2)``.
    """
    # torchdiffeq's "+ 1" keeps θ away from 0, where the clockwise radius 50·b/θ diverges.
    theta_cw = grid[-1] + 1.0 - grid
    r_cw = b * 50.0 / theta_cw
    cw = torch.stack([r_cw * torch.cos(theta_cw) - 5.0, r_cw * torch.sin(theta_cw)], dim=-1)
    r_ccw = b * grid
    ccw = torch.stack([r_ccw * torch.cos(grid) + 5.0, r_ccw * torch.sin(grid)], dim=-1)
    return cw, ccw


def make_spirals(
    n_spirals: int = 1000,
    n_observed: int = 100,
    noise_std: float = 0.3,
    *,
    seed: int,
    grid_points: int = 500,
    t_end: float = 6 * math.pi,
    window: int = 100,
    horizon: int = 100,
    dtype: torch.dtype = torch.float32,
) -> IrregularSeries:
    """Noisy spirals, each observed at ``n_observed`` random times of its first ``window``.

    Args:
        n_spirals: Number of spirals ``S``.
        n_observed: Observed points per spiral, drawn without replacement from the
            ``window`` points of its observation window and sorted (30, 50 or 100 in
            Table 2).
        noise_std: Standard deviation of the Gaussian noise on every value (the paper does
            not state it; torchdiffeq runs 0.3).
        seed: Seeds every random choice (a private ``torch.Generator``).
        grid_points: Points of the time grid on ``[0, t_end]`` (500 in torchdiffeq).
        t_end: End of the grid, also the end angle of the counter-clockwise spiral.
        window: Consecutive grid points in the observation window.
        horizon: Consecutive grid points after the window, all of them targets.
        dtype: Floating dtype of the result (generated in float64).

    Returns:
        An :class:`IrregularSeries` with ``(S, n_observed)`` observations and
        ``(S, horizon)`` targets (noisy ``target_values`` and noise-free
        ``target_clean``), no padding.

    Raises:
        TypeError: An argument has the wrong type (the message names it).
        ValueError: A count or size is out of range (e.g. ``n_observed > window``),
            ``noise_std`` is negative or ``t_end`` not positive, or either is not finite.
    """
    check_int("n_spirals", n_spirals, 1)
    check_int("window", window, 1)
    check_int("n_observed", n_observed, 1, window)
    check_int("horizon", horizon, 1)
    # torchdiffeq starts windows no earlier than one window length into the grid ("don't
    # sample t0 very near the start": the counter-clockwise radius is ~0 there).
    check_int("grid_points", grid_points, 2 * window + horizon)
    check_real("noise_std", noise_std, 0)
    check_real("t_end", t_end, 0, strict=True)
    check_float_dtype(dtype)
    gen = torch.Generator().manual_seed(check_seed(seed))
    grid = torch.linspace(0.0, t_end, grid_points, dtype=torch.float64)
    cw, ccw = spiral_curves(grid)
    length = window + horizon
    starts = torch.randint(window, grid_points - length + 1, (n_spirals,), generator=gen)
    clockwise = torch.rand(n_spirals, generator=gen) < 0.5
    index = starts[:, None] + torch.arange(length)  # (S, window + horizon)
    clean = torch.where(clockwise[:, None, None], cw[index], ccw[index])
    noisy = clean + noise_std * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    # n_observed distinct positions per spiral: the first n of a random permutation.
    keys = torch.rand(n_spirals, window, generator=gen)
    observed = keys.argsort(dim=1)[:, :n_observed].sort(dim=1).values  # (S, n_observed)
    times = (grid[:length] - grid[0]).expand(n_spirals, -1)
    rows = torch.arange(n_spirals)[:, None]
    return IrregularSeries(
        times=times[rows, observed].to(dtype),
        values=noisy[rows, observed].to(dtype),
        mask=torch.ones(n_spirals, n_observed, dtype=torch.bool),
        target_times=times[:, window:].to(dtype).contiguous(),
        target_values=noisy[:, window:].to(dtype),
        target_mask=torch.ones(n_spirals, horizon, dtype=torch.bool),
        target_clean=clean[:, window:].to(dtype),
    )
