"""The implicit tableaus (DIRK and FIRK): order conditions, embedded orders, stability.

The same rooted-tree conditions as the explicit tableaus (``test_tableaus``), on the full
Butcher matrix with ``γ`` on the diagonal (Hairer, Nørsett & Wanner I, §II.2 holds for any
Runge–Kutta matrix), in exact arithmetic on the stored coefficients. Tableaus of exact
fractions satisfy them exactly; the others (closed forms in √2 or in Kvaerno3's
irrational ``γ``, Kvaerno5's 17-digit decimals) to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest
from test_tableaus import VIOLATION, density, rooted_trees, tree_order, trees_up_to

from neuralode.solvers import IMPLICIT_SOLVERS
from neuralode.solvers._dirk import DIRKTableau
from neuralode.solvers._firk import FIRKTableau
from neuralode.solvers._tableau import invert_exact

TABLEAUS = tuple(cls.tableau for cls in IMPLICIT_SOLVERS)
EMBEDDED = tuple(t for t in TABLEAUS if t.adaptive)
# R(∞) = 0 (L-stable) for all but the Gauss methods and the trapezoidal rule (|R(∞)| = 1).
A_ONLY = ("ImplicitMidpoint", "Trapezoid", "GaussLegendre4", "GaussLegendre6")
L_STABLE = tuple(t for t in TABLEAUS if t.name not in A_ONLY)
TOLERANCE = {
    "ImplicitEuler": 0.0,
    "ImplicitMidpoint": 0.0,
    "Trapezoid": 0.0,
    "SDIRK2": 1e-16,
    "TRBDF2": 1e-16,
    "RadauIIA3": 0.0,
    "RadauIIA5": 1e-15,
    "GaussLegendre4": 1e-15,
    "GaussLegendre6": 1e-15,
    "Kvaerno3": 1e-15,
    "Kvaerno5": 1e-15,
}


def _ids(tableaus: Sequence[DIRKTableau]) -> list[str]:
    return [t.name for t in tableaus]


def _exact(tableau: DIRKTableau) -> list[list[Fraction]]:
    return [[Fraction(x) for x in row] for row in tableau.matrix()]


def elementary_weights(a: list[list[Fraction]], tree: tuple) -> list[Fraction]:
    """Φ_i(τ) = Π over subtrees σ of ``(A Φ(σ))_i``, for a full matrix ``A``."""
    phi = [Fraction(1)] * len(a)
    for child in tree:
        inner = elementary_weights(a, child)
        for i, row in enumerate(a):
            phi[i] *= sum((x * y for x, y in zip(row, inner, strict=True) if x), Fraction(0))
    return phi


def residual(a: list[list[Fraction]], weights: Sequence[Fraction], tree: tuple) -> float:
    phi = elementary_weights(a, tree)
    value = sum((w * p for w, p in zip(weights, phi, strict=True)), Fraction(0))
    return abs(float(value - Fraction(1, density(tree))))


def assert_order(tableau: DIRKTableau, weights: Sequence, order: int) -> None:
    a, w = _exact(tableau), [Fraction(x) for x in weights]
    for tree in trees_up_to(order):
        res = residual(a, w, tree)
        assert res <= TOLERANCE[tableau.name], (
            f"{tableau.name}: tree {tree} (order {tree_order(tree)}) residual {res:.3e}"
        )
    worst = max(residual(a, w, tree) for tree in rooted_trees(order + 1))
    assert worst > VIOLATION, f"{tableau.name} also has order {order + 1}"


@pytest.mark.parametrize("tableau", TABLEAUS, ids=_ids(TABLEAUS))
def test_b_has_exactly_the_claimed_order(tableau: DIRKTableau) -> None:
    assert_order(tableau, tableau.b, tableau.order)


@pytest.mark.parametrize("tableau", EMBEDDED, ids=_ids(EMBEDDED))
def test_b_hat_has_exactly_the_claimed_embedded_order(tableau: DIRKTableau) -> None:
    assert_order(tableau, tableau.b_hat, tableau.embedded_order)


@pytest.mark.parametrize("tableau", EMBEDDED, ids=_ids(EMBEDDED))
def test_adaptive_ones_are_stiffly_accurate_esdirk(tableau: DIRKTableau) -> None:
    a = np.array(tableau.matrix(), dtype=float)
    assert tableau.stiffly_accurate and np.array_equal(a[-1], tableau.b_float)
    assert np.allclose(a.sum(axis=1), tableau.c_float, atol=1e-15)
    assert np.all(np.diag(a)[1:] == tableau.gamma) and a[0, 0] == 0 and tableau.explicit_first


def test_gauss_and_trapezoid_are_a_stable_but_not_l_stable() -> None:
    for tableau in TABLEAUS:
        if tableau not in L_STABLE:
            assert abs(stability_exact(tableau, Fraction(-(10**12)))) == pytest.approx(1.0)


def stability(tableau: DIRKTableau, weights: Sequence[float], z: np.ndarray) -> np.ndarray:
    """R(z) = 1 + z bᵀ (I − zA)⁻¹ 1, the method on y' = λy with z = hλ."""
    a = np.array(tableau.matrix(), dtype=float)
    s = a.shape[0]
    b, one = np.array(weights, dtype=float), np.ones(s)
    return np.array([1 + zi * b @ np.linalg.solve(np.eye(s) - zi * a, one) for zi in z])


