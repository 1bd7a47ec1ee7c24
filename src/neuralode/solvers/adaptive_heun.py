"""Heun's method with an Euler error estimate."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F
from typing import ClassVar

from ._explicit_rk import ExplicitRK
from ._tableau import ButcherTableau

ADAPTIVE_HEUN_TABLEAU = ButcherTableau(
    name="AdaptiveHeun",
    c=(0, 1),
    a=((1,),),
    b=(F(1, 2), F(1, 2)),
    b_hat=(1, 0),
    order=2,
    embedded_order=1,
)


@dataclass(frozen=True)
class AdaptiveHeun(ExplicitRK):
    """Heun 2(1): the trapezoidal predictor–corrector with Euler as error estimate.

    Order 2, embedded order 1, 2 stages, not FSAL, cubic Hermite dense output.
    torchdiffeq's ``adaptive_heun`` reuses the last stage ``f(t1, y0 + dt f0)`` as the
    next step's first stage although it is not ``f(t1, y1)``; we evaluate ``f(t1, y1)``,
    so results agree to within the tolerance but not to the last bit. Reference: Hairer,
    Nørsett & Wanner I, §II.1.
    """

    tableau: ClassVar[ButcherTableau] = ADAPTIVE_HEUN_TABLEAU
