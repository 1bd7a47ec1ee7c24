"""ESDIRK methods: the tableau and the one generic implicit step that runs them all.

An ESDIRK (explicit first stage, singly diagonally implicit Runge–Kutta) method computes

    k_1 = f(t0, y0),
    z_i = y0 + dt (Σ_{j<i} a_ij k_j + γ k_i),  k_i = f(t0 + c_i dt, z_i)   (i = 2..s),

one implicit equation per stage, all with the same diagonal ``γ``: so one Jacobian and one
factorisation of ``I − dt γ J`` serve every stage of a step. Stiffly accurate methods
(``b`` = the last row of ``a``) have ``y1 = z_s``. Kennedy & Carpenter, "Diagonally
implicit Runge–Kutta methods for ordinary differential equations. A review", NASA/TM
2016-219173, §2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ._explicit_rk import (
    AbstractSolver,
    FlatField,
    StepResult,
    StepSize,
    Time,
    as_dtype,
    combine,
    hermite_polynomials,
    hermite_weights,
    weighted_sum,
)
from ._newton import Factorised, Newton, RowField, count, jacobian, solve_stage
from ._tableau import Number

_CONSISTENCY_TOL = 1e-12


def _floats(row: Sequence[Number]) -> tuple[float, ...]:
    return tuple(float(x) for x in row)


@dataclass(frozen=True)
class ESDIRKTableau:
    """A stiffly accurate ESDIRK method with an embedded pair, as printed in its paper.

    Attributes:
        name: Method name, for messages.
        gamma: The diagonal ``γ`` of every implicit stage.
        c: Nodes, length ``s``; ``c[0] == 0`` (the explicit first stage).
        a: The below-diagonal coefficients: ``s − 1`` rows, row ``i`` (stage ``i + 2``)
            with ``i + 1`` entries. Stage ``i`` also weighs its own ``k_i`` by ``γ``.
        b_hat: Embedded weights, length ``s``.
        order: Classical order of ``y1``.
        embedded_order: Order of the embedded solution.
        predictor: Optional rows like ``a``: the first Newton guess of stage ``i`` is
            ``y0 + dt Σ_j predictor_ij k_j``; without it, ``ψ_i + dt γ k_(i−1)``.
    """

    name: str
    gamma: Number
    c: Sequence[Number]
    a: Sequence[Sequence[Number]]
    b_hat: Sequence[Number]
    order: int
    embedded_order: int
    predictor: Sequence[Sequence[Number]] | None = None
    b: tuple[Number, ...] = field(init=False)
    gamma_float: float = field(init=False, repr=False, compare=False)
    c_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    a_float: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    b_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    error_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    predictor_float: tuple[tuple[float, ...], ...] | None = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "c", tuple(self.c))
        set_(self, "a", tuple(tuple(row) for row in self.a))
        set_(self, "b_hat", tuple(self.b_hat))
        s = len(self.c)
        if s < 2 or self.c[0] != 0:
            raise ValueError(f"{self.name}: c must start with 0 and have 2+ nodes, got {self.c}")
        if not float(self.gamma) > 0:
            raise ValueError(f"{self.name}: gamma must be positive, got {self.gamma}")
        if len(self.a) != s - 1 or any(len(row) != i + 1 for i, row in enumerate(self.a)):
            raise ValueError(
                f"{self.name}: a must have {s - 1} rows of lengths 1..{s - 1}, "
                f"got lengths {[len(row) for row in self.a]}"
            )
        for i, row in enumerate(self.a, start=1):
            total = math.fsum(_floats(row)) + float(self.gamma)
            if abs(total - float(self.c[i])) > _CONSISTENCY_TOL:
                raise ValueError(f"{self.name}: row {i} of a (with gamma) does not sum to c[{i}]")
        if float(self.c[-1]) != 1.0:
            raise ValueError(f"{self.name}: a stiffly accurate method ends at c = 1")
        # Stiffly accurate: y1 = z_s, so b is the last row (with γ on the diagonal).
        b = (*self.a[-1], self.gamma)
        for label, weights in (("b", b), ("b_hat", self.b_hat)):
            if len(weights) != s or abs(math.fsum(_floats(weights)) - 1.0) > _CONSISTENCY_TOL:
                raise ValueError(f"{self.name}: {label} must have {s} entries summing to 1")
        if self.predictor is not None:
            set_(self, "predictor", tuple(tuple(row) for row in self.predictor))
            if [len(r) for r in self.predictor] != [len(r) for r in self.a]:
                raise ValueError(f"{self.name}: predictor must have the shape of a")
        set_(self, "b", b)
        set_(self, "gamma_float", float(self.gamma))
        set_(self, "c_float", _floats(self.c))
        set_(self, "a_float", tuple(_floats(row) for row in self.a))
        set_(self, "b_float", _floats(b))
        set_(self, "error_float", tuple(float(x - y) for x, y in zip(b, self.b_hat, strict=True)))
        predictor = None
        if self.predictor is not None:
            predictor = tuple(_floats(row) for row in self.predictor)
        set_(self, "predictor_float", predictor)

    @property
    def stages(self) -> int:
        """Number of stages ``s`` (the first is explicit and, with FSAL, free)."""
        return len(self.c)

    def matrix(self) -> list[list[Number]]:
        """The full ``s × s`` Butcher matrix (``γ`` on the diagonal below the first row)."""
        s = self.stages
        rows: list[list[Number]] = [[0] * s]
        for i, row in enumerate(self.a, start=1):
            rows.append([*row, self.gamma, *([0] * (s - i - 1))])
        return rows


@dataclass(frozen=True)
class ESDIRK(AbstractSolver):
    """Base of the ESDIRK solvers: a tableau, Newton settings and the generic step.

    Each step evaluates the Jacobian ``∂f/∂y`` once at ``(t0, y0)`` (forward-mode
    autograd; per sample in per-sample mode), factorises ``I − dt γ J`` once and solves
    every stage by simplified Newton with it (:mod:`._newton`). A stage whose iteration
    does not converge makes the step's ``y1`` and error estimate NaN, which the
    step-size controller rejects and shrinks (per sample in per-sample mode). The
    stage derivatives are recovered as ``k_i = (z_i − ψ_i)/(dt γ)``, without evaluating
    ``f`` again (Hairer & Wanner II, §IV.8: evaluating ``f`` would amplify the Newton
    error by the stiffness). The last one is ``f(t1, y1)`` (FSAL), which also makes the
    dense output cubic Hermite at no cost.

    Subclasses are frozen dataclasses that set the class attribute ``tableau``.

    Attributes:
        newton: Settings of the stage solves (match its ``rtol``/``atol`` to the
            controller's).
    """

    tableau: ClassVar[ESDIRKTableau]
    newton: Newton = field(default_factory=Newton)

    def __post_init__(self) -> None:
        if not isinstance(self.newton, Newton):
            raise TypeError(
                f"newton must be a neuralode.Newton, got {type(self.newton).__name__}; "
                "e.g. Kvaerno5(newton=Newton(rtol=1e-8, atol=1e-10))"
            )

    @property
    def order(self) -> int:
        """Classical order of the propagated solution."""
        return self.tableau.order

    @property
    def error_order(self) -> int:
        """The embedded order: the error estimate behaves like ``dt^(embedded + 1)``."""
        return min(self.tableau.order, self.tableau.embedded_order)

    @property
    def adaptive(self) -> bool:
        """ESDIRK pairs carry an embedded error estimate."""
        return True

    @property
    def fsal(self) -> bool:
        """The last stage derivative is ``f(t1, y1)`` (stiffly accurate)."""
        return True

    @property
    def needs_f1(self) -> bool:
        """Cubic Hermite dense output weighs ``f1``, which the step returns (FSAL)."""
        return True

    @property
    def quadrature_weights(self) -> None:
        """``None``: no quadrature over the field's own evaluations.

        ``y1 = y0 + dt Σ b_i k_i`` holds, but the ``k_i`` are recovered from the stage
        values, not evaluations of ``f`` at them: the per-sample backsolve adjoint, which
        replays a step's evaluations as its quadrature nodes, would integrate the
        parameter gradient at the Newton iterates instead (measured: wrong in the third
        digit). It refuses this solver with a message instead.
        """
        return None

    def stage_weights(self, thetas: Sequence[float]) -> list[list[float]]:
        """Cubic Hermite through ``y0, y1, f0, f1`` as weights on ``(k_1..k_s, f1)``."""
        return [hermite_weights(self.tableau.b_float, theta) for theta in thetas]

    def stage_polynomials(self) -> list[list[float]]:
        """:meth:`stage_weights` as polynomial coefficients."""
        return hermite_polynomials(self.tableau.b_float)

    def step(
        self,
        f: FlatField,
        t0: Time,
        y0: torch.Tensor,
        f0: torch.Tensor,
        dt: StepSize,
        t1_stage: float | None = None,
    ) -> StepResult:
        """Attempt one step of size ``dt`` from ``(t0, y0)``, where ``f0 = f(t0, y0)``."""
        tab = self.tableau
        shape = y0.shape
        call: RowField = f
        h: StepSize = dt
        y, k = y0, [f0]
        if isinstance(dt, float):
            # Joint mode: the whole state is one row.
            def call(t: Time, z: torch.Tensor) -> torch.Tensor:
                return f(t, z.reshape(shape)).reshape(1, -1)

            y, k = y0.reshape(1, -1), [f0.reshape(1, -1)]
        else:
            h = as_dtype(dt, y0.dtype).unsqueeze(-1)  # (B, 1)
        h_gamma = h * tab.gamma_float
        jac = jacobian(call, t0, y)
        count(f, njev=1)
        matrix = Factorised.of(jac, h_gamma, f)
        failed = matrix.singular
        z, eta = y, None
        for i, row in enumerate(tab.a_float, start=1):
            t_stage = self._stage_time(t0, dt, tab.c_float[i], t1_stage)
            psi = combine(y, k, row, h)  # y0 + dt Σ_{j<i} a_ij k_j
            with torch.no_grad():
                if tab.predictor_float is not None:
                    guess = combine(y, k, tab.predictor_float[i - 1], h)
                else:
                    guess = psi + h_gamma * k[-1]
            stage = solve_stage(
                call, f, t_stage, psi, guess, h_gamma, matrix, self.newton, failed, eta
            )
            z, failed, eta = stage.z, stage.failed, stage.eta
            k.append((z - psi) / h_gamma)
        with torch.no_grad():
            if isinstance(h, float):
                y_error = weighted_sum(k, [e * h for e in tab.error_float])
            else:
                y_error = weighted_sum(k, tab.error_float).mul_(h)
        if bool(failed.any()):
            # A failed Newton iteration is a rejected step: NaN is what the controller
            # rejects and shrinks, row by row.
            nan = torch.full_like(y_error, math.nan)
            y_error = torch.where(failed.unsqueeze(-1), nan, y_error)
            z = torch.where(failed.unsqueeze(-1), nan, z)
        if isinstance(dt, float):
            k = [kj.reshape(shape) for kj in k]
            z, y_error = z.reshape(shape), y_error.reshape(shape)
        return StepResult(y1=z, y_error=y_error, f1=k[-1], k=tuple(k), newton_failed=failed)

    @staticmethod
    def _stage_time(t0: Time, dt: StepSize, c: float, t1_stage: float | None) -> Time:
        if c == 1.0:
            # Exactly the step end (or the left limit before a jump there).
            if t1_stage is not None:
                return t1_stage
            return t0 + dt
        if isinstance(dt, float):
            return t0 + c * dt
        return torch.add(t0, dt, alpha=c)
