"""The ESDIRK tableaus: order conditions, embedded orders and stability, exactly.

The same rooted-tree conditions as the explicit tableaus (``test_tableaus``), on the full
Butcher matrix with ``γ`` on the diagonal (Hairer, Nørsett & Wanner I, §II.2 holds for any
Runge–Kutta matrix). Kvaerno3's coefficients are closed forms in an irrational ``γ`` and
Kvaerno5's are printed to 17 digits, so the conditions hold to rounding, not exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import pytest
from test_tableaus import VIOLATION, density, rooted_trees, tree_order, trees_up_to

from neuralode.solvers import IMPLICIT_SOLVERS
from neuralode.solvers._esdirk import ESDIRKTableau
from neuralode.solvers._tableau import _invert

TABLEAUS = tuple(cls.tableau for cls in IMPLICIT_SOLVERS)
TOLERANCE = {"Kvaerno3": 1e-15, "Kvaerno5": 1e-15}


def _ids(tableaus: Sequence[ESDIRKTableau]) -> list[str]:
    return [t.name for t in tableaus]


def _exact(tableau: ESDIRKTableau) -> list[list[Fraction]]:
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


def assert_order(tableau: ESDIRKTableau, weights: Sequence, order: int) -> None:
    a, w = _exact(tableau), [Fraction(x) for x in weights]
    for tree in trees_up_to(order):
        res = residual(a, w, tree)
        assert res <= TOLERANCE[tableau.name], (
            f"{tableau.name}: tree {tree} (order {tree_order(tree)}) residual {res:.3e}"
        )
    worst = max(residual(a, w, tree) for tree in rooted_trees(order + 1))
    assert worst > VIOLATION, f"{tableau.name} also has order {order + 1}"


@pytest.mark.parametrize("tableau", TABLEAUS, ids=_ids(TABLEAUS))
def test_b_has_exactly_the_claimed_order(tableau: ESDIRKTableau) -> None:
    assert_order(tableau, tableau.b, tableau.order)


@pytest.mark.parametrize("tableau", TABLEAUS, ids=_ids(TABLEAUS))
def test_b_hat_has_exactly_the_claimed_embedded_order(tableau: ESDIRKTableau) -> None:
    assert_order(tableau, tableau.b_hat, tableau.embedded_order)


@pytest.mark.parametrize("tableau", TABLEAUS, ids=_ids(TABLEAUS))
def test_stiffly_accurate_and_consistent(tableau: ESDIRKTableau) -> None:
    a = np.array(tableau.matrix(), dtype=float)
    assert np.allclose(a[-1], tableau.b_float, atol=0)  # y1 is the last stage
    assert np.allclose(a.sum(axis=1), tableau.c_float, atol=1e-15)
    assert np.all(np.diag(a)[1:] == tableau.gamma_float) and a[0, 0] == 0


def stability(tableau: ESDIRKTableau, weights: Sequence[float], z: np.ndarray) -> np.ndarray:
    """R(z) = 1 + z bᵀ (I − zA)⁻¹ 1, the method on y' = λy with z = hλ."""
    a = np.array(tableau.matrix(), dtype=float)
    s = a.shape[0]
    b, one = np.array(weights, dtype=float), np.ones(s)
    return np.array([1 + zi * b @ np.linalg.solve(np.eye(s) - zi * a, one) for zi in z])


@pytest.mark.parametrize("tableau", TABLEAUS, ids=_ids(TABLEAUS))
def test_l_stable(tableau: ESDIRKTableau) -> None:
    # A-stable: |R| ≤ 1 on the imaginary axis (and R is analytic in the left half-plane,
    # its poles at 1/γ > 0); L-stable: R(z) → 0 as z → −∞.
    axis = 1j * np.concatenate([-np.logspace(-3, 6, 400), np.logspace(-3, 6, 400)])
    assert np.abs(stability(tableau, tableau.b_float, axis)).max() <= 1 + 1e-12
    left = -np.logspace(-3, 6, 400) + 0j
    assert np.abs(stability(tableau, tableau.b_float, left)).max() <= 1 + 1e-12
    assert abs(stability_exact(tableau, Fraction(-(10**12)))) < 1e-10


def stability_exact(tableau: ESDIRKTableau, z: Fraction) -> float:
    """R(z) in exact arithmetic (in floats, I − zA is too ill-conditioned at large |z|)."""
    a = _exact(tableau)
    s = len(a)
    m = [[Fraction(int(i == j)) - z * a[i][j] for j in range(s)] for i in range(s)]
    inverse = _invert(m)
    x = [sum(row, Fraction(0)) for row in inverse]  # (I − zA)⁻¹ 1
    return float(1 + z * sum(Fraction(bi) * xi for bi, xi in zip(tableau.b, x, strict=True)))


def test_kvaerno3_gamma_is_the_l_stable_root() -> None:
    g = Fraction(TABLEAUS[0].gamma_float)
    assert abs(float(g**3 - 3 * g**2 + Fraction(3, 2) * g - Fraction(1, 6))) < 1e-16


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"c": (0, 0.6, 1)}, "does not sum"),
        ({"gamma": 0.0}, "gamma must be positive"),
        ({"b_hat": (0.5, 0.5, 0.5)}, "b_hat must have 3 entries summing to 1"),
        ({"a": ((0.25,),)}, "rows of lengths"),
    ],
)
def test_tableau_validation_names_the_problem(change, message) -> None:
    spec = {
        "name": "Toy",
        "gamma": 0.25,
        "c": (0, 0.5, 1),
        "a": ((0.25,), (0.5, 0.25)),
        "b_hat": (0.5, 0.5, 0),
        "order": 1,
        "embedded_order": 1,
    }
    ESDIRKTableau(**spec)  # the unchanged spec is valid
    with pytest.raises(ValueError, match=message):
        ESDIRKTableau(**{**spec, **change})
