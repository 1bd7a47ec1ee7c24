"""Kværnø's 3(2) ESDIRK pair."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._dirk import DIRK, DIRKTableau

# γ is the root near 0.4359 of γ³ − 3γ² + 3γ/2 − 1/6 = 0, which makes the method
# L-stable; the paper prints it to 10 digits (0.4358665215), here to full double
# precision so that the order conditions hold to rounding. Every other coefficient is
# the paper's closed form in γ.
_G = 0.4358665215084589994
_A31 = (-4 * _G**2 + 6 * _G - 1) / (4 * _G)
_A32 = (-2 * _G + 1) / (4 * _G)
_A41 = (6 * _G - 1) / (12 * _G)
_A42 = -1 / ((24 * _G - 12) * _G)
_A43 = (-6 * _G**2 + 6 * _G - 1) / (6 * _G - 3)
# First Newton guesses (the idea and the values as in diffrax's Kvaerno3): stage 3 by
# extrapolating through stages 1 and 2 (θ = 1/(2γ)), stage 4 from the embedded solution
# (stage 3, also at c = 1).
_THETA = 1 / (2 * _G)

_B = (_A41, _A42, _A43, _G)

KVAERNO3_TABLEAU = DIRKTableau(
    name="Kvaerno3",
    c=(0, 2 * _G, 1, 1),
    a=((0,), (_G, _G), (_A31, _A32, _G), _B),
    b=_B,
    order=3,
    b_hat=(_A31, _A32, _G, 0),
    embedded_order=2,
    predictor=((1.0,), (1 - _THETA, _THETA), (_A31, _A32, _G)),
)


@dataclass(frozen=True)
class Kvaerno3(DIRK):
    """Kværnø's 3(2) method: an L-stable, stiffly accurate ESDIRK pair for stiff problems.

    Order 3, embedded order 2 (the third stage, itself stiffly accurate), 4 stages: one
    explicit (FSAL, free) and three implicit with the same diagonal γ ≈ 0.436, so one
    Jacobian and one LU factorisation per step. Cubic Hermite dense output (3rd order).
    Good at loose tolerances (rtol ≳ 1e-4); prefer :class:`Kvaerno5` for tighter ones.

    Reference: A. Kværnø, "Singly diagonally implicit Runge–Kutta methods with an
    explicit first stage", BIT Numerical Mathematics 44 (2004), 489–502.
    """

    tableau: ClassVar[DIRKTableau] = KVAERNO3_TABLEAU
