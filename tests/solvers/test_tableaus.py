"""Order conditions for every Butcher tableau, checked with Butcher's rooted trees.

A Runge–Kutta method with weights ``b`` has order ``p`` iff ``Σ_i b_i Φ_i(τ) = 1/γ(τ)`` for
every rooted tree ``τ`` with at most ``p`` nodes, where ``Φ_i`` is the elementary weight
and ``γ`` the density of the tree (Hairer, Nørsett & Wanner I, §II.2). A continuous
extension ``b_i(θ)`` has order ``q`` iff ``Σ_i b_i(θ) Φ_i(τ) = θ^|τ|/γ(τ)`` for
``|τ| ≤ q`` and every ``θ`` (ibid. §II.6). Everything is evaluated in exact rational
arithmetic on the stored coefficients (``Fraction(x)`` of a float is exact too), so a
residual measures the coefficients themselves, never rounding in the check. Tableaus whose
coefficients are exact fractions must satisfy their conditions exactly; the decimal
(Tsit5) and rational-approximation (Dopri8) ones to a tolerance matching their digits.
Each claimed order is also shown to be the real one: some condition of the next order fails.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import cache
from itertools import combinations_with_replacement, product

import pytest

from neuralode.solvers._tableau import ButcherTableau
from neuralode.solvers.adaptive_heun import ADAPTIVE_HEUN_TABLEAU
from neuralode.solvers.bosh3 import BOSH3_TABLEAU
from neuralode.solvers.dopri5 import DOPRI5_TABLEAU, DOPRI5_TORCHDIFFEQ_TABLEAU
from neuralode.solvers.dopri8 import DOPRI8_TABLEAU
from neuralode.solvers.fehlberg2 import FEHLBERG2_TABLEAU
from neuralode.solvers.fixed import (
    EULER_TABLEAU,
    HEUN2_TABLEAU,
    HEUN3_TABLEAU,
    MIDPOINT_TABLEAU,
    RK4_TABLEAU,
)
from neuralode.solvers.tsit5 import TSIT5_TABLEAU

# Largest tree order the checker generates: Dopri8 needs order 8 and a failing order 9.
MAX_TREE_ORDER = 9

# Allowed |residual| of an order condition, per tableau. Zero means exactly satisfied.
# Tsit5 is stored to 30 significant digits (residuals ~1e-29); Dopri8 uses Prince &
# Dormand's ~18-digit rational approximations of irrational values (residuals ~1e-17).
TOLERANCE = {
    "Euler": 0.0,
    "Midpoint": 0.0,
    "Heun2": 0.0,
    "Heun3": 0.0,
    "RK4": 0.0,
    "AdaptiveHeun": 0.0,
    "Fehlberg2": 0.0,
    "Bosh3": 0.0,
    "Dopri5": 0.0,
    "Dopri5 (torchdiffeq's estimate)": 0.0,
    "Tsit5": 1e-24,
    "Dopri8": 1e-15,
}
# A condition counts as violated (the order really stops there) above this residual.
VIOLATION = 1e-8

ALL_TABLEAUS = (
    EULER_TABLEAU,
    MIDPOINT_TABLEAU,
    HEUN2_TABLEAU,
    HEUN3_TABLEAU,
    RK4_TABLEAU,
    ADAPTIVE_HEUN_TABLEAU,
    FEHLBERG2_TABLEAU,
    BOSH3_TABLEAU,
    DOPRI5_TABLEAU,
    DOPRI5_TORCHDIFFEQ_TABLEAU,
    TSIT5_TABLEAU,
    DOPRI8_TABLEAU,
)
EMBEDDED = tuple(t for t in ALL_TABLEAUS if t.b_hat is not None)
DENSE = tuple(t for t in ALL_TABLEAUS if t.b_dense is not None)
THETAS = (Fraction(1, 5), Fraction(1, 2), Fraction(3, 4), Fraction(19, 20))


def _ids(tableaus: Sequence[ButcherTableau]) -> list[str]:
    return [t.name for t in tableaus]


# --- rooted trees -------------------------------------------------------------------------
# A rooted tree is the sorted tuple of the subtrees hanging from its root; the single node
# is (). Sorting the children recursively makes the representation canonical.
Tree = tuple


def _partitions(n: int, largest: int) -> list[tuple[int, ...]]:
    """Partitions of ``n`` into parts of at most ``largest``, in non-increasing order."""
    if n == 0:
        return [()]
    return [
        (part, *rest)
        for part in range(min(n, largest), 0, -1)
        for rest in _partitions(n - part, part)
    ]


@cache
def rooted_trees(n: int) -> tuple[Tree, ...]:
    """All rooted trees with ``n`` nodes, each exactly once."""
    if n == 1:
        return ((),)
    found = set()
    # The root's subtrees have orders summing to n - 1: choose a multiset of trees of each
    # order appearing in a partition of n - 1.
    for partition in _partitions(n - 1, n - 1):
        groups = [
            combinations_with_replacement(rooted_trees(order), count)
            for order, count in Counter(partition).items()
        ]
        for choice in product(*groups):
            found.add(tuple(sorted(tree for group in choice for tree in group)))
    return tuple(sorted(found))


@cache
def tree_order(tree: Tree) -> int:
    return 1 + sum(tree_order(child) for child in tree)


@cache
def density(tree: Tree) -> int:
    """γ(τ): the order of τ times the densities of its subtrees."""
    gamma = tree_order(tree)
    for child in tree:
        gamma *= density(child)
    return gamma


def trees_up_to(n: int) -> list[Tree]:
    return [tree for k in range(1, n + 1) for tree in rooted_trees(k)]


# --- elementary weights -------------------------------------------------------------------


@cache
def _matrix(tableau: ButcherTableau) -> tuple[tuple[Fraction, ...], ...]:
    s = tableau.stages
    rows = [(Fraction(0),) * s]
    for row in tableau.a:
        rows.append(tuple(Fraction(x) for x in row) + (Fraction(0),) * (s - len(row)))
    return tuple(rows)


@cache
def elementary_weights(tableau: ButcherTableau, tree: Tree) -> tuple[Fraction, ...]:
    """Φ_i(τ) for every stage i: the product over subtrees σ of ``(A Φ(σ))_i``."""
    phi = [Fraction(1)] * tableau.stages
    for child in tree:
        for i, x in enumerate(_a_times_weights(tableau, child)):
            phi[i] *= x
    return tuple(phi)


@cache
def _a_times_weights(tableau: ButcherTableau, tree: Tree) -> tuple[Fraction, ...]:
    """``A Φ(τ)``, shared by every tree that has τ as a subtree."""
    inner = elementary_weights(tableau, tree)
    return tuple(
        sum((x * y for x, y in zip(row, inner, strict=True) if x), Fraction(0))
        for row in _matrix(tableau)
    )


def residual(
    tableau: ButcherTableau, weights: Sequence[Fraction], tree: Tree, theta: Fraction = Fraction(1)
) -> Fraction:
    """``Σ_i w_i Φ_i(τ) − θ^|τ|/γ(τ)``: zero iff the weights satisfy the condition of τ."""
    phi = elementary_weights(tableau, tree)
    value = sum((w * p for w, p in zip(weights, phi, strict=True) if w), Fraction(0))
    return value - theta ** tree_order(tree) / density(tree)


def max_residual(
    tableau: ButcherTableau,
    weights: Sequence[Fraction],
    trees: Sequence[Tree],
    theta: Fraction = Fraction(1),
) -> float:
    return max(abs(float(residual(tableau, weights, tree, theta))) for tree in trees)


def exact_weights(weights: Sequence[float | int | Fraction]) -> list[Fraction]:
    return [Fraction(w) for w in weights]


def dense_weights_exact(tableau: ButcherTableau, theta: Fraction) -> list[Fraction]:
    """``b_i(θ) = Σ_j b_dense[i][j] θ^(j+1)`` in exact arithmetic."""
    assert tableau.b_dense is not None
    return [
        sum((Fraction(x) * theta ** (j + 1) for j, x in enumerate(row)), Fraction(0))
        for row in tableau.b_dense
    ]


def dense_derivative_exact(tableau: ButcherTableau, theta: Fraction) -> list[Fraction]:
    """``b_i'(θ)`` in exact arithmetic."""
    assert tableau.b_dense is not None
    return [
        sum((Fraction(x) * (j + 1) * theta**j for j, x in enumerate(row)), Fraction(0))
        for row in tableau.b_dense
    ]


