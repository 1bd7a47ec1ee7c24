"""Kværnø's 5(4) ESDIRK pair."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._dirk import DIRK, DIRKTableau

_G = 0.26
# The rows below the first, each ending on the diagonal γ.
_A = (
    (_G, _G),
    (0.13, 0.84033320996790809, _G),
    (0.22371961478320505, 0.47675532319799699, -0.06470895363112615, _G),
    (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998, _G),
    (0.13855640231268224, 0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676, _G),
    (
        0.13659751177640291,
        0,
        -0.05496908796538376,
        -0.04118626728321046,
        0.62993304899016403,
        0.06962479448202728,
        _G,
    ),
)
# The nodes are the row sums (with γ); c_3 > 1, so one stage is evaluated past the step.
_C = (0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1, 1)
# First Newton guesses, as OrdinaryDiffEq.jl's Kvaerno5 (via diffrax, which corrects its
# α21 = 0 to 1); the last stage is guessed as the embedded solution (stage 6).
_PREDICTOR = (
    (1.0,),
    (-1.366025403784441, 2.3660254037844357),
    (-0.19650552613122207, 0.8113579546496623, 0.38514757148155954),
    (0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0),
    (-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0, 0),
    _A[4],
)

KVAERNO5_TABLEAU = DIRKTableau(
    name="Kvaerno5",
    c=_C,
    a=((0,), *_A),
    b=_A[-1],
    order=5,
    b_hat=(*_A[4], 0),
    embedded_order=4,
    predictor=_PREDICTOR,
)


@dataclass(frozen=True)
class Kvaerno5(DIRK):
    """Kværnø's 5(4) method: an L-stable, stiffly accurate ESDIRK pair for stiff problems.

    Order 5, embedded order 4 (the sixth stage, itself stiffly accurate), 7 stages: one
    explicit (FSAL, free) and six implicit with the same diagonal γ = 0.26, so one
    Jacobian and one LU factorisation per step. Cubic Hermite dense output (3rd order).
    The recommended stiff solver at moderate to tight tolerances (rtol ≲ 1e-4). One node
    is ``c = 1.23``: a stage is evaluated past the end of its step.

    Reference: A. Kværnø, "Singly diagonally implicit Runge–Kutta methods with an
    explicit first stage", BIT Numerical Mathematics 44 (2004), 489–502 (the 5(4) pair,
    coefficients to 17 digits).
    """

    tableau: ClassVar[DIRKTableau] = KVAERNO5_TABLEAU
