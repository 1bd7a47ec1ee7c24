"""Dormand–Prince 5(4)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction as F
from typing import ClassVar

from ._explicit_rk import ExplicitRK
from ._tableau import ButcherTableau, dense_from_midpoint

_B: tuple[F | int, ...] = (F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0)
_B_HAT: tuple[F | int, ...] = (
    F(5179, 57600),
    0,
    F(7571, 16695),
    F(393, 640),
    F(-92097, 339200),
    F(187, 2100),
    F(1, 40),
)

# Shampine's midpoint weights ("Some practical Runge–Kutta formulas", Math. Comp. 46,
# 1986, p. 148); torchdiffeq uses the same continuous extension, so dense output agrees.
_C_MID = (
    F(6025192743, 30085553152) / 2,
    0,
    F(51252292925, 65400821598) / 2,
    F(-2691868925, 45128329728) / 2,
    F(187940372067, 1594534317056) / 2,
    F(-1776094331, 19743644256) / 2,
    F(11237099, 235043384) / 2,
)

DOPRI5_TABLEAU = ButcherTableau(
    name="Dopri5",
    c=(0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1),
    a=(
        (F(1, 5),),
        (F(3, 40), F(9, 40)),
        (F(44, 45), F(-56, 15), F(32, 9)),
        (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
        (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
        _B[:6],
    ),
    b=_B,
    b_hat=_B_HAT,
    order=5,
    embedded_order=4,
    b_dense=dense_from_midpoint(_B, _C_MID, fsal=True),
    dense_order=4,
)

# torchdiffeq's embedded solution (torchode and torchdyn copy it): b/3 + 2·b_hat/3, also
# of order 4, so its error estimate is exactly 2/3 of Dormand and Prince's. At the same
# tolerance its steps are 1.5^(1/5) ≈ 1.08 times longer and its solutions less accurate.
DOPRI5_TORCHDIFFEQ_TABLEAU = dataclasses.replace(
    DOPRI5_TABLEAU,
    name="Dopri5 (torchdiffeq's estimate)",
    b_hat=tuple(F(1, 3) * b + F(2, 3) * bh for b, bh in zip(_B, _B_HAT, strict=True)),
)

_EMBEDDED = {"dormand-prince": DOPRI5_TABLEAU, "torchdiffeq": DOPRI5_TORCHDIFFEQ_TABLEAU}


@dataclass(frozen=True)
class Dopri5(ExplicitRK):
    """Dormand–Prince 5(4): the default adaptive solver.

    Order 5 (local extrapolation), embedded order 4, 7 stages, FSAL (6 evaluations per
    step), 4th-order continuous extension (Shampine 1986). Reference: Dormand & Prince,
    "A family of embedded Runge–Kutta formulae", J. Comp. Appl. Math. 6 (1980).

    Attributes:
        embedded: The embedded 4th-order solution the error is estimated with:
            ``"dormand-prince"`` (the paper's, as in Hairer's DOPRI5, scipy and diffrax)
            or ``"torchdiffeq"`` (``b/3 + 2·b̂/3``, as in torchdiffeq, torchode and
            torchdyn), whose estimate is 2/3 of the paper's: the same tolerance then takes
            about 8% longer steps and gives larger errors. Use it to reproduce those
            libraries' step sequences; :mod:`neuralode.compat` does.
    """

    tableau: ClassVar[ButcherTableau] = DOPRI5_TABLEAU
    embedded: str = "dormand-prince"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.embedded not in _EMBEDDED:
            raise ValueError(f"embedded must be one of {tuple(_EMBEDDED)}, got {self.embedded!r}")
        # The instance's tableau (the class keeps the default one for class-level reads).
        object.__setattr__(self, "tableau", _EMBEDDED[self.embedded])