def assert_order(
    tableau: ButcherTableau,
    label: str,
    weights: Sequence[Fraction] | Callable[[Fraction], Sequence[Fraction]],
    order: int,
    thetas: Sequence[Fraction] = (Fraction(1),),
) -> None:
    """All conditions up to ``order`` hold (at every θ) and some of ``order + 1`` fails.

    ``weights`` is a weight vector, or a function of θ for a continuous extension.
    """
    tol = TOLERANCE[tableau.name]
    weights_at = {theta: _at(weights, theta) for theta in thetas}
    for theta, w in weights_at.items():
        for tree in trees_up_to(order):
            res = residual(tableau, w, tree, theta)
            assert abs(float(res)) <= tol and (tol > 0 or res == 0), (
                f"{tableau.name} {label}: condition of tree {tree} (order {tree_order(tree)}) "
                f"fails at θ={theta}, residual {float(res):.3e}"
            )
    # Stop at the first failing condition: evaluating all 286 trees of order 9 for the
    # 14 stages of Dopri8 in exact arithmetic would take most of this file's time budget.
    violated = next(
        (
            (tree, theta)
            for theta, w in weights_at.items()
            for tree in rooted_trees(order + 1)
            if abs(float(residual(tableau, w, tree, theta))) > VIOLATION
        ),
        None,
    )
    assert violated is not None, (
        f"{tableau.name} {label} also satisfies every order-{order + 1} condition: "
        f"the claimed order {order} is too low"
    )


