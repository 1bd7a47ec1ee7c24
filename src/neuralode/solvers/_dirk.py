"""Singly diagonally implicit Runge–Kutta methods: the tableau and the one generic step.

A DIRK method with one diagonal ``γ`` computes its stages in order,

    z_i = y0 + dt (Σ_{j<i} a_ij k_j + γ k_i),  k_i = f(t0 + c_i dt, z_i),

one implicit equation per stage, all with the same ``γ``: so one Jacobian and one
factorisation of ``I − dt γ J`` serve every stage of a step. An ESDIRK method's first
stage is explicit (``a_11 = 0``, ``k_1 = f(t0, y0)``); a stiffly accurate one has
``b`` = the last row of ``a``, so ``y1 = z_s``. Kennedy & Carpenter, "Diagonally implicit
Runge–Kutta methods for ordinary differential equations. A review", NASA/TM 2016-219173,
§2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ._explicit_rk import FlatField, SolverState, StepResult, StepSize, Time, combine, combine_step
from ._implicit import ImplicitRK, on_rows, refuse_compile, stage_time
from ._krylov import MatrixFree, jvp_products, scaled
from ._newton import Factorised, NewtonMatrix, ScaledField, per_matrix, solve_stage
from ._tableau import CONSISTENCY_TOL, Number, floats


@dataclass(frozen=True)
class DIRKTableau:
    """A singly diagonally implicit Runge–Kutta method, as printed in its paper.

    Attributes:
        name: Method name, for messages.
        c: Nodes, length ``s``.
        a: The lower triangle with the diagonal: ``s`` rows, row ``i`` with ``i + 1``
            entries. Every diagonal entry is the same ``γ > 0``, except that the first may
            be ``0`` (an explicit first stage, then ``c[0] == 0``: ESDIRK).
        b: Weights of the propagated solution, length ``s``.
        order: Classical order of ``b``.
        b_hat: Embedded weights (length ``s``), or ``None`` for fixed-step methods.
        embedded_order: Order of ``b_hat`` (``None`` without one).
        predictor: Optional first Newton guesses, one row per implicit stage ``i`` with
            ``i`` entries: the guess is ``y0 + dt Σ_j predictor_ij k_j``; without it,
            ``ψ_i + dt γ k_(i−1)`` (``f0`` for the first stage).
    """

    name: str
    c: Sequence[Number]
    a: Sequence[Sequence[Number]]
    b: Sequence[Number]
    order: int
    b_hat: Sequence[Number] | None = None
    embedded_order: int | None = None
    predictor: Sequence[Sequence[Number]] | None = None
    gamma: float = field(init=False)
    explicit_first: bool = field(init=False)
    stiffly_accurate: bool = field(init=False)
    c_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    a_float: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    b_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    error_float: tuple[float, ...] | None = field(init=False, repr=False, compare=False)
    predictor_float: tuple[tuple[float, ...], ...] | None = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("c", "b", "b_hat"):
            value = getattr(self, name)
            set_(self, name, None if value is None else tuple(value))
        set_(self, "a", tuple(tuple(row) for row in self.a))
        s = len(self.c)
        if s < 1 or len(self.a) != s or any(len(row) != i + 1 for i, row in enumerate(self.a)):
            raise ValueError(
                f"{self.name}: a must have {s} rows of lengths 1..{s} (with the diagonal), "
                f"got lengths {[len(row) for row in self.a]}"
            )
        diagonal = [float(row[-1]) for row in self.a]
        explicit_first = diagonal[0] == 0.0
        implicit = diagonal[1:] if explicit_first else diagonal
        if not implicit or implicit[0] <= 0 or any(d != implicit[0] for d in implicit):
            raise ValueError(
                f"{self.name}: the diagonal must be one positive gamma (the first entry may "
                f"be 0 for an explicit first stage), got {diagonal}"
            )
        if explicit_first and self.c[0] != 0:
            raise ValueError(f"{self.name}: an explicit first stage needs c[0] = 0")
        for i, row in enumerate(self.a):
            if abs(math.fsum(floats(row)) - float(self.c[i])) > CONSISTENCY_TOL:
                raise ValueError(f"{self.name}: row {i} of a does not sum to c[{i}]")
        for label, weights in (("b", self.b), ("b_hat", self.b_hat)):
            if weights is None:
                continue
            if len(weights) != s or abs(math.fsum(floats(weights)) - 1.0) > CONSISTENCY_TOL:
                raise ValueError(f"{self.name}: {label} must have {s} entries summing to 1")
        if (self.b_hat is None) != (self.embedded_order is None):
            raise ValueError(f"{self.name}: give b_hat and embedded_order together")
        n_implicit = len(implicit)
        if self.predictor is not None:
            set_(self, "predictor", tuple(tuple(row) for row in self.predictor))
            lengths = [len(row) for row in self.predictor]
            if lengths != list(range(s - n_implicit, s)):
                raise ValueError(f"{self.name}: predictor rows must have lengths 1..{s - 1}")
        last = floats(self.a[-1])
        stiffly_accurate = float(self.c[-1]) == 1.0 and all(
            abs(x - y) <= CONSISTENCY_TOL for x, y in zip(last, floats(self.b), strict=True)
        )
        set_(self, "gamma", implicit[0])
        set_(self, "explicit_first", explicit_first)
        set_(self, "stiffly_accurate", stiffly_accurate)
        set_(self, "c_float", floats(self.c))
        set_(self, "a_float", tuple(floats(row) for row in self.a))
        set_(self, "b_float", floats(self.b))
        error = None
        if self.b_hat is not None:
            error = tuple(float(x - y) for x, y in zip(self.b, self.b_hat, strict=True))
        set_(self, "error_float", error)
        predictor = None
        if self.predictor is not None:
            predictor = tuple(floats(row) for row in self.predictor)
        set_(self, "predictor_float", predictor)

    @property
    def stages(self) -> int:
        """Number of stages ``s``."""
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the method has an embedded error estimate."""
        return self.b_hat is not None

    def matrix(self) -> list[list[Number]]:
        """The full ``s × s`` Butcher matrix."""
        s = self.stages
        return [[*row, *([0] * (s - len(row)))] for row in self.a]


