"""Fully implicit Runge–Kutta methods: the tableau and the one stacked Newton step.

All ``s`` stages ``z_i = y0 + dt Σ_j a_ij f(t0 + c_j dt, z_j)`` are solved at once, as one
system of ``s·n`` unknowns per row, by simplified Newton with the matrix
``I − dt (A ⊗ J)`` (``J`` at ``(t0, y0)``), factorised once per step (Hairer & Wanner II,
§IV.8). No transformation to real/complex blocks: the stacked system is factorised as it
is, which is simple and, for the small states of these methods' users, fast enough.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import torch

from ._explicit_rk import FlatField, SolverState, StepResult, StepSize, Time
from ._implicit import ImplicitRK, on_rows, refuse_compile, stage_time
from ._krylov import MatrixFree, Product, jvp_products
from ._newton import (
    Factorised,
    Newton,
    NewtonMatrix,
    RowField,
    StageMap,
    count,
    detached,
    jacobian,
    per_matrix,
    pullback,
    solve_stage,
)
from ._tableau import CONSISTENCY_TOL, Number, invert_exact


@dataclass(frozen=True)
class FIRKTableau:
    """A fully implicit Runge–Kutta method (collocation), as printed in its paper.

    Attributes:
        name: Method name, for messages.
        c: Nodes, length ``s``.
        a: The full ``s × s`` matrix (invertible).
        b: Weights, length ``s``.
        order: Classical order of ``b``.
    """

    name: str
    c: Sequence[Number]
    a: Sequence[Sequence[Number]]
    b: Sequence[Number]
    order: int
    embedded_order: None = field(default=None, init=False)
    error_float: None = field(default=None, init=False, repr=False, compare=False)
    explicit_first: bool = field(default=False, init=False)
    stiffly_accurate: bool = field(init=False)
    c_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    a_float: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    b_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    a_inverse: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "c", tuple(self.c))
        set_(self, "a", tuple(tuple(row) for row in self.a))
        set_(self, "b", tuple(self.b))
        s = len(self.c)
        if len(self.a) != s or any(len(row) != s for row in self.a) or len(self.b) != s:
            raise ValueError(f"{self.name}: a must be {s} x {s} and b of length {s}")
        for i, row in enumerate(self.a):
            if abs(math.fsum(float(x) for x in row) - float(self.c[i])) > CONSISTENCY_TOL:
                raise ValueError(f"{self.name}: row {i} of a does not sum to c[{i}]")
        if abs(math.fsum(float(x) for x in self.b) - 1.0) > CONSISTENCY_TOL:
            raise ValueError(f"{self.name}: b must sum to 1")
        stiffly_accurate = float(self.c[-1]) == 1.0 and all(
            abs(float(x) - float(y)) <= CONSISTENCY_TOL
            for x, y in zip(self.a[-1], self.b, strict=True)
        )
        inverse = invert_exact([[Fraction(x) for x in row] for row in self.a])
        set_(self, "stiffly_accurate", stiffly_accurate)
        set_(self, "c_float", tuple(float(x) for x in self.c))
        set_(self, "a_float", tuple(tuple(float(x) for x in row) for row in self.a))
        set_(self, "b_float", tuple(float(x) for x in self.b))
        set_(self, "a_inverse", tuple(tuple(float(x) for x in row) for row in inverse))

    @property
    def stages(self) -> int:
        """Number of stages ``s``."""
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """No embedded error estimate: fixed steps."""
        return False

    def matrix(self) -> list[list[Number]]:
        """The ``s × s`` Butcher matrix."""
        return [list(row) for row in self.a]


@dataclass(frozen=True)
class _Collocation(StageMap):
    """``G(Z) = dt (A ⊗ I) F(Z)`` on the stacked stages ``Z = (z_1, …, z_s)``, ``(R, s·n)``."""

    call: RowField
    f: Any
    times: tuple[Time, ...]
    h: StepSize
    a: torch.Tensor  # (s, s)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """``dt Σ_j a_ij f(t_j, z_j)`` for every stage ``i``."""
        rows, s = z.shape[0], len(self.times)
        stages = z.view(rows, s, -1)
        values = torch.stack([self.call(t, stages[:, j]) for j, t in enumerate(self.times)], 1)
        return _times_rows(self.h, torch.einsum("ij,rjn->rin", self.a, values)).reshape(rows, -1)

    def slope(self, z: torch.Tensor) -> torch.Tensor:
        """``dt [a_ij J(z_j)]``: block ``(i, j)`` is ``a_ij`` times stage ``j``'s Jacobian."""
        rows, s = z.shape[0], len(self.times)
        stages = z.view(rows, s, -1)
        jacs = [jacobian(self.call, t, stages[:, j]) for j, t in enumerate(self.times)]
        count(self.f, njev=s)
        return stacked(self.a, torch.stack(jacs, 1), self.h)

    def pullback(self, z: torch.Tensor) -> Product:
        """``U ↦ diag(J_jᵀ) (dt (Aᵀ ⊗ I) U)``: one VJP of ``f`` per stage."""
        rows, s = z.shape[0], len(self.times)
        stages = z.view(rows, s, -1)
        pulls = [pullback(self.call, detached(t), stages[:, j]) for j, t in enumerate(self.times)]
        h = detached(self.h)

        def pull(u: torch.Tensor) -> torch.Tensor:
            mixed = _times_rows(h, torch.einsum("ji,rjn->rin", self.a, u.view(rows, s, -1)))
            return torch.stack([p(mixed[:, i]) for i, p in enumerate(pulls)], 1).reshape(rows, -1)

        return pull


