"""Fixed-step implicit methods, under torchdiffeq's (development) names.

Diagonally implicit: implicit Euler, the implicit midpoint rule, the trapezoidal rule, a
2-stage L-stable SDIRK and TR-BDF2. Fully implicit: Radau IIA of orders 3 and 5 and
Gauss–Legendre of orders 4 and 6. No error estimate: use them with ``ConstantStepSize``,
or use the adaptive :class:`Kvaerno3`/:class:`Kvaerno5`. Hairer & Wanner II, §IV.3–§IV.6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction as F
from typing import ClassVar

from ._dirk import DIRK, DIRKTableau
from ._firk import FIRK, FIRKTableau

IMPLICIT_EULER_TABLEAU = DIRKTableau(name="ImplicitEuler", c=(1,), a=((1,),), b=(1,), order=1)
IMPLICIT_MIDPOINT_TABLEAU = DIRKTableau(
    name="ImplicitMidpoint", c=(F(1, 2),), a=((F(1, 2),),), b=(1,), order=2
)
TRAPEZOID_TABLEAU = DIRKTableau(
    name="Trapezoid", c=(0, 1), a=((0,), (F(1, 2), F(1, 2))), b=(F(1, 2), F(1, 2)), order=2
)
# L-stable: γ = 1 − √2/2 makes the stability function vanish at infinity.
_G = 1 - math.sqrt(2) / 2
SDIRK2_TABLEAU = DIRKTableau(
    name="SDIRK2", c=(_G, 1), a=((_G,), (1 - _G, _G)), b=(1 - _G, _G), order=2
)
# TR-BDF2 as an ESDIRK: a trapezoidal stage to 2γ = 2 − √2, then BDF2 to 1; the diagonal
# γ = 1 − √2/2 is the same for both (Bank et al., IEEE Trans. CAD 4, 1985; Hosea &
# Shampine, Appl. Numer. Math. 20, 1996).
_W = math.sqrt(2) / 4
TRBDF2_TABLEAU = DIRKTableau(
    name="TRBDF2",
    c=(0, 2 * _G, 1),
    a=((0,), (_G, _G), (_W, _W, _G)),
    b=(_W, _W, _G),
    order=2,
)


@dataclass(frozen=True)
class ImplicitEuler(DIRK):
    """Backward Euler. Order 1, one implicit stage, L-stable, stiffly accurate."""

    tableau: ClassVar[DIRKTableau] = IMPLICIT_EULER_TABLEAU


@dataclass(frozen=True)
class ImplicitMidpoint(DIRK):
    """The implicit midpoint rule (1-stage Gauss). Order 2, A-stable, symplectic."""

    tableau: ClassVar[DIRKTableau] = IMPLICIT_MIDPOINT_TABLEAU


@dataclass(frozen=True)
class Trapezoid(DIRK):
    """The trapezoidal rule (Crank–Nicolson). Order 2, A-stable (not L-stable), FSAL."""

    tableau: ClassVar[DIRKTableau] = TRAPEZOID_TABLEAU


@dataclass(frozen=True)
class SDIRK2(DIRK):
    """Two-stage SDIRK, γ = 1 − √2/2. Order 2, L-stable, stiffly accurate.

    Reference: Alexander, SIAM J. Numer. Anal. 14 (1977); Hairer & Wanner II, Table IV.6.1.
    """

    tableau: ClassVar[DIRKTableau] = SDIRK2_TABLEAU


@dataclass(frozen=True)
class TRBDF2(DIRK):
    """TR-BDF2: a trapezoidal stage then BDF2. Order 2, L-stable, stiffly accurate, FSAL.

    Reference: Bank, Coughran, Fichtner, Grosse, Rose & Smith, IEEE Trans. CAD 4 (1985).
    """

    tableau: ClassVar[DIRKTableau] = TRBDF2_TABLEAU


_S3, _S6, _S15 = math.sqrt(3), math.sqrt(6), math.sqrt(15)
# Hairer & Wanner II, Table IV.5.5 (Radau IIA) and Table IV.5.1 (Gauss).
RADAU_IIA3_TABLEAU = FIRKTableau(
    name="RadauIIA3",
    c=(F(1, 3), 1),
    a=((F(5, 12), F(-1, 12)), (F(3, 4), F(1, 4))),
    b=(F(3, 4), F(1, 4)),
    order=3,
)
RADAU_IIA5_TABLEAU = FIRKTableau(
    name="RadauIIA5",
    c=((4 - _S6) / 10, (4 + _S6) / 10, 1),
    a=(
        ((88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225),
        ((296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225),
        ((16 - _S6) / 36, (16 + _S6) / 36, F(1, 9)),
    ),
    b=((16 - _S6) / 36, (16 + _S6) / 36, F(1, 9)),
    order=5,
)
# The nodes are 1/2 ∓ √3/6 (torchdiffeq's development tableau has 1/2 − √3/6 twice).
GAUSS_LEGENDRE4_TABLEAU = FIRKTableau(
    name="GaussLegendre4",
    c=(0.5 - _S3 / 6, 0.5 + _S3 / 6),
    a=((0.25, 0.25 - _S3 / 6), (0.25 + _S3 / 6, 0.25)),
    b=(0.5, 0.5),
    order=4,
)
GAUSS_LEGENDRE6_TABLEAU = FIRKTableau(
    name="GaussLegendre6",
    c=(0.5 - _S15 / 10, 0.5, 0.5 + _S15 / 10),
    a=(
        (F(5, 36), F(2, 9) - _S15 / 15, F(5, 36) - _S15 / 30),
        (F(5, 36) + _S15 / 24, F(2, 9), F(5, 36) - _S15 / 24),
        (F(5, 36) + _S15 / 30, F(2, 9) + _S15 / 15, F(5, 36)),
    ),
    b=(F(5, 18), F(4, 9), F(5, 18)),
    order=6,
)


@dataclass(frozen=True)
class RadauIIA3(FIRK):
    """Radau IIA, 2 stages. Order 3, L-stable, stiffly accurate (Ehle 1969)."""

    tableau: ClassVar[FIRKTableau] = RADAU_IIA3_TABLEAU


@dataclass(frozen=True)
class RadauIIA5(FIRK):
    """Radau IIA, 3 stages. Order 5, L-stable, stiffly accurate (the method of RADAU5)."""

    tableau: ClassVar[FIRKTableau] = RADAU_IIA5_TABLEAU


@dataclass(frozen=True)
class GaussLegendre4(FIRK):
    """Gauss–Legendre, 2 stages. Order 4, A-stable, symplectic (Butcher 1964)."""

    tableau: ClassVar[FIRKTableau] = GAUSS_LEGENDRE4_TABLEAU


@dataclass(frozen=True)
class GaussLegendre6(FIRK):
    """Gauss–Legendre, 3 stages. Order 6, A-stable, symplectic (Butcher 1964)."""

    tableau: ClassVar[FIRKTableau] = GAUSS_LEGENDRE6_TABLEAU
