"""Interpolation inside one accepted step, written as weights on the stages.

Every solver's dense output is linear in its stages, ``y(t0 + θ dt) = y0 + dt Σ_i w_i(θ)
k_i`` (cubic Hermite adds ``f1`` as one more "stage"), and the solver says what the
weights are (:meth:`~neuralode.AbstractSolver.stage_weights` at float ``θ``,
:meth:`~neuralode.AbstractSolver.stage_polynomials` as coefficients). Here they are
applied: every output time inside a step costs one row of a single matrix product.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ..solvers._explicit_rk import AbstractSolver, as_dtype


def interpolate_step(
    solver: AbstractSolver,
    y0: torch.Tensor,
    k: Sequence[torch.Tensor],
    f1: torch.Tensor | None,
    dt: float,
    thetas: Sequence[float],
) -> torch.Tensor:
    """The solution at ``t0 + θ dt`` for each ``θ`` in ``thetas``: ``(len(thetas), *y0.shape)``."""
    stages = list(k)
    if solver.needs_f1:
        if f1 is None:
            raise ValueError("Hermite interpolation needs f(t1, y1)")
        stages.append(f1)
    weights = torch.tensor(solver.stage_weights(thetas), dtype=y0.dtype, device=y0.device)
    # (m, s) @ (s, N), scaled by dt, plus y0 broadcast over the m rows: one fused op.
    k_matrix = torch.stack(stages).reshape(len(stages), -1)
    out = torch.addmm(y0.reshape(1, -1), weights, k_matrix, alpha=dt)
    return out.reshape(len(thetas), *y0.shape)


def interpolate_stacked(
    solver: AbstractSolver,
    y0: torch.Tensor,
    stages: torch.Tensor,
    dt: torch.Tensor,
    thetas: torch.Tensor,
) -> torch.Tensor:
    """Row ``b`` at ``t0 + θ[b, m] dt[b]``: ``y0`` ``(B, 1, N)``, stages ``(B, s, N)``.

    ``dt`` is ``(B,)`` and ``thetas`` ``(B, M)``; returns ``(B, M, N)``. The weights are
    powers of θ times the solver's coefficient matrix, then one batched matrix product
    applies them to the stages.
    """
    coeffs = _polynomial_matrix(solver, y0.dtype, y0.device)  # (P, s)
    # θ^p for p = 0..P-1 times dt, then one product with the coefficients: (B, M, s).
    # (vander's running product costs a fifth of pow with a tensor of exponents.)
    powers = torch.linalg.vander(as_dtype(thetas, y0.dtype), N=coeffs.shape[0])
    powers = powers * as_dtype(dt, y0.dtype)[:, None, None]
    weights = torch.matmul(powers, coeffs)
    return torch.baddbmm(y0, weights, stages)


@functools.lru_cache(maxsize=64)
def _polynomial_matrix(
    solver: AbstractSolver, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The solver's stage polynomials as a ``(P, s)`` tensor zero-padded to one degree."""
    rows = solver.stage_polynomials()
    degree = max(len(r) for r in rows)
    padded = [r + [0.0] * (degree - len(r)) for r in rows]
    return torch.tensor(padded, dtype=dtype, device=device).T.contiguous()
