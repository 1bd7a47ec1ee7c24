"""Runge–Kutta–Fehlberg 1(2), propagating the second-order solution."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F
from typing import ClassVar

from ._explicit_rk import ExplicitRK
from ._tableau import ButcherTableau

FEHLBERG2_TABLEAU = ButcherTableau(
    name="Fehlberg2",
    c=(0, F(1, 2), 1),
    a=((F(1, 2),), (F(1, 256), F(255, 256))),
    b=(F(1, 512), F(255, 256), F(1, 512)),
    b_hat=(F(1, 256), F(255, 256), 0),
    order=2,
    embedded_order=1,
)


@dataclass(frozen=True)
class Fehlberg2(ExplicitRK):
    """Fehlberg's RKF1(2) in local-extrapolation mode (the second-order solution is kept).

    Order 2, embedded order 1, 3 stages, not FSAL in this mode (the last stage is taken at
    the first-order solution), cubic Hermite dense output. Reference: Fehlberg, NASA
    TR R-315 (1969), as used by torchdiffeq's ``fehlberg2``.
    """

    tableau: ClassVar[ButcherTableau] = FEHLBERG2_TABLEAU
