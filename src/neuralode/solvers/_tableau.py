"""Butcher tableaus: the numbers that define an explicit Runge–Kutta method.

A tableau is written as printed in its paper (exact fractions where the paper gives them)
and validated on construction, so a typo in a coefficient fails at import time instead of
silently lowering the order of the method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

Number = float | int | Fraction

# Row sums and Σb are checked to this absolute tolerance: coefficients printed as decimals
# (Tsit5, Dopri8) carry about 1e-16..1e-20 of rounding in the papers.
CONSISTENCY_TOL = 1e-12


def floats(row: Sequence[Number]) -> tuple[float, ...]:
    """A row of exact or float coefficients as floats."""
    return tuple(float(x) for x in row)


def _as_float(x: Number) -> float:
    return float(x)


Terms = tuple[tuple[int, float], ...]


def nonzero_terms(weights: Sequence[float]) -> Terms:
    """``(j, weights[j])`` for the non-zero weights: the terms a combination adds up."""
    return tuple((j, w) for j, w in enumerate(weights) if w != 0.0)


@dataclass(frozen=True)
class StepPlan:
    """A tableau's non-zero entries as ``(stage, weight)`` terms, for the float step.

    Attributes:
        stages: Per stage after the first: its terms, its node ``c_i``, and whether its
            state is summed first (``combine_step``: the FSAL stage, which is ``y1``).
        b: The terms of ``y1``.
        error: The terms of the error estimate, ``None`` for a fixed-step method.
        fsal: Whether the last stage is ``f(t1, y1)``.
    """

    stages: tuple[tuple[Terms, float, bool], ...]
    b: Terms
    error: Terms | None
    fsal: bool


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method ``(c, a, b, b_hat)`` plus optional dense output.

    The stages are ``k_i = f(t0 + c_i dt, y0 + dt Σ_{j<i} a_ij k_j)``; the solution is
    ``y1 = y0 + dt Σ b_i k_i`` and, for embedded pairs, the error estimate is
    ``dt Σ (b_i - b_hat_i) k_i``.

    Attributes:
        name: Method name, for messages.
        c: Nodes, length ``s``; ``c[0] == 0``.
        a: Strictly lower-triangular coefficients, given as ``s - 1`` rows where row ``i``
            has ``i + 1`` entries (the stage ``i + 1`` weights of stages ``0..i``).
        b: Weights of the propagated solution, length ``s``.
        b_hat: Weights of the embedded solution (length ``s``), or ``None`` for fixed-step
            methods.
        order: Classical order of ``b``.
        embedded_order: Order of ``b_hat`` (``None`` without one).
        b_dense: Continuous extension: ``b_dense[i][j]`` is the coefficient of
            ``θ^(j+1)`` in the weight of stage ``i``, so that
            ``y(t0 + θ dt) = y0 + dt Σ_i k_i Σ_j b_dense[i][j] θ^(j+1)``. ``None`` means the
            solver falls back to cubic Hermite interpolation.
        dense_order: Order of the continuous extension (``None`` without one).
        fsal: Whether the last stage is ``f(t0 + dt, y1)`` ("first same as last"), so it is
            the next step's first stage and costs nothing.
    """

    name: str
    c: Sequence[Number]
    a: Sequence[Sequence[Number]]
    b: Sequence[Number]
    b_hat: Sequence[Number] | None
    order: int
    embedded_order: int | None = None
    b_dense: Sequence[Sequence[Number]] | None = None
    dense_order: int | None = None
    fsal: bool = field(init=False)
    # Float copies made once at construction: converting Fractions inside every step
    # measured as a visible share of a small solve.
    c_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    a_float: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    b_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    error_float: tuple[float, ...] | None = field(init=False, repr=False, compare=False)
    dense_float: tuple[tuple[float, ...], ...] | None = field(init=False, repr=False, compare=False)
    # Made once per tableau, not per solver instance: solve(f, y0, ts) and compat build
    # a solver at every call.
    plan: StepPlan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Store tuples so tableaus are hashable and cannot be changed after validation.
        object.__setattr__(self, "c", tuple(self.c))
        object.__setattr__(self, "a", tuple(tuple(row) for row in self.a))
        object.__setattr__(self, "b", tuple(self.b))
        if self.b_hat is not None:
            object.__setattr__(self, "b_hat", tuple(self.b_hat))
        if self.b_dense is not None:
            object.__setattr__(self, "b_dense", tuple(tuple(row) for row in self.b_dense))
        s = len(self.c)
        if s < 1 or self.c[0] != 0:
            raise ValueError(f"{self.name}: c must start with 0, got {list(self.c)}")
        if len(self.a) != s - 1 or any(len(row) != i + 1 for i, row in enumerate(self.a)):
            raise ValueError(
                f"{self.name}: a must have {s - 1} rows of lengths 1..{s - 1}, "
                f"got lengths {[len(row) for row in self.a]}"
            )
        for i, row in enumerate(self.a):
            if abs(math.fsum(map(_as_float, row)) - _as_float(self.c[i + 1])) > CONSISTENCY_TOL:
                raise ValueError(f"{self.name}: row {i + 1} of a does not sum to c[{i + 1}]")
        for label, weights in (("b", self.b), ("b_hat", self.b_hat)):
            if weights is None:
                continue
            if len(weights) != s:
                raise ValueError(f"{self.name}: {label} has {len(weights)} entries, not {s}")
            if abs(math.fsum(map(_as_float, weights)) - 1.0) > CONSISTENCY_TOL:
                raise ValueError(f"{self.name}: {label} does not sum to 1")
        if (self.b_hat is None) != (self.embedded_order is None):
            raise ValueError(f"{self.name}: give b_hat and embedded_order together")
        if self.b_dense is not None:
            if len(self.b_dense) != s:
                raise ValueError(f"{self.name}: b_dense needs one row per stage")
            # At θ = 1 the continuous extension must reproduce y1 exactly.
            for i, row in enumerate(self.b_dense):
                if abs(math.fsum(map(_as_float, row)) - _as_float(self.b[i])) > CONSISTENCY_TOL:
                    raise ValueError(f"{self.name}: b_dense row {i} does not sum to b[{i}]")
        fsal = (
            s > 1
            and self.c[-1] == 1
            and len(self.a[-1]) == s - 1
            and self.b[-1] == 0
            and all(
                abs(_as_float(x) - _as_float(y)) < CONSISTENCY_TOL
                for x, y in zip(self.a[-1], self.b[:-1], strict=False)
            )
        )
        object.__setattr__(self, "fsal", fsal)
        object.__setattr__(self, "c_float", tuple(map(_as_float, self.c)))
        object.__setattr__(self, "a_float", tuple(tuple(map(_as_float, r)) for r in self.a))
        object.__setattr__(self, "b_float", tuple(map(_as_float, self.b)))
        error = None
        if self.b_hat is not None:
            # b - b_hat in exact arithmetic where the tableau is exact, then rounded once.
            error = tuple(_as_float(x - y) for x, y in zip(self.b, self.b_hat, strict=True))
        object.__setattr__(self, "error_float", error)
        dense = None
        if self.b_dense is not None:
            dense = tuple(tuple(map(_as_float, row)) for row in self.b_dense)
        object.__setattr__(self, "dense_float", dense)
        last = len(self.a_float)
        stages = tuple(
            (nonzero_terms(row[:i]), self.c_float[i], i == last and fsal)
            for i, row in enumerate(self.a_float, start=1)
        )
        plan_error = None if error is None else nonzero_terms(error)
        object.__setattr__(
            self, "plan", StepPlan(stages, nonzero_terms(self.b_float), plan_error, fsal)
        )

    @property
    def stages(self) -> int:
        """Number of stages ``s`` (function evaluations per step, one fewer with FSAL)."""
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the method has an embedded error estimate."""
        return self.b_hat is not None

    @property
    def error_order(self) -> int:
        """Order used by step-size control: ``min(order, embedded_order)``.

        The local error estimate behaves like ``dt^(error_order + 1)`` (Hairer, Nørsett &
        Wanner I, §II.4).
        """
        if self.embedded_order is None:
            return self.order
        return min(self.order, self.embedded_order)

    def dense_weights(self, theta: float) -> list[float]:
        """Stage weights of the continuous extension at ``θ``, evaluated with Horner."""
        if self.dense_float is None:
            raise ValueError(f"{self.name} has no continuous extension")
        weights = []
        for row in self.dense_float:
            acc = 0.0
            for coeff in reversed(row):
                acc = (acc + coeff) * theta
            weights.append(acc)
        return weights


def dense_from_midpoint(
    tableau_b: Sequence[Number], c_mid: Sequence[Number], *, fsal: bool
) -> list[list[Fraction]]:
    """Quartic continuous extension through ``y0, y1, f0, f1`` and a midpoint estimate.

    Shampine's construction ("Some practical Runge–Kutta formulas", Math. Comp. 1986),
    used by torchdiffeq for Dopri5 and Dopri8: ``y_mid = y0 + dt Σ c_mid_i k_i``
    approximates ``y(t0 + dt/2)`` and the quartic in θ matching the five conditions is
    written as stage weights. ``f1`` must be the last stage (FSAL).
    """
    if not fsal:
        raise ValueError("the midpoint quartic needs f1 as the last (FSAL) stage")
    s = len(tableau_b)
    b = [Fraction(x) for x in tableau_b]
    m = [Fraction(x) for x in c_mid]
    # Quartic p(θ) with p(0)=0 (relative to y0, in units of dt): p(θ) = Σ_{j=1..4} q_j θ^j.
    # Conditions (per stage, linear in k): p'(0) = f0, p(1) = Σ b k, p'(1) = f1, p(1/2) = Σ m k.
    # Solve the 4x4 system once for each right-hand side basis vector.
    rows = [
        [Fraction(1), Fraction(0), Fraction(0), Fraction(0)],  # p'(0)
        [Fraction(1), Fraction(1), Fraction(1), Fraction(1)],  # p(1)
        [Fraction(1), Fraction(2), Fraction(3), Fraction(4)],  # p'(1)
        [Fraction(1, 2), Fraction(1, 4), Fraction(1, 8), Fraction(1, 16)],  # p(1/2)
    ]
    inverse = invert_exact(rows)
    out = []
    for i in range(s):
        rhs = [
            Fraction(1 if i == 0 else 0),
            b[i],
            Fraction(1 if i == s - 1 else 0),
            m[i],
        ]
        out.append(
            [sum((inverse[r][col] * rhs[col] for col in range(4)), Fraction(0)) for r in range(4)]
        )
    return out


def invert_exact(matrix: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact Gauss–Jordan inverse of a small rational matrix."""
    n = len(matrix)
    aug = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(matrix)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if aug[r][col] != 0)
        aug[col], aug[pivot] = aug[pivot], aug[col]
        p = aug[col][col]
        aug[col] = [x / p for x in aug[col]]
        for r in range(n):
            if r != col and aug[r][col] != 0:
                factor = aug[r][col]
                aug[r] = [x - factor * y for x, y in zip(aug[r], aug[col], strict=False)]
    return [row[n:] for row in aug]