@pytest.mark.parametrize("tableau", L_STABLE, ids=_ids(L_STABLE))
def test_l_stable(tableau: DIRKTableau) -> None:
    # A-stable: |R| ≤ 1 on the imaginary axis (and R is analytic in the left half-plane,
    # its poles at 1/γ > 0); L-stable: R(z) → 0 as z → −∞.
    axis = 1j * np.concatenate([-np.logspace(-3, 6, 400), np.logspace(-3, 6, 400)])
    assert np.abs(stability(tableau, tableau.b_float, axis)).max() <= 1 + 1e-12
    left = -np.logspace(-3, 6, 400) + 0j
    assert np.abs(stability(tableau, tableau.b_float, left)).max() <= 1 + 1e-12
    assert abs(stability_exact(tableau, Fraction(-(10**12)))) < 1e-10


def stability_exact(tableau: DIRKTableau, z: Fraction) -> float:
    """R(z) in exact arithmetic (in floats, I − zA is too ill-conditioned at large |z|)."""
    a = _exact(tableau)
    s = len(a)
    m = [[Fraction(int(i == j)) - z * a[i][j] for j in range(s)] for i in range(s)]
    inverse = invert_exact(m)
    x = [sum(row, Fraction(0)) for row in inverse]  # (I − zA)⁻¹ 1
    return float(1 + z * sum(Fraction(bi) * xi for bi, xi in zip(tableau.b, x, strict=True)))


def test_gauss_legendre4_nodes_are_symmetric() -> None:
    # torchdiffeq's development tableau has 1/2 − √3/6 twice, which loses the order.
    gl4 = next(t for t in TABLEAUS if t.name == "GaussLegendre4")
    assert gl4.c_float[0] + gl4.c_float[1] == pytest.approx(1.0, abs=1e-15)
    wrong = FIRKTableau(
        name="GaussLegendre4", c=(gl4.c[0], gl4.c[0]),
        a=(gl4.a[0], (gl4.a[0][0] + gl4.a[0][1] - 0.25, 0.25)), b=gl4.b, order=4,
    )  # fmt: skip
    worst = max(residual(_exact(wrong), _fr(wrong.b), tree) for tree in trees_up_to(3))
    assert worst > 1e-3


def _fr(weights):
    return [Fraction(x) for x in weights]


def test_kvaerno3_gamma_is_the_l_stable_root() -> None:
    g = Fraction(next(t for t in TABLEAUS if t.name == "Kvaerno3").gamma)
    assert abs(float(g**3 - 3 * g**2 + Fraction(3, 2) * g - Fraction(1, 6))) < 1e-16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"c": (0, 0.6, 1)}, "does not sum"),
        ({"a": ((0,), (0.25, 0.25), (0.5, 0.25, 0.5))}, "diagonal must be one positive gamma"),
        ({"b_hat": (0.5, 0.5, 0.5)}, "b_hat must have 3 entries summing to 1"),
        ({"a": ((0,), (0.25, 0.25))}, "rows of lengths"),
        ({"c": (0.1, 0.5, 1), "a": ((0.1,), (0.25, 0.25), (0.5, 0.25, 0.25))}, "diagonal"),
        ({"embedded_order": None}, "give b_hat and embedded_order together"),
    ],
)
def test_tableau_validation_names_the_problem(change, message) -> None:
    spec = {
        "name": "Toy",
        "c": (0, 0.5, 1),
        "a": ((0,), (0.25, 0.25), (0.5, 0.25, 0.25)),
        "b": (0.5, 0.25, 0.25),
        "order": 1,
        "b_hat": (0.5, 0.5, 0),
        "embedded_order": 1,
    }
    tableau = DIRKTableau(**spec)  # the unchanged spec is valid
    assert tableau.explicit_first and tableau.stiffly_accurate and tableau.gamma == 0.25
    with pytest.raises(ValueError, match=message):
        DIRKTableau(**{**spec, **change})