def stacked_products(
    call: RowField, t0: Time, y: torch.Tensor, a: torch.Tensor, h: StepSize
) -> Product:
    """``V ↦ dt (A ⊗ J) V`` with ``J`` at ``(t0, y0)``: the matrix-free ``stacked``."""
    jvp = jvp_products(call, t0, y)
    factor = detached(h)

    def product(v: torch.Tensor) -> torch.Tensor:
        rows, s = v.shape[0], a.shape[0]
        parts = v.view(rows, s, -1)
        jv = torch.stack([jvp(parts[:, j]) for j in range(s)], 1)  # (R, s, n)
        return _times_rows(factor, torch.einsum("ij,rjn->rin", a, jv)).reshape(rows, -1)

    return product


def stacked(a: torch.Tensor, jacs: torch.Tensor, h: StepSize) -> torch.Tensor:
    """``dt [a_ij J_j]`` as ``(R, s·n, s·n)`` from the stages' Jacobians ``(R, s, n, n)``."""
    rows, s, n, _ = jacs.shape
    # Row (i, p), column (j, q): a_ij J_j[p, q].
    blocks = a[None, :, None, :, None] * jacs.permute(0, 2, 1, 3)[:, None]  # (R, s, n, s, n)
    return per_matrix(h) * blocks.reshape(rows, s * n, s * n)


