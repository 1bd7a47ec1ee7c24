"""Prince–Dormand 8(7), arranged FSAL as torchdiffeq's ``dopri8``."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction as F
from typing import ClassVar

from ._explicit_rk import ExplicitRK
from ._tableau import ButcherTableau

# RK8(7)13M as printed by Prince & Dormand (1981). The paper's coefficients are rational
# approximations (about 18 digits) of irrational values, so the order conditions hold to
# about 1e-17, not exactly. torchdiffeq 0.2.5 (torchdiffeq/_impl/dopri8.py) uses the same
# numbers and appends a 14th stage at c = 1 whose row is the 8th-order weights: that stage
# is f(t1, y1), the next step's first stage, so the step is FSAL.

# 8th-order weights of the 13 original stages; the appended stage gets weight 0.
_B13 = (
    F(14005451, 335480064),
    0,
    0,
    0,
    0,
    F(-59238493, 1068277825),
    F(181606767, 758867731),
    F(561292985, 797845732),
    F(-1041891430, 1371343529),
    F(760417239, 1151165299),
    F(118820643, 751138087),
    F(-528747749, 2220607170),
    F(1, 4),
)
_B = (*_B13, 0)

# 7th-order embedded weights (zero on stage 13 and on the appended stage). torchdiffeq
# stores the difference ``c_error = b - b_hat``.
_B_HAT = (
    F(13451932, 455176623),
    0,
    0,
    0,
    0,
    F(-808719846, 976000145),
    F(1757004468, 5645159321),
    F(656045339, 265891186),
    F(-3867574721, 1518517206),
    F(465885868, 322736535),
    F(53011238, 667516719),
    F(2, 45),
    0,
    0,
)

# Bogacki & Shampine's interpolant for RK8(7)13M, which needs no extra stages (it uses the
# appended FSAL stage): row i holds the coefficients of θ, θ², …, θ⁶ in b_i(θ), with the
# 20-digit decimals torchdiffeq transcribes (it evaluates them only at θ = 1/2, as the
# midpoint of a quartic). Verified to satisfy every order condition up to order 5 at any θ
# (to about 1e-18) and to violate order 6; see tests/solvers/test_tableaus.py. Rows 1–4 are zero.
_BS_POLYNOMIALS = {
    0: (
        "1.0",
        "-6.6910181737837595697",
        "19.9990069333683970610",
        "-30.0610568289666450593",
        "22.1396504998094068976",
        "-6.3448349392860401388",
    ),
    5: (
        "0",
        "-7.6142658045872677172",
        "52.2273532792945524050",
        "-121.4999627731334642623",
        "116.4422149550342161651",
        "-39.6107919852202505218",
    ),
    6: (
        "0",
        "10.7281392630428866124",
        "-46.8919164181093621583",
        "83.1721004639847717481",
        "-67.1451318825957197185",
        "20.3761213808791436958",
    ),
    7: (
        "0",
        "0.5526637063753648783",
        "-0.1890893225010595467",
        "9.5724507555993664382",
        "-16.5672243527496524646",
        "7.3347098826795362023",
    ),
    8: (
        "0",
        "4.2186562625665153803",
        "-35.7075975946222072821",
        "87.8406057677205645007",
        "-89.9916014847245016028",
        "32.8801774352459155182",
    ),
    9: (
        "0",
        "-0.6627209125361597559",
        "6.2736448083240352160",
        "-17.4152107770762969005",
        "22.6237489648532849093",
        "-10.1588990526426760954",
    ),
    10: (
        "0",
        "-1.2636789001135462218",
        "10.3160881272450748458",
        "-28.5903289514790976966",
        "32.2362340167355370113",
        "-12.5401268098782561200",
    ),
    11: (
        "0",
        "5.4106037898590422230",
        "-34.7650769866611817349",
        "81.6630950584341412934",
        "-82.1020315488359848644",
        "29.5553001484516038033",
    ),
    12: (
        "0",
        "-7.0321379067945741781",
        "47.7457971078225540396",
        "-114.9375291377009418170",
        "116.2662185791119533462",
        "-41.7923486424390588923",
    ),
    13: (
        "0",
        "2.3537586759714983486",
        "-19.0082099341608028453",
        "50.2558364226176017553",
        "-53.9020777466385396792",
        "20.3006925822100825485",
    ),
}


def _bs_dense() -> list[list[F]]:
    """Bogacki–Shampine's b_i(θ), pinned to ``y1`` and ``f1`` at θ = 1.

    As published, the polynomials miss ``b_i(1) = b_i`` by up to 1e-12 and
    ``b_i'(1) = [i = 13]`` by up to 3e-11 (presumably fitted to slightly different digits
    of the method). Adding ``δ_i (3θ² − 2θ³) + ε_i (θ³ − θ²)`` with ``δ_i = b_i − b_i(1)`` and
    ``ε_i = [i = 13] − b_i'(1)`` makes both hold exactly and keeps ``b_i(0) = 0``,
    ``b_i'(0) = [i = 0]``, so the interpolant is continuous and C¹ across steps. The order
    conditions survive: ``δ`` is the difference of two weight vectors that both satisfy them,
    and ``ε`` that of ``b'(1)`` and the FSAL stage's unit vector, which both give
    ``|τ| / γ(τ)`` on every tree τ up to order 5. The corrections are below 3e-11.
    """
    rows = [[F(0)] * 6 for _ in _B]
    for i, coeffs in _BS_POLYNOMIALS.items():
        rows[i] = [F(x) for x in coeffs]
    for i, row in enumerate(rows):
        delta = F(_B[i]) - sum(row)
        eps = (1 if i == len(rows) - 1 else 0) - sum((j + 1) * x for j, x in enumerate(row))
        row[1] += 3 * delta - eps
        row[2] += eps - 2 * delta
    return rows


DOPRI8_TABLEAU = ButcherTableau(
    name="Dopri8",
    c=(
        0,
        F(1, 18),
        F(1, 12),
        F(1, 8),
        F(5, 16),
        F(3, 8),
        F(59, 400),
        F(93, 200),
        F(5490023248, 9719169821),
        F(13, 20),
        F(1201146811, 1299019798),
        1,
        1,
        1,
    ),
    a=(
        (F(1, 18),),
        (F(1, 48), F(1, 16)),
        (F(1, 32), 0, F(3, 32)),
        (F(5, 16), 0, F(-75, 64), F(75, 64)),
        (F(3, 80), 0, 0, F(3, 16), F(3, 20)),
        (
            F(29443841, 614563906),
            0,
            0,
            F(77736538, 692538347),
            F(-28693883, 1125000000),
            F(23124283, 1800000000),
        ),
        (
            F(16016141, 946692911),
            0,
            0,
            F(61564180, 158732637),
            F(22789713, 633445777),
            F(545815736, 2771057229),
            F(-180193667, 1043307555),
        ),
        (
            F(39632708, 573591083),
            0,
            0,
            F(-433636366, 683701615),
            F(-421739975, 2616292301),
            F(100302831, 723423059),
            F(790204164, 839813087),
            F(800635310, 3783071287),
        ),
        (
            F(246121993, 1340847787),
            0,
            0,
            F(-37695042795, 15268766246),
            F(-309121744, 1061227803),
            F(-12992083, 490766935),
            F(6005943493, 2108947869),
            F(393006217, 1396673457),
            F(123872331, 1001029789),
        ),
        (
            F(-1028468189, 846180014),
            0,
            0,
            F(8478235783, 508512852),
            F(1311729495, 1432422823),
            F(-10304129995, 1701304382),
            F(-48777925059, 3047939560),
            F(15336726248, 1032824649),
            F(-45442868181, 3398467696),
            F(3065993473, 597172653),
        ),
        (
            F(185892177, 718116043),
            0,
            0,
            F(-3185094517, 667107341),
            F(-477755414, 1098053517),
            F(-703635378, 230739211),
            F(5731566787, 1027545527),
            F(5232866602, 850066563),
            F(-4093664535, 808688257),
            F(3962137247, 1805957418),
            F(65686358, 487910083),
        ),
        (
            F(403863854, 491063109),
            0,
            0,
            F(-5068492393, 434740067),
            F(-411421997, 543043805),
            F(652783627, 914296604),
            F(11173962825, 925320556),
            F(-13158990841, 6184727034),
            F(3936647629, 1978049680),
            F(-160528059, 685178525),
            F(248638103, 1413531060),
            0,
        ),
        _B13,
    ),
    b=_B,
    b_hat=_B_HAT,
    order=8,
    embedded_order=7,
    b_dense=_bs_dense(),
    dense_order=5,
)


@dataclass(frozen=True)
class Dopri8(ExplicitRK):
    """Prince–Dormand 8(7) (RK8(7)13M), the method torchdiffeq calls ``dopri8``.

    Order 8 (local extrapolation), embedded order 7, 13 stages plus an appended FSAL stage
    ``f(t1, y1)`` (14 tableau rows, 13 evaluations per step, as in torchdiffeq). Dense
    output: Bogacki & Shampine's sextic continuous extension of order 5, which uses no extra
    stages; it is C¹ across steps and at θ = 1/2 agrees (to 4e-12 in the weights) with
    the midpoint torchdiffeq interpolates through. torchdiffeq instead fits a quartic
    through ``y0, f0, y1, f1`` and that midpoint, which is only order 4, so dense output
    differs from torchdiffeq's by ``O(dt⁵)`` away from θ ∈ {0, 1/2, 1} (to reproduce
    torchdiffeq, pass ``_BS_POLYNOMIALS`` evaluated at θ = 1/2 to ``dense_from_midpoint``
    and set ``dense_order=4``).
    The coefficients are the paper's rational approximations, accurate to about 1e-17.
    References: Prince & Dormand, "High order embedded Runge–Kutta formulae", J. Comput.
    Appl. Math. 7 (1981), 67–75; Bogacki & Shampine, "Interpolating high-order
    Runge–Kutta formulas", Comput. Math. Appl. 20 (1990).
    """

    tableau: ClassVar[ButcherTableau] = DOPRI8_TABLEAU
