"""Shampine & Reichelt's Rosenbrock 2(3) pair (MATLAB's ode23s)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ._rosenbrock import Rosenbrock, RosenbrockTableau

# The paper writes the step with d = 1/(2 + √2) and e32 = 6 + √2 (Shampine & Reichelt
# 1997, §3, eq. 4):
#   W = I − h d J,  W k1 = f0 + h d T,  W (k2 − k1) = f(t + h/2, y + h k1/2) − k1,
#   y1 = y + h k2,  W k3 = f(t1, y1) − e32 (k2 − F1) − 2 (k1 − f0) + h d T,
#   error = h/6 (k1 − 2 k2 + k3).
# Eliminating F1 and f0 through the first two equations gives Hairer & Wanner's form
# with K_i = h k_i: α21 = 1/2, α3 = (0, 1) (the last stage is at y1: FSAL),
# γ21 = −d, γ31 = (e32 − 2) d, γ32 = −e32 d; b = (0, 1, 0), and the error weights
# (1/6, −1/3, 1/6) estimate the error of y1: b̂ = b + e = (1/6, 2/3, 1/6).
_D = 1 / (2 + math.sqrt(2))
_E32 = 6 + math.sqrt(2)

ROSENBROCK23_TABLEAU = RosenbrockTableau(
    name="Rosenbrock23",
    gamma=_D,
    alpha=((), (0.5,), (0.0, 1.0)),
    gammas=((), (-_D,), ((_E32 - 2) * _D, -_E32 * _D)),
    b=(0.0, 1.0, 0.0),
    order=2,
    b_hat=(1 / 6, 2 / 3, 1 / 6),
    embedded_order=3,
)


@dataclass(frozen=True)
class Rosenbrock23(Rosenbrock):
    """Shampine & Reichelt's L-stable Rosenbrock 2(3) pair, for loose tolerances.

    Order 2, error estimated with an embedded order-3 solution (local extrapolation is
    not done: the propagated solution is the L-stable 2nd-order one), 3 stages, the last
    at ``(t1, y1)`` (FSAL): two evaluations of ``f``, one Jacobian and ``∂f/∂t`` (by
    autograd), one LU factorisation of ``I − hγJ`` and three linear solves per step, no
    Newton iteration. Cubic Hermite dense output (3rd order). Good at rtol ≳ 1e-3; for
    tighter tolerances prefer :class:`Kvaerno5`. The same method as MATLAB's ``ode23s``
    and OrdinaryDiffEq.jl's ``Rosenbrock23``.

    Reference: L. F. Shampine and M. W. Reichelt, "The MATLAB ODE Suite", SIAM J. Sci.
    Comput. 18 (1997), 1–22, §3.
    """

    tableau: ClassVar[RosenbrockTableau] = ROSENBROCK23_TABLEAU
