"""Initial step-size selection: the one copy used by every adaptive controller."""

from __future__ import annotations

import torch

from .._norms import Norm
from ..solvers._explicit_rk import FlatField


def select_initial_step(
    f: FlatField,
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    *,
    direction: float,
    error_order: int,
    rtol: torch.Tensor | float,
    atol: torch.Tensor | float,
    norm: Norm,
) -> float:
    """Hairer's starting step (Hairer, Nørsett & Wanner I, §II.4, algorithm on p. 169).

    Costs one evaluation of ``f``. Chooses ``dt`` so that an explicit Euler step would have
    a local error of about 1% of the tolerance, then corrects with a second-derivative
    estimate, exponent ``1 / (error_order + 1)`` as in Hairer's DOPRI5 and scipy.
    Returns a positive step (the caller applies the direction).
    """
    with torch.no_grad():
        scale = atol + torch.abs(y0) * rtol
        d0 = float(norm(y0 / scale))
        d1 = float(norm(f0 / scale))
        dt0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        y1 = torch.add(y0, f0, alpha=direction * dt0)
        f1 = f(t0 + direction * dt0, y1)
        d2 = float(norm((f1 - f0) / scale)) / dt0
    if not (d1 == d1 and d2 == d2):  # NaN: let the step loop report the non-finite field
        return dt0
    if max(d1, d2) <= 1e-15:
        dt1 = max(1e-6, dt0 * 1e-3)
    else:
        dt1 = (0.01 / max(d1, d2)) ** (1.0 / (error_order + 1))
    return min(100 * dt0, dt1)
