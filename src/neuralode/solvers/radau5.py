"""Radau5: adaptive Radau IIA of order 5, with RADAU5's error estimate (Hairer & Wanner)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ._explicit_rk import StepSize, Time
from ._firk import FIRK, FIRKTableau, _divide_rows, _times_rows
from ._krylov import MatrixFree, jvp_products, scaled
from ._newton import Factorised, NewtonMatrix, RowField, per_matrix
from .implicit_fixed import RADAU_IIA5_TABLEAU

_S6 = math.sqrt(6.0)
# The estimate's weights on the stage increments (radau5.f's DD1, DD2, DD3), and
# γ₀ = 1/μ, μ the real eigenvalue of the Butcher matrix's inverse (its U1).
_DD = (-(13.0 + 7.0 * _S6) / 3.0, (-13.0 + 7.0 * _S6) / 3.0, -1.0 / 3.0)
_GAMMA0 = (6.0 + 81.0 ** (1.0 / 3.0) - 9.0 ** (1.0 / 3.0)) / 30.0


@dataclass(frozen=True)
class Radau5(FIRK):
    """Radau IIA with 3 stages, order 5, L-stable and stiffly accurate, adaptive.

    The method of Hairer & Wanner's RADAU5 (and scipy's ``Radau``): the three stages are
    solved together by simplified Newton (the stacked ``3n`` system, see
    :class:`~neuralode.solvers.FIRK`), and the error is estimated as RADAU5 does
    (Hairer & Wanner II, §IV.8, eq. 8.19–8.20): the embedded third-order solution's
    difference ``e = γ₀h f(t0, y0) + Σ d_i z_i`` filtered through ``(I − γ₀hJ)⁻¹``, so that
    stiff components do not inflate it. Where that estimate exceeds the tolerance it is
    filtered once more through ``f(t0, y0 + e)`` (RADAU5 does so after a rejection; here
    at every step where it is ≥ 1, in the norm of :attr:`newton`'s ``rtol``/``atol``),
    at one evaluation of ``f``. The estimate is ``O(h⁴)``: step-size control uses order 3.

    The most accurate solver per step for stiff problems at tight tolerances (see the
    stiff solvers' guide); gradients as for every implicit solver (the implicit-function
    theorem at the stages). Set :attr:`newton`'s ``rtol``/``atol`` to the controller's.
    """

    tableau: ClassVar[FIRKTableau] = RADAU_IIA5_TABLEAU

    @property
    def adaptive(self) -> bool:
        """Yes: RADAU5's error estimate."""
        return True

    @property
    def error_order(self) -> int:
        """3: the estimate behaves as ``h⁴``."""
        return 3

    def _estimate(
        self,
        call: RowField,
        f: Any,
        t0: Time,
        y: torch.Tensor,
        k0: torch.Tensor,
        h: StepSize,
        increments: torch.Tensor,
        jac: torch.Tensor | None,
    ) -> torch.Tensor:
        """``γ₀h (I − γ₀hJ)⁻¹ (f0 + Σ d_i z_i / h)``, refined where it is ≥ 1."""
        with torch.no_grad():
            dd = torch.tensor(_DD, dtype=y.dtype, device=y.device)
            f2 = _divide_rows(torch.einsum("i,rin->rn", dd, increments.detach()), h)
            h_gamma = h * _GAMMA0
            matrix: NewtonMatrix
            if jac is not None:
                matrix = Factorised.of(per_matrix(h_gamma) * jac, f)
            else:
                assert self.krylov is not None  # matrix-free Newton keeps no Jacobian
                matrix = MatrixFree.of(scaled(h_gamma, jvp_products(call, t0, y)), self.krylov, y)
            k0 = k0.detach()
            error = _times_rows(h_gamma, matrix.solve(k0 + f2, f))
            scale = self.newton.atol + self.newton.rtol * y.abs()
            refine = (error / scale).square().mean(dim=-1).sqrt() >= 1.0
            if bool(refine.any()):
                again = call(t0, y + error)
                refined = _times_rows(h_gamma, matrix.solve(again + f2, f))
                error = torch.where(refine.unsqueeze(-1), refined, error)
        return error