def _at(
    weights: Sequence[Fraction] | Callable[[Fraction], Sequence[Fraction]], theta: Fraction
) -> Sequence[Fraction]:
    return weights(theta) if callable(weights) else weights


# --- the tree machinery itself ------------------------------------------------------------


def test_tree_counts_match_oeis_a000081() -> None:
    counts = [len(rooted_trees(n)) for n in range(1, MAX_TREE_ORDER + 1)]
    assert counts == [1, 1, 2, 4, 9, 20, 48, 115, 286]


def test_densities_of_bushy_and_tall_trees() -> None:
    tall: Tree = ()
    for n in range(2, 8):
        bushy = ((),) * (n - 1)  # n - 1 leaves on the root: γ = n
        tall = (tall,)  # a path of n nodes: γ = n!
        assert density(bushy) == n
        assert density(tall) == math.factorial(n)


def test_checker_finds_the_classical_conditions() -> None:
    # Order 3 for RK4: Σ b c² = 1/3 and Σ b a c = 1/6, written out by hand.
    b = exact_weights(RK4_TABLEAU.b)
    c = exact_weights(RK4_TABLEAU.c)
    a = _matrix(RK4_TABLEAU)
    ac = [sum(x * y for x, y in zip(row, c, strict=True)) for row in a]
    assert sum(bi * ci * ci for bi, ci in zip(b, c, strict=True)) == Fraction(1, 3)
    assert sum(bi * x for bi, x in zip(b, ac, strict=True)) == Fraction(1, 6)
    assert residual(RK4_TABLEAU, b, ((), ())) == 0
    assert residual(RK4_TABLEAU, b, (((),),)) == 0


# --- every tableau ------------------------------------------------------------------------


@pytest.mark.parametrize("tableau", ALL_TABLEAUS, ids=_ids(ALL_TABLEAUS))
def test_b_has_exactly_the_claimed_order(tableau: ButcherTableau) -> None:
    assert_order(tableau, "b", exact_weights(tableau.b), tableau.order)


@pytest.mark.parametrize("tableau", EMBEDDED, ids=_ids(EMBEDDED))
def test_b_hat_has_exactly_the_claimed_embedded_order(tableau: ButcherTableau) -> None:
    assert tableau.b_hat is not None and tableau.embedded_order is not None
    assert_order(tableau, "b_hat", exact_weights(tableau.b_hat), tableau.embedded_order)


@pytest.mark.parametrize("tableau", DENSE, ids=_ids(DENSE))
def test_continuous_extension_has_exactly_the_claimed_order(tableau: ButcherTableau) -> None:
    assert tableau.dense_order is not None
    assert_order(
        tableau,
        "b(θ)",
        lambda theta: dense_weights_exact(tableau, theta),
        tableau.dense_order,
        THETAS,
    )


@pytest.mark.parametrize("tableau", DENSE, ids=_ids(DENSE))
def test_continuous_extension_ends_at_y1_and_is_c1(tableau: ButcherTableau) -> None:
    tol = TOLERANCE[tableau.name]
    s = tableau.stages
    at_one = dense_weights_exact(tableau, Fraction(1))
    slope_zero = dense_derivative_exact(tableau, Fraction(0))
    slope_one = dense_derivative_exact(tableau, Fraction(1))
    for i in range(s):
        # y(t0 + dt) = y1, y'(t0) = f0 = k_1 and, for FSAL methods, y'(t1) = f1 = k_s.
        assert abs(float(at_one[i] - Fraction(tableau.b[i]))) <= tol, f"b_{i}(1) != b_{i}"
        assert slope_zero[i] == (1 if i == 0 else 0), f"b_{i}'(0) wrong"
        if tableau.fsal:
            assert abs(float(slope_one[i] - (1 if i == s - 1 else 0))) <= tol, f"b_{i}'(1) wrong"


@pytest.mark.parametrize("tableau", DENSE, ids=_ids(DENSE))
def test_float_dense_weights_match_exact_ones(tableau: ButcherTableau) -> None:
    for theta in THETAS:
        exact = dense_weights_exact(tableau, theta)
        approx = tableau.dense_weights(float(theta))
        scale = max(abs(float(x)) for row in tableau.b_dense or () for x in row)
        for x, y in zip(exact, approx, strict=True):
            assert abs(float(x) - y) <= 1e-14 * scale


