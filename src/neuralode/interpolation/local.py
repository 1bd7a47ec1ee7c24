"""Interpolation inside one accepted step, written as weights on the stages.

Both the tableau's own continuous extension and the cubic Hermite fallback are linear in
the stages, ``y(t0 + θ dt) = y0 + dt Σ_i w_i(θ) k_i`` (Hermite adds ``f1`` as one more
"stage"), so every output time inside a step costs one row of a single matrix product.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import cast

import torch

from ..solvers._explicit_rk import AbstractSolver, ExplicitRK, as_dtype


def _kind(solver: AbstractSolver) -> str:
    if not isinstance(solver, ExplicitRK):
        raise NotImplementedError(f"{type(solver).__name__} has no interpolant")
    if solver.interpolation == "auto":
        return "dense" if solver.tableau.b_dense is not None else "hermite"
    return solver.interpolation


def needs_f1(solver: AbstractSolver) -> bool:
    """Whether interpolating this solver's steps needs ``f(t1, y1)`` beyond its stages."""
    return _kind(solver) == "hermite"


def _hermite_weights(b: Sequence[float], theta: float) -> list[float]:
    """Cubic Hermite through ``y0, y1, f0, f1`` as weights on ``(k_1..k_s, f1)``.

    With ``h10 = θ³ − 2θ² + θ``, ``h01 = 3θ² − 2θ³``, ``h11 = θ³ − θ²`` and
    ``y1 − y0 = dt Σ b_i k_i``: ``y(θ) = y0 + dt (h10 k_1 + h01 Σ b_i k_i + h11 f1)``.
    Third order, which matches the fixed-step and low-order adaptive methods it serves.
    """
    h10 = theta * (1 - theta) ** 2
    h01 = theta * theta * (3 - 2 * theta)
    h11 = theta * theta * (theta - 1)
    weights = [h01 * bi for bi in b]
    weights[0] += h10
    weights.append(h11)
    return weights


def stage_weights(solver: AbstractSolver, thetas: Sequence[float]) -> list[list[float]]:
    """One row of stage weights per ``θ`` (extended by an ``f1`` column for Hermite)."""
    kind = _kind(solver)
    tableau = cast(ExplicitRK, solver).tableau  # _kind has checked the type
    if kind == "dense":
        return [tableau.dense_weights(theta) for theta in thetas]
    b = tableau.b_float
    if kind == "linear":
        return [[theta * bi for bi in b] for theta in thetas]
    return [_hermite_weights(b, theta) for theta in thetas]


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
    if needs_f1(solver):
        if f1 is None:
            raise ValueError("Hermite interpolation needs f(t1, y1)")
        stages.append(f1)
    weights = torch.tensor(stage_weights(solver, thetas), dtype=y0.dtype, device=y0.device)
    # (m, s) @ (s, N), scaled by dt, plus y0 broadcast over the m rows: one fused op.
    k_matrix = torch.stack(stages).reshape(len(stages), -1)
    out = torch.addmm(y0.reshape(1, -1), weights, k_matrix, alpha=dt)
    return out.reshape(len(thetas), *y0.shape)


def _stage_polynomials(solver: AbstractSolver) -> list[list[float]]:
    """``C`` with ``w_i(θ) = Σ_p C[i][p] θ^p``: :func:`stage_weights` as polynomials."""
    kind = _kind(solver)
    tableau = cast(ExplicitRK, solver).tableau
    b = tableau.b_float
    if kind == "dense":
        return [[0.0, *row] for row in cast(tuple, tableau.dense_float)]
    if kind == "linear":
        return [[0.0, bi] for bi in b]
    # Hermite, as in _hermite_weights: h01 = 3θ² − 2θ³ on every b_i, h10 = θ − 2θ² + θ³ on
    # k_1, h11 = θ³ − θ² on f1.
    rows = [[0.0, 0.0, 3.0 * bi, -2.0 * bi] for bi in b]
    rows[0] = [x + y for x, y in zip(rows[0], [0.0, 1.0, -2.0, 1.0], strict=True)]
    rows.append([0.0, 0.0, -1.0, 1.0])
    return rows


def interpolate_rows(
    solver: AbstractSolver,
    y0: torch.Tensor,
    k: Sequence[torch.Tensor],
    f1: torch.Tensor | None,
    dt: torch.Tensor,
    thetas: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sample :func:`interpolate_step`: row ``b`` of ``y0`` at ``t0 + θ[b, m] dt[b]``.

    ``y0`` and the stages are ``(B, N)``, ``dt`` is ``(B,)`` and ``thetas`` ``(B, M)``;
    returns ``(B, M, N)``. With ``rows`` (``(K,)`` indices), ``thetas`` is ``(K, M)`` and
    row ``i`` of the result interpolates row ``rows[i]`` of the step. The weights are
    powers of θ times a coefficient matrix, then one batched matrix product applies them
    to the stages.
    """
    stages = torch.stack(interpolation_stages(solver, k, f1), dim=1)  # (B, s, N)
    if rows is not None:
        stages, y0, dt = stages[rows], y0[rows], dt[rows]
    return interpolate_stacked(solver, y0.unsqueeze(1), stages, dt, thetas)


def interpolation_stages(
    solver: AbstractSolver, k: Sequence[torch.Tensor], f1: torch.Tensor | None
) -> list[torch.Tensor]:
    """The stages the interpolant weighs: ``k``, and ``f1`` for cubic Hermite."""
    if not needs_f1(solver):
        return list(k)
    if f1 is None:
        raise ValueError("Hermite interpolation needs f(t1, y1)")
    return [*k, f1]


def interpolate_stacked(
    solver: AbstractSolver,
    y0: torch.Tensor,
    stages: torch.Tensor,
    dt: torch.Tensor,
    thetas: torch.Tensor,
) -> torch.Tensor:
    """:func:`interpolate_rows` on stacked rows: ``y0`` ``(B, 1, N)``, stages ``(B, s, N)``.

    For callers that have already gathered the rows they need (one indexing of one
    stack of ``y0``, the stages and ``y1``, instead of one per tensor).
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
    """``_stage_polynomials`` as a ``(P, s)`` tensor zero-padded to one degree."""
    rows = _stage_polynomials(solver)
    degree = max(len(r) for r in rows)
    padded = [r + [0.0] * (degree - len(r)) for r in rows]
    return torch.tensor(padded, dtype=dtype, device=device).T.contiguous()