@dataclass(frozen=True)
class FIRK(ImplicitRK):
    """Base of the fully implicit solvers: a FIRK tableau and the stacked Newton step.

    One Jacobian at ``(t0, y0)`` and one LU of the ``s·n`` system ``I − dt (A ⊗ J)`` per
    step; each Newton iteration evaluates ``f`` at the ``s`` stages. The stage
    derivatives are ``K = (A⁻¹ ⊗ I)(Z − y0)/dt`` (no further evaluations of ``f``), and
    ``y1 = y0 + dt Σ b_i k_i``. A failed iteration makes the step NaN (a fixed step: the
    solve fails and says to reduce ``dt``). Gradients by the implicit-function theorem on
    the whole stacked system.

    Subclasses are frozen dataclasses that set the class attribute ``tableau``.
    """

    tableau: ClassVar[FIRKTableau]

    def step(
        self,
        f: FlatField,
        t0: Time,
        y0: torch.Tensor,
        f0: torch.Tensor,
        dt: StepSize,
        t1_stage: float | None = None,
        state: SolverState = (),
    ) -> StepResult:
        """Attempt one step of size ``dt`` from ``(t0, y0)``, where ``f0 = f(t0, y0)``."""
        refuse_compile(self)
        tab = self.tableau
        call, y, k0, h = on_rows(f, y0, f0, dt)
        s, (rows, n) = tab.stages, y.shape
        a = torch.tensor(tab.a_float, dtype=y.dtype, device=y.device)
        matrix: NewtonMatrix
        jac = fresh = None
        if self.krylov is None:
            jac, fresh = self._jacobian(call, f, t0, y, state)
            matrix = Factorised.of(stacked(a, jac.unsqueeze(1).expand(rows, s, n, n), h), f)
        else:
            matrix = MatrixFree.of(stacked_products(call, t0, y, a, h), self.krylov, y)
        times = tuple(stage_time(t0, dt, c, t1_stage) for c in tab.c_float)
        psi = y.repeat(1, s)  # (R, s·n): every stage starts from y0
        with torch.no_grad():
            guess = self._guess(y, k0, h, state)
        stage_map = _Collocation(call, f, times, h, a)
        solution = solve_stage(
            stage_map, psi, guess.reshape(rows, -1), matrix, self._newton(y.dtype), matrix.singular
        )
        increments = (solution.z - psi).view(rows, s, n)
        a_inv = torch.tensor(tab.a_inverse, dtype=y.dtype, device=y.device)
        k_all = _divide_rows(torch.einsum("ij,rjn->rin", a_inv, increments), h)
        k = list(k_all.unbind(1))
        if tab.stiffly_accurate:
            y1 = y + increments[:, -1]
        else:
            b = torch.tensor(tab.b_float, dtype=y.dtype, device=y.device)
            y1 = y + _times_rows(h, torch.einsum("i,rin->rn", b, k_all))
        states = self._states(jac, fresh, solution.eta, state, increments, h)
        y_error = self._estimate(call, f, t0, y, k0, h, increments, jac)
        return self._result(y0, y1, k, k0, h, solution.failed, states, y_error)

    def _guess(
        self, y: torch.Tensor, k0: torch.Tensor, h: StepSize, state: SolverState
    ) -> torch.Tensor:
        """Newton's starting stage values ``(R, s, n)``: ``y0 + c_i dt f0``."""
        c = torch.tensor(self.tableau.c_float, dtype=y.dtype, device=y.device)
        return y.unsqueeze(1) + _times_rows(h, c[None, :, None] * k0.unsqueeze(1))

    def _newton(self, dtype: torch.dtype) -> Newton:
        """The Newton settings for a state of ``dtype`` (:class:`Radau5` sets ``kappa``)."""
        return self.newton

    def _states(
        self,
        jac: torch.Tensor | None,
        fresh: torch.Tensor | None,
        eta: torch.Tensor,
        state: SolverState,
        increments: torch.Tensor,
        h: StepSize,
    ) -> tuple[SolverState, SolverState]:
        """The solver states after this step, if accepted and if rejected."""
        return self._next_states(jac, fresh, eta)

    def _estimate(
        self,
        call: RowField,
        f: Any,
        t0: Time,
        y: torch.Tensor,
        k0: torch.Tensor,
        h: StepSize,
        increments: torch.Tensor,
        jac: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """The step's local error estimate on rows, from its stage increments ``(R, s, n)``.

        ``None``: a fixed-step method (an adaptive one overrides this, :class:`Radau5`).
        """
        return None


def _times_rows(h: StepSize, x: torch.Tensor) -> torch.Tensor:
    """``h·x`` with ``h`` a float or ``(R, 1)`` (broadcast over ``x``'s middle dims)."""
    if isinstance(h, float):
        return h * x
    return h.view(-1, *([1] * (x.ndim - 1))) * x


def _divide_rows(x: torch.Tensor, h: StepSize) -> torch.Tensor:
    if isinstance(h, float):
        return x / h
    return x / h.view(-1, *([1] * (x.ndim - 1)))
