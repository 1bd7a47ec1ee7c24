"""Bogacki–Shampine 3(2)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F
from typing import ClassVar

from ._explicit_rk import ExplicitRK
from ._tableau import ButcherTableau

_B = (F(2, 9), F(1, 3), F(4, 9), 0)

BOSH3_TABLEAU = ButcherTableau(
    name="Bosh3",
    c=(0, F(1, 2), F(3, 4), 1),
    a=((F(1, 2),), (0, F(3, 4)), _B[:3]),
    b=_B,
    b_hat=(F(7, 24), F(1, 4), F(1, 3), F(1, 8)),
    order=3,
    embedded_order=2,
)


@dataclass(frozen=True)
class Bosh3(ExplicitRK):
    """Bogacki–Shampine 3(2) (MATLAB's ode23).

    Order 3, embedded order 2, 4 stages, FSAL (3 evaluations per step), cubic Hermite dense
    output (3rd order). Reference: Bogacki & Shampine, "A 3(2) pair of Runge–Kutta
    formulas", Appl. Math. Lett. 2 (1989).
    """

    tableau: ClassVar[ButcherTableau] = BOSH3_TABLEAU
