"""Classical fixed-step methods: Euler, Midpoint, Heun2, Heun3 and RK4 (3/8 rule)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F
from typing import ClassVar

from ._explicit_rk import ExplicitRK
from ._tableau import ButcherTableau

EULER_TABLEAU = ButcherTableau(name="Euler", c=(0,), a=(), b=(1,), b_hat=None, order=1)
MIDPOINT_TABLEAU = ButcherTableau(
    name="Midpoint", c=(0, F(1, 2)), a=((F(1, 2),),), b=(0, 1), b_hat=None, order=2
)
HEUN2_TABLEAU = ButcherTableau(
    name="Heun2", c=(0, 1), a=((1,),), b=(F(1, 2), F(1, 2)), b_hat=None, order=2
)
HEUN3_TABLEAU = ButcherTableau(
    name="Heun3",
    c=(0, F(1, 3), F(2, 3)),
    a=((F(1, 3),), (0, F(2, 3))),
    b=(F(1, 4), 0, F(3, 4)),
    b_hat=None,
    order=3,
)
RK4_TABLEAU = ButcherTableau(
    name="RK4",
    c=(0, F(1, 3), F(2, 3), 1),
    a=((F(1, 3),), (F(-1, 3), 1), (1, -1, 1)),
    b=(F(1, 8), F(3, 8), F(3, 8), F(1, 8)),
    b_hat=None,
    order=4,
)


@dataclass(frozen=True)
class Euler(ExplicitRK):
    """Forward Euler. Order 1, 1 stage, cubic Hermite dense output."""

    tableau: ClassVar[ButcherTableau] = EULER_TABLEAU


@dataclass(frozen=True)
class Midpoint(ExplicitRK):
    """Explicit midpoint rule. Order 2, 2 stages, cubic Hermite dense output."""

    tableau: ClassVar[ButcherTableau] = MIDPOINT_TABLEAU


@dataclass(frozen=True)
class Heun2(ExplicitRK):
    """Heun's method (explicit trapezoidal rule). Order 2, 2 stages, Hermite dense output."""

    tableau: ClassVar[ButcherTableau] = HEUN2_TABLEAU


@dataclass(frozen=True)
class Heun3(ExplicitRK):
    """Heun's third-order method. Order 3, 3 stages, Hermite dense output.

    Reference: Heun, Z. Math. Phys. 45 (1900); Hairer, Nørsett & Wanner I, Table II.1.1.
    """

    tableau: ClassVar[ButcherTableau] = HEUN3_TABLEAU


@dataclass(frozen=True)
class RK4(ExplicitRK):
    """Kutta's 3/8 rule, the fourth-order method torchdiffeq calls ``rk4``.

    Order 4, 4 stages, Hermite dense output. Reference: Kutta (1901); Hairer, Nørsett &
    Wanner I, Table II.1.2 (right).
    """

    tableau: ClassVar[ButcherTableau] = RK4_TABLEAU