def test_fsal_detection() -> None:
    fsal = {t.name for t in ALL_TABLEAUS if t.fsal}
    assert fsal == {"Bosh3", "Dopri5", "Dopri5 (torchdiffeq's estimate)", "Tsit5", "Dopri8"}


# --- specific claims ----------------------------------------------------------------------


def test_fehlberg2_error_estimate_is_first_order() -> None:
    assert FEHLBERG2_TABLEAU.embedded_order == 1
    b_hat = exact_weights(FEHLBERG2_TABLEAU.b_hat or ())
    assert residual(FEHLBERG2_TABLEAU, b_hat, ()) == 0
    # Σ b_hat c = 255/512, not 1/2.
    assert residual(FEHLBERG2_TABLEAU, b_hat, ((),)) == Fraction(-1, 512)


def test_dopri5_dense_output_is_fourth_order() -> None:
    assert DOPRI5_TABLEAU.dense_order == 4
    for theta in THETAS:
        weights = dense_weights_exact(DOPRI5_TABLEAU, theta)
        assert all(residual(DOPRI5_TABLEAU, weights, tree, theta) == 0 for tree in trees_up_to(4))
        assert max_residual(DOPRI5_TABLEAU, weights, rooted_trees(5), theta) > VIOLATION


def test_dopri5_torchdiffeq_estimate_is_two_thirds_of_dormand_princes() -> None:
    # torchdiffeq prints its embedded solution (b_hat) with these numbers; ours is formed
    # as b/3 + 2 b_hat/3 from Dormand and Prince's, and must be the same method.
    printed = (
        Fraction(1951, 21600), 0, Fraction(22642, 50085), Fraction(451, 720),
        Fraction(-12231, 42400), Fraction(649, 6300), Fraction(1, 60),
    )  # fmt: skip
    assert tuple(Fraction(x) for x in DOPRI5_TORCHDIFFEQ_TABLEAU.b_hat or ()) == printed
    ours, theirs = DOPRI5_TABLEAU.error_float, DOPRI5_TORCHDIFFEQ_TABLEAU.error_float
    assert ours is not None and theirs is not None
    assert theirs == pytest.approx([2 * e / 3 for e in ours], rel=1e-15, abs=0)
    assert DOPRI5_TORCHDIFFEQ_TABLEAU.a == DOPRI5_TABLEAU.a
    assert DOPRI5_TORCHDIFFEQ_TABLEAU.b == DOPRI5_TABLEAU.b


def test_tsit5_shape_and_embedded_weights() -> None:
    t = TSIT5_TABLEAU
    assert (t.stages, t.order, t.embedded_order, t.dense_order) == (7, 5, 4, 4)
    assert t.fsal
    # b_hat is the 4th-order solution, not the difference of the two solutions that codes
    # often store instead (it sums to 0 and so fails even the first condition).
    assert Fraction(t.b_hat[-1]) == Fraction(1, 66)
    difference = [Fraction(x) - Fraction(y) for x, y in zip(t.b, t.b_hat or (), strict=True)]
    assert abs(float(residual(t, difference, ()))) == 1.0
    assert float(difference[0]) == pytest.approx(0.00178001105222577714, rel=1e-15)


def test_dopri8_matches_torchdiffeq_arrangement() -> None:
    t = DOPRI8_TABLEAU
    assert (t.stages, t.order, t.embedded_order) == (14, 8, 7)
    assert t.fsal
    # The last three nodes are at c = 1: stages 12 and 13 of RK8(7)13M, then f(t1, y1).
    assert list(t.c[-3:]) == [1, 1, 1]
    assert tuple(t.a[-1]) == tuple(t.b[:-1])
    # torchdiffeq's c_error = b - b_hat has 1/4 on stage 13 and 0 on the FSAL stage.
    error = [Fraction(x) - Fraction(y) for x, y in zip(t.b, t.b_hat or (), strict=True)]
    assert error[12] == Fraction(1, 4) and error[13] == 0


def test_dopri8_dense_output_passes_through_torchdiffeq_midpoint() -> None:
    # torchdiffeq evaluates the published Bogacki–Shampine polynomials at θ = 1/2 only; ours
    # are the same polynomials pinned to y1 and f1 at θ = 1 by corrections below 3e-11.
    from neuralode.solvers.dopri8 import _BS_POLYNOMIALS

    half = Fraction(1, 2)
    ours = dense_weights_exact(DOPRI8_TABLEAU, half)
    for i in range(DOPRI8_TABLEAU.stages):
        coeffs = _BS_POLYNOMIALS.get(i, ("0",) * 6)
        published = sum(Fraction(x) * half ** (j + 1) for j, x in enumerate(coeffs))
        assert abs(float(ours[i] - published)) < 1e-11
