"""Toy 2-D datasets for density estimation, in torch, seeded by a ``torch.Generator``.

Recipes follow torchdiffeq's ``examples/cnf.py`` (two circles) and FFJORD's
``lib/toy_data.py`` (Grathwohl et al. 2019) for the rest, rewritten in torch so that the
core does not depend on scikit-learn or numpy; ``circles`` and the moons inside ``moons``
reproduce ``sklearn.datasets.make_circles`` / ``make_moons`` (evenly spaced angles,
shuffled, then Gaussian noise; checked against scikit-learn in the tests). Every sampler
draws only from the given generator (or torch's global one), so a seeded generator gives
the same points on every run.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._checks import check_float_dtype, check_generator, check_real

Sampler = Callable[[int, "torch.Generator | None"], torch.Tensor]


def _randn(n: int, generator: torch.Generator | None, cols: int = 2) -> torch.Tensor:
    return torch.randn(n, cols, generator=generator, dtype=torch.float64)


def _rand(n: int, generator: torch.Generator | None, cols: int = 1) -> torch.Tensor:
    return torch.rand(n, cols, generator=generator, dtype=torch.float64)


def _shuffle(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return x[torch.randperm(x.shape[0], generator=generator)]


def _arc(start: float, stop: float, n: int, *, endpoint: bool) -> torch.Tensor:
    """``numpy.linspace(start, stop, n, endpoint)`` in float64."""
    if endpoint:
        return torch.linspace(start, stop, n, dtype=torch.float64)
    return start + (stop - start) * torch.arange(n, dtype=torch.float64) / max(n, 1)


def _unit_circle(angles: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def _check_count(n: object, generator: object) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer number of points, got {n!r}")
    check_generator(generator)


def make_circles(
    n: int, generator: torch.Generator | None = None, *, noise: float = 0.06, factor: float = 0.5
) -> torch.Tensor:
    """Two concentric circles (radii 1 and ``factor``) as ``sklearn``'s ``make_circles``.

    The defaults are torchdiffeq ``cnf.py``'s (noise 0.06, factor 0.5).

    Raises:
        ValueError: If ``n < 1``, ``noise < 0`` or ``factor`` is outside ``[0, 1)``
            (as in scikit-learn), or a value is not finite.
        TypeError: If an argument has the wrong type.
    """
    _check_count(n, generator)
    check_real("noise", noise, 0)
    check_real("factor", factor, 0, high=1)
    n_out = n // 2
    outer = _unit_circle(_arc(0, 2 * math.pi, n_out, endpoint=False))
    inner = factor * _unit_circle(_arc(0, 2 * math.pi, n - n_out, endpoint=False))
    x = _shuffle(torch.cat([outer, inner]), generator)
    return x + noise * _randn(n, generator)


def make_moons(
    n: int, generator: torch.Generator | None = None, *, noise: float = 0.1
) -> torch.Tensor:
    """Two interleaved half circles as ``sklearn``'s ``make_moons`` (no rescaling).

    Raises:
        ValueError: If ``n < 1`` or ``noise`` is negative or not finite.
        TypeError: If an argument has the wrong type.
    """
    _check_count(n, generator)
    check_real("noise", noise, 0)
    n_out = n // 2
    outer = _unit_circle(_arc(0, math.pi, n_out, endpoint=True))
    inner = 1 - _unit_circle(_arc(0, math.pi, n - n_out, endpoint=True))
    inner[:, 1] -= 0.5
    x = _shuffle(torch.cat([outer, inner]), generator)
    return x + noise * _randn(n, generator)


def _moons(n: int, generator: torch.Generator | None) -> torch.Tensor:
    # FFJORD: make_moons(noise=0.1) * 2 + [-1, -0.2].
    shift = torch.tensor([-1.0, -0.2], dtype=torch.float64)
    return make_moons(n, generator, noise=0.1) * 2 + shift


def _eight_gaussians(n: int, generator: torch.Generator | None) -> torch.Tensor:
    s = 1 / math.sqrt(2)
    unit = [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
    centers = 4.0 * torch.tensor(unit, dtype=torch.float64)
    which = torch.randint(0, 8, (n,), generator=generator)
    # FFJORD divides by 1.414 (not sqrt 2): kept, so the data match its figures.
    return (0.5 * _randn(n, generator) + centers[which]) / 1.414


def _pinwheel(n: int, generator: torch.Generator | None) -> torch.Tensor:
    arms, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    features = _randn(n, generator) * torch.tensor([radial_std, tangential_std])
    features[:, 0] += 1.0
    labels = torch.arange(n) % arms
    angles = 2 * math.pi * labels / arms + rate * torch.exp(features[:, 0])
    cos, sin = torch.cos(angles), torch.sin(angles)
    # Row vector times the rotation [[cos, -sin], [sin, cos]] (FFJORD's einsum).
    x = torch.stack(
        [features[:, 0] * cos + features[:, 1] * sin, -features[:, 0] * sin + features[:, 1] * cos],
        dim=1,
    )
    return 2 * _shuffle(x, generator)


def _rings(n: int, generator: torch.Generator | None) -> torch.Tensor:
    quarter = n // 4
    counts = [quarter, quarter, quarter, n - 3 * quarter]
    radii = [1.0, 0.75, 0.5, 0.25]
    parts = [
        r * _unit_circle(_arc(0, 2 * math.pi, c, endpoint=False))
        for r, c in zip(radii, counts, strict=True)
    ]
    x = _shuffle(3.0 * torch.cat(parts), generator)
    return x + 0.08 * _randn(n, generator)


def _checkerboard(n: int, generator: torch.Generator | None) -> torch.Tensor:
    x1 = _rand(n, generator)[:, 0] * 4 - 2
    row = torch.randint(0, 2, (n,), generator=generator).to(torch.float64)
    x2 = _rand(n, generator)[:, 0] - 2 * row + torch.floor(x1) % 2
    return 2 * torch.stack([x1, x2], dim=1)


def _two_spirals(n: int, generator: torch.Generator | None) -> torch.Tensor:
    half = n - n // 2
    turn = torch.sqrt(_rand(half, generator)) * 540 * (2 * math.pi) / 360
    arm = torch.cat([-torch.cos(turn) * turn, torch.sin(turn) * turn], dim=1)
    arm = arm + 0.5 * _rand(half, generator, cols=2)
    x = torch.cat([arm, -arm])[:n] / 3
    return _shuffle(x + 0.1 * _randn(n, generator), generator)


TOY_DATASETS: dict[str, Sampler] = {
    "circles": make_circles,
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "pinwheel": _pinwheel,
    "rings": _rings,
    "checkerboard": _checkerboard,
    "2spirals": _two_spirals,
}


def sample_toy(
    name: str,
    n: int,
    generator: torch.Generator | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` points of the toy dataset ``name``, shape ``(n, 2)``.

    Args:
        name: One of :data:`TOY_DATASETS`: ``circles`` (torchdiffeq's two circles),
            ``moons`` (FFJORD's two moons, scaled ×2 and shifted), ``8gaussians``,
            ``pinwheel``, ``rings``, ``checkerboard``, ``2spirals``.
        n: Number of points.
        generator: Source of randomness (torch's global generator if ``None``).
        dtype: Floating dtype of the result (sampled in float64, then cast).
    """
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy dataset {name!r}; choose one of {sorted(TOY_DATASETS)}")
    _check_count(n, generator)
    check_float_dtype(dtype)
    return TOY_DATASETS[name](n, generator).to(dtype)