@dataclass(frozen=True)
class DIRK(ImplicitRK):
    """Base of the diagonally implicit solvers: a DIRK tableau and the generic step.

    Each step evaluates the Jacobian ``∂f/∂y`` once at ``(t0, y0)`` (autograd; per sample
    in per-sample mode), factorises ``I − dt γ J`` once and solves every stage by
    simplified Newton with it (:mod:`._newton`). A stage whose iteration does not
    converge makes the step's ``y1`` and error estimate NaN, which the step-size
    controller rejects and shrinks (per sample in per-sample mode). The stage
    derivatives are recovered as ``k_i = (z_i − ψ_i)/(dt γ)``, without evaluating ``f``
    again (Hairer & Wanner II, §IV.8: evaluating ``f`` would amplify the Newton error by
    the stiffness). In a stiffly accurate method the last one is ``f(t1, y1)`` (FSAL),
    which also makes the cubic Hermite dense output free.

    Subclasses are frozen dataclasses that set the class attribute ``tableau``.
    """

    tableau: ClassVar[DIRKTableau]

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
        h_gamma = h * tab.gamma
        matrix: NewtonMatrix
        jac = fresh = None
        if self.krylov is None:
            jac, fresh = self._jacobian(call, f, t0, y, state)
            matrix = Factorised.of(per_matrix(h_gamma) * jac, f)
        else:
            matrix = MatrixFree.of(scaled(h_gamma, jvp_products(call, t0, y)), self.krylov, y)
        failed, eta, z = matrix.singular, None, y
        slowest = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        k = [k0] if tab.explicit_first else []
        for i in range(len(k), tab.stages):
            row = tab.a_float[i][:-1]
            t_stage = stage_time(t0, dt, tab.c_float[i], t1_stage)
            psi = combine(y, k, row, h) if k else y  # y0 + dt Σ_{j<i} a_ij k_j
            with torch.no_grad():
                if tab.predictor_float is not None:
                    guess = combine(y, k, tab.predictor_float[i - tab.stages], h)
                else:
                    guess = psi + h_gamma * (k[-1] if k else k0)
            stage_map = ScaledField(call, f, t_stage, h_gamma)
            stage = solve_stage(stage_map, psi, guess, matrix, self.newton, failed, eta)
            z, failed, eta = stage.z, stage.failed, stage.eta
            slowest = torch.maximum(slowest, eta)
            k.append((z - psi) / h_gamma)
        y1 = z if tab.stiffly_accurate else combine_step(y, k, tab.b_float, h)
        return self._result(y0, y1, k, k0, h, failed, self._next_states(jac, fresh, slowest))
