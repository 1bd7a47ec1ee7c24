"""Tsitouras 5(4)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F
from typing import ClassVar

from ._explicit_rk import ExplicitRK
from ._tableau import ButcherTableau

# Coefficients to 30 significant digits, rounded from the 85-digit values OrdinaryDiffEq.jl
# lists for this pair (``Tsit5ConstantCache``); in 100-digit arithmetic those satisfy every
# order condition to 1e-82, and they round to the double-precision values other codes use.
# At 30 digits the conditions hold to about 1e-29, far below double rounding.

# The 5th-order solution: row 7 of ``a`` (FSAL, so these are also the weights ``b``).
_A7 = (
    F("0.0964607668180652295181673131651"),
    F("0.01"),
    F("0.479889650414499574775249532291"),
    F("1.37900857410374189319227482186"),
    F("-3.29006951543608067990104758571"),
    F("2.3247105240997739824153559184"),
)

# The embedded 4th-order weights themselves. Many codes store only the difference of the
# two solutions (OrdinaryDiffEq.jl's ``btilde = b_hat - b``, e.g. -0.00178001105222577 for
# stage 1), and that vector is easily mistaken for b_hat; ``ButcherTableau`` wants the
# weights (b_hat_7 = +1/66), which satisfy the 4th-order conditions, whereas the difference
# sums to 0 and fails even the first (tests/solvers/test_tableaus.py checks both).
_B_HAT = (
    F("0.0946807557658394580747887625576"),
    F("0.00918356554034325309677636393665"),
    F("0.487770528424761570785564259963"),
    F("1.23429756693047898565510967388"),
    F("-2.70771234998352545488110997506"),
    F("1.86662841817058703575371939957"),
    F(1, 66),
)

# Tsitouras' continuous extension b_i(θ) from the paper, expanded: row i holds the
# coefficients of θ, θ², θ³, θ⁴. The paper fixes b_2(θ) = 0.1017 θ² (θ² − 2.19665… θ +
# 1.29498…) = 0.1317 θ² − 0.2234 θ³ + 0.1017 θ⁴ and b_7(θ) = 2.5 θ² (θ − 1)(θ − 0.6); the
# other rows then follow uniquely from the order-4 conditions, and were recomputed from them
# in 100-digit arithmetic (they match the paper's 16 printed digits). b_i(1) = b_i and
# b_i'(1) = [i = 7], so the interpolant is C¹ across steps.
_B_DENSE = (
    (
        1,
        F("-2.76370619727482586867298836303"),
        F("2.91325546182191265541864597872"),
        F("-1.05308849772902155722749030252"),
    ),
    (0, F("0.1317"), F("-0.2234"), F("0.1017")),
    (
        0,
        F("3.93029623689475151740929366946"),
        F("-5.94103387213150473571758920976"),
        F("2.49062728565125279308354507259"),
    ),
    (
        0,
        F("-12.4110771669336770387304733967"),
        F("30.3381886302823216502300460809"),
        F("-16.5481028892449027183072978623"),
    ),
    (
        0,
        F("37.5093134165110391789784391111"),
        F("-88.178904894766401077561068565"),
        F("47.3795219628192812186815818682"),
    ),
    (
        0,
        F("-27.8965262891972877889842710208"),
        F("65.0918946747936715076299657152"),
        F("-34.870657861496609736230338776"),
    ),
    (0, F(3, 2), -4, F(5, 2)),
)

TSIT5_TABLEAU = ButcherTableau(
    name="Tsit5",
    c=(0, F("0.161"), F("0.327"), F("0.9"), F("0.980025540904509685729810286287"), 1, 1),
    a=(
        (F("0.161"),),
        (F("-0.00848065549235698854442687425023"), F("0.33548065549235698854442687425")),
        (
            F("2.89715305710549343213043259419"),
            F("-6.35944848997507484314815991238"),
            F("4.36229543286958141101772731819"),
        ),
        (
            F("5.32586482843925660442887792084"),
            F("-11.7488835640628278777471703398"),
            F("7.49553934288983620830460478456"),
            F("-0.0924950663617552492565020793321"),
        ),
        (
            F("5.86145544294642002865925148698"),
            F("-12.9209693178471092917061186818"),
            F("8.15936789857615864318040079454"),
            F("-0.0715849732814009972245305425258"),
            F("-0.0282690503940683829090030572127"),
        ),
        _A7,
    ),
    b=(*_A7, 0),
    b_hat=_B_HAT,
    order=5,
    embedded_order=4,
    b_dense=_B_DENSE,
    dense_order=4,
)


@dataclass(frozen=True)
class Tsit5(ExplicitRK):
    """Tsitouras 5(4): a Dormand–Prince-like pair with smaller error constants.

    Order 5 (local extrapolation), embedded order 4, 7 stages, FSAL (6 evaluations per
    step), 4th-order continuous extension (the paper's own quartic weights b_i(θ), C¹
    across steps). Derived from only the first column simplifying assumption, which frees
    parameters to minimise the 5th-order error coefficients. The embedded weights are the
    4th-order solution itself, not the difference the paper tabulates. Reference:
    Ch. Tsitouras, "Runge–Kutta pairs of order 5(4) satisfying only the first column
    simplifying assumption", Comput. Math. Appl. 62 (2011), 770–775.
    """

    tableau: ClassVar[ButcherTableau] = TSIT5_TABLEAU
