"""What every implicit Runge–Kutta solver shares: settings, dense output, the step's ends."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from ._explicit_rk import (
    AbstractSolver,
    FlatField,
    SolverState,
    StepResult,
    StepSize,
    Time,
    as_dtype,
    hermite_polynomials,
    hermite_weights,
    weighted_sum,
)
from ._krylov import GMRES, linear_solver_setting
from ._newton import Newton, RowField, count, jacobian

_INTERPOLATIONS = ("hermite", "linear")
# A step reuses the last step's Jacobian while that step's Newton iterations contracted
# at least this fast (θ = ‖Δ_k‖/‖Δ_(k−1)‖): Hairer & Wanner's RADAU5 rule (its THET), which
# saves most Jacobians on smooth stretches and recomputes where the dynamics change.
REUSE_RATE = 1e-3


class ImplicitTableau(Protocol):
    """The parts of an implicit tableau that the shared code reads."""

    name: str
    order: int
    embedded_order: int | None
    explicit_first: bool
    stiffly_accurate: bool
    b_float: tuple[float, ...]
    error_float: tuple[float, ...] | None

    @property
    def adaptive(self) -> bool:
        """Whether the method has an embedded error estimate."""
        ...


def on_rows(
    f: FlatField, y0: torch.Tensor, f0: torch.Tensor, dt: StepSize
) -> tuple[RowField, torch.Tensor, torch.Tensor, StepSize]:
    """``(f on rows, y0 and f0 as rows, dt as a float or (B, 1))``.

    Joint mode: the whole state is one row. Per-sample mode: one row per sample.
    """
    if not isinstance(dt, float):
        return f, y0, f0, as_dtype(dt, y0.dtype).unsqueeze(-1)  # (B, 1)
    shape = y0.shape

    def call(t: Time, z: torch.Tensor) -> torch.Tensor:
        return f(t, z.reshape(shape)).reshape(1, -1)

    return call, y0.reshape(1, -1), f0.reshape(1, -1), dt


def check_interpolation(solver: AbstractSolver, interpolation: object) -> None:
    """The dense outputs an implicit or Rosenbrock step offers: cubic Hermite or linear."""
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}; e.g. "
            f"{type(solver).__name__}(interpolation='hermite')"
        )


def refuse_compile(solver: AbstractSolver) -> None:
    """Raise inside ``torch.compile``: an implicit step cannot be one graph.

    Its Newton iterations stop on a host-side convergence test and take the Jacobian by
    ``torch.func``/``torch.autograd.grad``. Under ``fullgraph=True`` dynamo reports this
    as an unsupported exception that carries this message.
    """
    if torch.compiler.is_compiling():
        raise TypeError(
            f"{type(solver).__name__} cannot run inside torch.compile (its Newton iterations "
            "stop on a host-side convergence test): solve with compile_step=False"
        )


def stage_time(t0: Time, dt: StepSize, c: float, t1_stage: float | None) -> Time:
    """``t0 + c dt``; exactly the step end (or the left limit before a jump) at ``c = 1``.

    Before a jump of ``f`` at the step end (``t1_stage`` given), a node past the end
    (Kvaerno5's ``c = 1.23``) is also evaluated at the left limit: on the far side of the
    jump it would see the next piece of ``f`` (measured on a decay with one jump in its
    forcing, rtol 1e-8: 118 steps, 46 of them rejected, against 21 and 1 with this).
    """
    if c >= 1.0 and t1_stage is not None:
        return t1_stage
    if c == 1.0:
        return t0 + dt
    if isinstance(dt, float):
        return t0 + c * dt
    return torch.add(t0, dt, alpha=c)


@dataclass(frozen=True)
class ImplicitRK(AbstractSolver):
    """Base of the implicit Runge–Kutta solvers: Newton settings and dense output.

    Attributes:
        newton: Settings of the stage solves (match its ``rtol``/``atol`` to the
            controller's).
        interpolation: Output times inside a step: ``"hermite"`` (cubic Hermite, 3rd
            order, the default) or ``"linear"`` (what torchdiffeq's fixed-grid solvers do
            by default).
        linear_solver: The Newton updates' linear algebra: ``"lu"`` (a dense Jacobian
            ``∂f/∂y`` by autograd and its LU factorisation, per step; the default) or
            matrix-free, ``"gmres"`` or :class:`GMRES` with settings (Jacobian-vector
            products and restarted GMRES, for states too large for a dense Jacobian).
            Matrix-free, ``Stats.njev`` counts Jacobian-vector products (each batched over
            the rows), ``nlu`` stays 0 and ``nsolve`` counts GMRES solves.
    """

    tableau: ClassVar[Any]
    newton: Newton = field(default_factory=Newton)
    interpolation: str = "hermite"
    linear_solver: str | GMRES = "lu"

    def __post_init__(self) -> None:
        if not isinstance(self.newton, Newton):
            raise TypeError(
                f"newton must be a neuralode.Newton, got {type(self.newton).__name__}; "
                f"e.g. {type(self).__name__}(newton=Newton(rtol=1e-8, atol=1e-10))"
            )
        check_interpolation(self, self.interpolation)
        linear_solver_setting(type(self).__name__, self.linear_solver)

    @property
    def krylov(self) -> GMRES | None:
        """The GMRES settings of a matrix-free solver, ``None`` for dense Jacobians and LU."""
        return linear_solver_setting(type(self).__name__, self.linear_solver)

    @property
    def _tab(self) -> ImplicitTableau:
        return self.tableau

    @property
    def order(self) -> int:
        """Classical order of the propagated solution."""
        return self._tab.order

    @property
    def error_order(self) -> int:
        """``min(order, embedded order)``: the exponent base for step-size control."""
        embedded = self._tab.embedded_order
        return self._tab.order if embedded is None else min(self._tab.order, embedded)

    @property
    def adaptive(self) -> bool:
        """Whether the tableau has an embedded error estimate."""
        return self._tab.adaptive

    @property
    def fsal(self) -> bool:
        """An explicit first stage and a stiffly accurate last one: ``f1`` is free."""
        return self._tab.explicit_first and self._tab.stiffly_accurate

    @property
    def compilable(self) -> bool:
        """No: the Newton iterations stop on a host-side convergence test."""
        return False

    @property
    def needs_f1(self) -> bool:
        """Cubic Hermite dense output weighs ``f1`` (free when stiffly accurate)."""
        return self.interpolation == "hermite"

    @property
    def replay_needs_state(self) -> bool:
        """No: the state is a reused Jacobian, which changes Newton's path, not its root."""
        return False

    def initial_state(self, y0: torch.Tensor) -> SolverState:
        """No Jacobian yet: ``J (R, n, n)`` and ``[have J, last step's rate] (R, 2)``, zeros.

        Matrix-free Newton has no Jacobian to keep: ``()``.
        """
        if self.krylov is not None:
            return ()
        rows, n = y0.shape
        return y0.new_zeros(rows, n, n), y0.new_zeros(rows, 2)

    def _jacobian(
        self, call: RowField, f: Any, t0: Time, y: torch.Tensor, state: SolverState
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Newton matrix's Jacobian for this step, and the rows evaluated now.

        A row reuses the last step's while its Newton rate stayed below
        :data:`REUSE_RATE`. Rows decide alone (a row's steps are those of its solve on its
        own); the Jacobian is evaluated only when some row needs a new one. Simplified
        Newton needs only an approximate Jacobian; the gradient's linear solves use the
        exact one at each stage.
        """
        reuse = None
        if state:
            old, memory = state[:2]
            reuse = (memory[:, 0] > 0) & (memory[:, 1] <= REUSE_RATE)
            if bool(reuse.all()):
                return old, ~reuse
        count(f, njev=1)
        new = jacobian(call, t0, y).detach()
        if reuse is None:
            return new, torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
        return torch.where(reuse[:, None, None], old, new), ~reuse

    @staticmethod
    def _next_states(
        jac: torch.Tensor | None, fresh: torch.Tensor | None, eta: torch.Tensor
    ) -> tuple[SolverState, SolverState]:
        """The states after this step: if accepted, and if rejected (RADAU5's rules).

        Accepted: the Jacobian and the step's rate (``θ = η/(1 + η)``, the largest of its
        stages). Rejected: a row's Jacobian evaluated at this step's start is exact for
        the retry from the same point, so it is kept; an older one is dropped. Without a
        Jacobian (matrix-free Newton): no state.
        """
        if jac is None or fresh is None:
            return (), ()
        have = torch.ones_like(eta)
        theta = torch.nan_to_num(eta / (1 + eta), nan=1.0, posinf=1.0)
        accepted = (jac, torch.stack([have, theta], dim=-1))
        retry = (jac, torch.stack([fresh.to(eta.dtype), torch.zeros_like(eta)], dim=-1))
        return accepted, retry

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

    @property
    def error_weights(self) -> tuple[float, ...] | None:
        """``e`` with ``y_error = dt Σ_i e_i k_i`` over the step's ``k`` (``None`` without one).

        Differentiable through the stage solves (the implicit-function theorem), which is
        what :class:`~neuralode.regularizers.LocalError` needs.
        """
        error = self._tab.error_float
        if error is None or self._tab.explicit_first:
            return error
        return (0.0, *error)  # the step's k start with f0

    def _dense_b(self) -> tuple[float, ...]:
        # The step's k starts with f0 (Hermite's h10 weighs it): an implicit first stage
        # comes after it, with weight 0 on f0 in y1.
        b = self._tab.b_float
        return b if self._tab.explicit_first else (0.0, *b)

    def stage_weights(self, thetas: Sequence[float]) -> list[list[float]]:
        """Cubic Hermite (on ``k`` and ``f1``) or linear weights at each ``θ``."""
        b = self._dense_b()
        if self.interpolation == "linear":
            return [[theta * bi for bi in b] for theta in thetas]
        return [hermite_weights(b, theta) for theta in thetas]

    def stage_polynomials(self) -> list[list[float]]:
        """:meth:`stage_weights` as polynomial coefficients."""
        b = self._dense_b()
        if self.interpolation == "linear":
            return [[0.0, bi] for bi in b]
        return hermite_polynomials(b)

    def _result(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor,
        k: list[torch.Tensor],
        k0: torch.Tensor,
        h: StepSize,
        failed: torch.Tensor,
        states: tuple[SolverState, SolverState] = ((), ()),
        y_error: torch.Tensor | None = None,
    ) -> StepResult:
        """The step's result from its rows: error estimate, failed rows NaN, y0's shape.

        ``k`` are the stages' derivatives (with ``f0`` first for an explicit first stage);
        ``states``: the solver states if accepted and if rejected (``()``: blank);
        ``y_error``: an error estimate on rows that is not a sum of the stages (else the
        tableau's error weights give it).
        """
        tab = self._tab
        if y_error is None and tab.error_float is not None:
            # Step-size control is not differentiated: keep the estimate out of the graph.
            with torch.no_grad():
                if isinstance(h, float):
                    y_error = weighted_sum(k, [e * h for e in tab.error_float])
                else:
                    y_error = weighted_sum(k, tab.error_float).mul_(h)
        if bool(failed.any()):
            # A failed Newton iteration is a rejected step: NaN is what the controller
            # rejects and shrinks, row by row.
            rejected = failed.unsqueeze(-1)
            y1 = torch.where(rejected, math.nan, y1)
            if y_error is not None:
                y_error = torch.where(rejected, math.nan, y_error)
        f1 = k[-1] if tab.stiffly_accurate else None
        if not tab.explicit_first:
            k = [k0, *k]
        if isinstance(h, float):
            shape = y0.shape
            k = [kj.reshape(shape) for kj in k]
            f1 = None if f1 is None else k[-1]
            y1 = y1.reshape(shape)
            y_error = None if y_error is None else y_error.reshape(shape)
        accepted, retry = states
        return StepResult(
            y1=y1, y_error=y_error, f1=f1, k=tuple(k), newton_failed=failed, state=accepted,
            retry_state=retry,
        )  # fmt: skip
