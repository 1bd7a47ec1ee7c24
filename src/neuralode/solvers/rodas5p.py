"""Steinebach's Rodas5P: a 5(4) Rosenbrock pair for stiff problems."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._rosenbrock import Rosenbrock, RosenbrockTableau, from_transformed

# The transformed coefficients (a_ij, C_ij) as published, with 16-17 digits. As in every
# Rodas method the last three stages are at the previous stage's argument plus that
# stage's increment: stage 7 at Σ a_6j U_j + U_6, stage 8 one U_7 further, y1 one U_8
# further (so U_8 is the error estimate and the last two stages sit at t1).
_A6 = ("-7.502846399306121", "2.561846144803919", "-11.627539656261098",
       "-0.18268767659942256", "0.030198172008377946")  # fmt: skip
_A = (
    (),
    ("3.0",),
    ("2.849394379747939", "0.45842242204463923"),
    ("-6.954028509809101", "2.489845061869568", "-10.358996098473584"),
    ("2.8029986275628964", "0.5072464736228206", "-0.3988312541770524", "-0.04721187230404641"),
    _A6,
    (*_A6, "1"),
    (*_A6, "1", "1"),
)
_C = (
    (),
    ("-14.155112264123755",),
    ("-17.97296035885952", "-2.859693295451294"),
    ("147.12150275711716", "-1.41221402718213", "71.68940251302358"),
    ("165.43517024871676", "-0.4592823456491126", "42.90938336958603", "-5.961986721573306"),
    ("24.854864614690072", "-3.0009227002832186", "47.4931110020768", "5.5814197821558125",
     "-0.6610691825249471"),
    ("30.91273214028599", "-3.1208243349937974", "77.79954646070892", "34.28646028294783",
     "-19.097331116725623", "-28.087943162872662"),
    ("37.80277123390563", "-3.2571969029072276", "112.26918849496327", "66.9347231244047",
     "-40.06618937091002", "-54.66780262877968", "-9.48861652309627"),
)  # fmt: skip

RODAS5P_TABLEAU: RosenbrockTableau = from_transformed(
    "Rodas5P",
    "0.21193756319429014",
    _A,
    _C,
    m=(*_A6, "1", "1", "1"),
    m_hat=(*_A6, "1", "1", "0"),
    order=5,
    embedded_order=4,
)


@dataclass(frozen=True)
class Rodas5P(Rosenbrock):
    """Steinebach's Rodas5P: a stiffly accurate, L-stable 5(4) Rosenbrock pair.

    Order 5, embedded order 4, 8 stages (8 evaluations of ``f`` per step, not FSAL), one
    Jacobian and ``∂f/∂t`` (by autograd), one LU factorisation of ``I − hγJ`` and eight
    linear solves per step, no Newton iteration. Cubic Hermite dense output (3rd order;
    costs one more evaluation at ``t1`` when an output falls inside a step). For tight
    tolerances (rtol 1e-4 to 1e-8) on small to moderate stiff systems.

    Reference: G. Steinebach, "Construction of Rosenbrock–Wanner method Rodas5P and
    numerical benchmarks within the Julia Differential Equations package", BIT Numerical
    Mathematics 63 (2023), article 27.
    """

    tableau: ClassVar[RosenbrockTableau] = RODAS5P_TABLEAU
