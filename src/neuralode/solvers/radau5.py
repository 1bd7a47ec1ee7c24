"""Radau5: adaptive Radau IIA of order 5, with RADAU5's error estimate (Hairer & Wanner)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ._explicit_rk import SolverState, StepSize, Time
from ._firk import FIRK, FIRKTableau, _divide_rows, _times_rows
from ._krylov import MatrixFree, jvp_products, scaled
from ._newton import Factorised, Newton, NewtonMatrix, RowField, per_matrix
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

    def _newton(self, dtype: torch.dtype) -> Newton:
        """``kappa`` unset: ``max(10 eps/rtol, min(0.03, √rtol))``, scipy's Radau's rule.

        Each step's iteration error adds to the global error; over the many steps of a
        tight tolerance a fixed fraction of the tolerance adds up (measured on ROBER at
        rtol 1e-7: 2.3e-7 with 1e-2, 3.8e-10 with this rule, for 1.3× the evaluations).
        The floor keeps the target above rounding.
        """
        if self.newton.kappa is not None:
            return self.newton
        rtol = self.newton.rtol
        kappa = max(10 * torch.finfo(dtype).eps / rtol, min(0.03, math.sqrt(rtol)))
        return dataclasses.replace(self.newton, kappa=kappa)

    def initial_state(self, y0: torch.Tensor) -> SolverState:
        """The reused Jacobian's state, then the last step's stage increments and size.

        ``Z (R, 3, n)`` and ``h (R, 1)`` (0: none yet) give the next step's Newton start:
        the last step's collocation polynomial, extrapolated (RADAU5's starting values).
        """
        base = super().initial_state(y0)
        if not base:
            return base  # matrix-free Newton: no state
        rows, n = y0.shape
        return (*base, y0.new_zeros(rows, 3, n), y0.new_zeros(rows, 1))

    def _guess(
        self, y: torch.Tensor, k0: torch.Tensor, h: StepSize, state: SolverState
    ) -> torch.Tensor:
        """The last step's collocation polynomial at this step's nodes, where there is one.

        With ``Q`` through ``(0, 0)`` and ``(c_i, Z_i)`` of the last step (in its units),
        this step's stage ``j`` starts at ``y_last_start + Q(1 + c_j h/h_last)``, that is
        ``y + Q(τ_j) − Z_3`` (stiffly accurate: ``y = y_last_start + Z_3``).
        """
        euler = super()._guess(y, k0, h, state)
        if len(state) < 4:
            return euler
        z_last, h_last = state[2], state[3]
        have = h_last[:, 0] > 0
        if not bool(have.any()):
            return euler
        rows = y.shape[0]
        h_now = h if isinstance(h, torch.Tensor) else torch.full_like(h_last, h)
        ratio = h_now / torch.where(have.unsqueeze(-1), h_last, torch.ones_like(h_last))
        c = torch.tensor(self.tableau.c_float, dtype=y.dtype, device=y.device)
        tau = 1.0 + c * ratio  # (R, 3)
        nodes = (0.0, *self.tableau.c_float)
        # Lagrange weights on Z_1..Z_3 at τ (the node 0 carries Q = 0).
        weights = []
        for i in range(1, 4):
            w = torch.ones(rows, 3, dtype=y.dtype, device=y.device)
            for m, x_m in enumerate(nodes):
                if m != i:
                    w = w * (tau - x_m) / (nodes[i] - x_m)
            weights.append(w)
        q = torch.einsum("rji,rin->rjn", torch.stack(weights, dim=-1), z_last)
        start = y.unsqueeze(1) + q - z_last[:, 2:3]
        return torch.where(have[:, None, None], start, euler)

    def _states(
        self,
        jac: torch.Tensor | None,
        fresh: torch.Tensor | None,
        eta: torch.Tensor,
        state: SolverState,
        increments: torch.Tensor,
        h: StepSize,
    ) -> tuple[SolverState, SolverState]:
        """The Jacobian's states, and the increments that start the next Newton.

        This step's if it is accepted; for a retry, the last accepted step's.
        """
        accepted, retry = super()._states(jac, fresh, eta, state, increments, h)
        if not accepted:
            return accepted, retry
        rows = increments.shape[0]
        h_col = (h if isinstance(h, torch.Tensor) else increments.new_full((rows, 1), h)).detach()
        last = (
            state[2:]
            if len(state) == 4
            else (torch.zeros_like(increments), torch.zeros_like(h_col))
        )
        return (*accepted, increments.detach(), h_col), (*retry, *last)

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
            scale = self.newton.atol + self.newton.rtol * y.abs()  # the controller's, matched
            refine = (error / scale).square().mean(dim=-1).sqrt() >= 1.0
            if bool(refine.any()):
                again = call(t0, y + error)
                refined = _times_rows(h_gamma, matrix.solve(again + f2, f))
                error = torch.where(refine.unsqueeze(-1), refined, error)
        return error
