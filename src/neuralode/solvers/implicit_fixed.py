"""Fixed-step diagonally implicit methods, under torchdiffeq's (development) names.

Implicit Euler, the implicit midpoint rule, the trapezoidal rule, a 2-stage L-stable
SDIRK and TR-BDF2. No error estimate: use them with ``ConstantStepSize``, or use the
adaptive :class:`Kvaerno3`/:class:`Kvaerno5`. Hairer & Wanner II, §IV.3–§IV.6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction as F
from typing import ClassVar

from ._dirk import DIRK, DIRKTableau

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
