"""Rosenbrock (linearly implicit) methods: the coefficient set and the one generic step.

An ``s``-stage Rosenbrock method (Hairer & Wanner II, §IV.7, eq. 7.4') computes

    (I − hγJ) K_i = h f(t0 + α_i h, y0 + Σ_{j<i} α_ij K_j) + hJ Σ_{j<i} γ_ij K_j + h² γ_i ∂f/∂t,
    y1 = y0 + Σ b_i K_i,

with ``J = ∂f/∂y`` and ``∂f/∂t`` at ``(t0, y0)``, ``α_i = Σ_j α_ij`` and
``γ_i = γ + Σ_{j<i} γ_ij``. Every stage is one linear solve with the same matrix
``I − hγJ``: one Jacobian and one LU factorisation per step, no Newton iteration. The
embedded solution ``Σ b̂_i K_i`` gives the error estimate.

The step is an explicit function of ``y0``, the parameters and the linear solves, so
autograd differentiates it directly. That needs ``J`` itself differentiable (its own
dependence on ``y0`` and the parameters): under autograd it is computed differentiably
(``torch.func.vjp``), otherwise the gradient would miss ``∂J/∂θ``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar

import torch

from .. import _autograd as autograd
from ._explicit_rk import (
    AbstractSolver,
    FlatField,
    SolverState,
    StepResult,
    StepSize,
    Time,
    hermite_polynomials,
    hermite_weights,
    weighted_sum,
)
from ._implicit import check_interpolation, on_rows, refuse_compile, stage_time
from ._newton import REVERSE_UP_TO, Factorised, RowField, count, jacobian, per_matrix
from ._tableau import CONSISTENCY_TOL, Number, floats


@dataclass(frozen=True)
class RosenbrockTableau:
    """A Rosenbrock method in Hairer & Wanner's form (II, §IV.7, eq. 7.4').

    Attributes:
        name: Method name, for messages.
        gamma: The diagonal ``γ > 0``, the same for every stage.
        alpha: Strictly lower triangle of ``α``: ``s`` rows, row ``i`` with ``i`` entries.
        gammas: Strictly lower triangle of ``Γ`` (without the diagonal ``γ``), same shape.
        b: Weights of the propagated solution, length ``s``.
        order: Classical order of ``b`` (with the exact Jacobian).
        b_hat: Embedded weights, length ``s``.
        embedded_order: Order of ``b_hat``.
    """

    name: str
    gamma: Number
    alpha: Sequence[Sequence[Number]]
    gammas: Sequence[Sequence[Number]]
    b: Sequence[Number]
    order: int
    b_hat: Sequence[Number]
    embedded_order: int
    alpha_float: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    gammas_float: tuple[tuple[float, ...], ...] = field(init=False, repr=False, compare=False)
    nodes: tuple[float, ...] = field(init=False, repr=False, compare=False)
    time_weights: tuple[float, ...] = field(init=False, repr=False, compare=False)
    b_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    error_float: tuple[float, ...] = field(init=False, repr=False, compare=False)
    fsal: bool = field(init=False, repr=False, compare=False)
    same_point: tuple[int | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "alpha", tuple(tuple(row) for row in self.alpha))
        set_(self, "gammas", tuple(tuple(row) for row in self.gammas))
        set_(self, "b", tuple(self.b))
        set_(self, "b_hat", tuple(self.b_hat))
        s = len(self.b)
        for label, rows in (("alpha", self.alpha), ("gammas", self.gammas)):
            if len(rows) != s or any(len(row) != i for i, row in enumerate(rows)):
                raise ValueError(
                    f"{self.name}: {label} must have {s} rows of lengths 0..{s - 1}, got "
                    f"lengths {[len(row) for row in rows]}"
                )
        if not float(self.gamma) > 0:
            raise ValueError(f"{self.name}: gamma must be positive, got {self.gamma}")
        for label, weights in (("b", self.b), ("b_hat", self.b_hat)):
            if len(weights) != s or abs(math.fsum(floats(weights)) - 1.0) > CONSISTENCY_TOL:
                raise ValueError(f"{self.name}: {label} must have {s} entries summing to 1")
        alpha = tuple(floats(row) for row in self.alpha)
        gammas = tuple(floats(row) for row in self.gammas)
        b = floats(self.b)
        set_(self, "alpha_float", alpha)
        set_(self, "gammas_float", gammas)
        # Coefficients converted from another form sum to 1 and 0 only to rounding: snap
        # them, so that stages at the step end are evaluated at exactly t0 + dt (or the
        # left limit before a jump) and the last Rodas stages skip the ∂f/∂t term.
        set_(self, "nodes", tuple(_snap(math.fsum(row), 1.0) for row in alpha))
        set_(
            self,
            "time_weights",
            tuple(_snap(float(self.gamma) + math.fsum(row), 0.0) for row in gammas),
        )
        set_(self, "b_float", b)
        set_(self, "error_float", tuple(x - float(y) for x, y in zip(b, self.b_hat, strict=True)))
        # The last stage evaluates f at y1 itself (and at t1): f(t1, y1) comes for free.
        last = alpha[-1]
        set_(
            self,
            "fsal",
            b[-1] == 0.0
            and abs(self.nodes[-1] - 1.0) <= CONSISTENCY_TOL
            and all(abs(x - y) <= CONSISTENCY_TOL for x, y in zip(last, b[:-1], strict=True)),
        )

        # A stage whose argument is an earlier stage's (the same α row and node: ROS3P's
        # third stage is at its second's point) reuses that evaluation of f.
        same: list[int | None] = []
        for i, row in enumerate(alpha):
            padded = (*row, *([0.0] * (s - len(row))))
            earlier = (
                j
                for j in range(1, i)
                if self.nodes[j] == self.nodes[i] and (*alpha[j], *([0.0] * (s - j))) == padded
            )
            same.append(next(earlier, None) if any(a != 0.0 for a in row) else None)
        set_(self, "same_point", tuple(same))

    @property
    def stages(self) -> int:
        """Number of stages ``s``."""
        return len(self.b)

    @property
    def evaluations(self) -> int:
        """Evaluations of ``f`` per step at stages (not ``f0``, not reused points)."""
        return sum(
            1
            for row, same in zip(self.alpha_float, self.same_point, strict=True)
            if same is None and any(a != 0.0 for a in row)
        )


def _snap(x: float, to: float) -> float:
    return to if abs(x - to) <= CONSISTENCY_TOL else x


def derivatives(
    call: RowField, t: Time, y: torch.Tensor, differentiable: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(J, ∂f/∂t)`` for every row: ``(R, n, n)`` and ``(R, n)``, by reverse-mode autograd.

    One evaluation of ``f`` and ``n`` vector-Jacobian products with cotangent ``e_i`` on
    every row (rows are independent problems, so that is row ``i`` of every row's own
    Jacobian, and ``∂f_i/∂t`` of every row's own time). With ``differentiable`` the
    products are themselves differentiable (``torch.func.vjp`` under the outer autograd,
    like ``create_graph=True``): the step's gradient then includes the Jacobian's own
    dependence on ``y0``, ``t`` and the parameters.

    Outside autograd, states of more than ``REVERSE_UP_TO`` components take ``J`` the
    implicit solvers' way (:func:`._newton.jacobian`: forward mode, vmapped) and
    ``∂f/∂t`` by one forward-mode product, cheaper than ``n`` reverse products.
    """
    rows, n = y.shape
    eye = torch.eye(n, dtype=y.dtype, device=y.device)
    if not isinstance(t, torch.Tensor):
        t = torch.tensor(t, dtype=torch.float64, device=y.device)
    if not differentiable and n > REVERSE_UP_TO:
        forward = _forward_derivatives(call, t, y)
        if forward is not None:
            return forward
    with torch.enable_grad():
        if differentiable:
            # torch.func.vjp, not torch.autograd.grad on the state: autograd's engine walks
            # every node reachable from its roots, so grad with respect to a state that
            # carries the whole solve's graph costs a walk over the history at each step
            # (measured: 21 s instead of 0.5 s for a per-sample solve of ~400 steps).
            pulled = torch.func.vjp(lambda z, s: call(s, z), y, t)
            out, pull = pulled[0], pulled[1]
        else:
            x, s = y.detach().requires_grad_(True), t.detach().requires_grad_(True)
            out = call(s, x)
            if not out.requires_grad:
                return y.new_zeros(rows, n, n), y.new_zeros(rows, n)  # f is constant

            def pull(v: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
                return autograd.grad(out, (x, s), v, retain_graph=True, allow_unused=True)

        lines, slopes = [], []
        for i in range(n):
            gy, gt = pull(eye[i].expand(rows, n))
            lines.append(torch.zeros_like(y) if gy is None else gy)
            slopes.append(y.new_zeros(rows) if gt is None else gt.to(y.dtype).expand(rows))
    jac = torch.stack(lines, dim=1)  # (R, n_out, n_in)
    dfdt = torch.stack(slopes, dim=1)  # (R, n)
    if not differentiable:
        jac, dfdt = jac.detach(), dfdt.detach()
    return jac, dfdt


def _forward_derivatives(
    call: RowField, t: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(J, ∂f/∂t)`` by forward mode; ``None`` for a field forward mode cannot trace."""
    y, t = y.detach(), t.detach()
    try:
        with torch.no_grad():
            dfdt = torch.func.jvp(lambda s: call(s, y), (t,), (torch.ones_like(t),))[1]
    except (RuntimeError, NotImplementedError):
        return None
    return jacobian(call, t, y), dfdt.to(y.dtype).expand_as(y)


@dataclass(frozen=True)
class Rosenbrock(AbstractSolver):
    """Base of the Rosenbrock solvers: a coefficient set and the generic step.

    Each step evaluates ``J = ∂f/∂y`` and ``∂f/∂t`` once at ``(t0, y0)`` (autograd; per
    sample, a ``(B, n, n)`` batch, in per-sample mode), factorises ``I − hγJ`` once and
    does one linear solve per stage. A singular or non-finite matrix makes the step's
    ``y1`` NaN, which the step-size controller rejects and shrinks (per sample).

    Attributes:
        interpolation: Output times inside a step: ``"hermite"`` (cubic Hermite through
            ``y0, f0, y1, f1``, 3rd order, the default) or ``"linear"``.
        linear_solver: Only ``"lu"`` (a dense Jacobian and its LU factorisation). A
            Rosenbrock method's order conditions assume the exact ``J`` and exact linear
            solves inside the step (there is no Newton iteration to correct an inexact
            one), and its gradient backpropagates through the solves: matrix-free GMRES
            is refused, with the implicit solvers' option named instead.

    Subclasses are frozen dataclasses that set the class attribute ``tableau``.
    """

    tableau: ClassVar[RosenbrockTableau]
    interpolation: str = "hermite"
    linear_solver: str = "lu"

    def __post_init__(self) -> None:
        check_interpolation(self, self.interpolation)
        if not (isinstance(self.linear_solver, str) and self.linear_solver == "lu"):
            name = type(self).__name__
            raise ValueError(
                f"{name}(linear_solver=...) takes only 'lu', got {self.linear_solver!r}: a "
                "Rosenbrock method needs the exact Jacobian and exact linear solves inside "
                "its step (no Newton iteration corrects an inexact one); for matrix-free "
                "Jacobian-vector products and GMRES use an implicit solver, e.g. "
                "Kvaerno5(linear_solver='gmres')"
            )

    @property
    def order(self) -> int:
        """Classical order of the propagated solution."""
        return self.tableau.order

    @property
    def error_order(self) -> int:
        """``min(order, embedded order)``: the exponent base for step-size control."""
        return min(self.tableau.order, self.tableau.embedded_order)

    @property
    def adaptive(self) -> bool:
        """Yes: every Rosenbrock method here has an embedded solution."""
        return True

    @property
    def fsal(self) -> bool:
        """Whether the last stage is ``f(t1, y1)``."""
        return self.tableau.fsal

    @property
    def compilable(self) -> bool:
        """No: the Jacobian is taken by ``torch.autograd.grad`` inside the step."""
        return False

    @property
    def needs_f1(self) -> bool:
        """Cubic Hermite weighs ``f1`` (free when the last stage is at ``y1``)."""
        return self.interpolation == "hermite"

    # The step's k are (f0, (y1 − y0)/dt): y1 − y0 is not a sum of evaluations of f.
    _DENSE_B = (0.0, 1.0)

    def stage_weights(self, thetas: Sequence[float]) -> list[list[float]]:
        """Cubic Hermite (on ``f0``, ``(y1 − y0)/dt`` and ``f1``) or linear weights."""
        if self.interpolation == "linear":
            return [[0.0, theta] for theta in thetas]
        return [hermite_weights(self._DENSE_B, theta) for theta in thetas]

    def stage_polynomials(self) -> list[list[float]]:
        """:meth:`stage_weights` as polynomial coefficients."""
        if self.interpolation == "linear":
            return [[0.0, 0.0], [0.0, 1.0]]
        return hermite_polynomials(self._DENSE_B)

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
        differentiable = torch.is_grad_enabled() and (
            f0.requires_grad or y0.requires_grad or isinstance(h, torch.Tensor) and h.requires_grad
        )
        jac, dfdt = derivatives(call, t0, y, differentiable)
        count(f, njev=1)
        hm = per_matrix(h) if not differentiable or isinstance(h, float) else h.unsqueeze(-1)
        matrix = Factorised.of(hm * float(tab.gamma) * jac, f)
        big_k: list[torch.Tensor] = []
        f_stages: list[torch.Tensor] = []
        f_stage = k0
        for i in range(tab.stages):
            alpha, gammas, same = tab.alpha_float[i], tab.gammas_float[i], tab.same_point[i]
            if same is not None:
                f_stage = f_stages[same]
            elif any(a != 0.0 for a in alpha):
                y_stage = y + weighted_sum(big_k, alpha)
                f_stage = call(stage_time(t0, dt, tab.nodes[i], t1_stage), y_stage)
            else:
                f_stage = k0  # f at (t0, y0)
            f_stages.append(f_stage)
            rhs = h * f_stage
            if any(g != 0.0 for g in gammas):
                mix = weighted_sum(big_k, gammas)
                rhs = rhs + h * (jac @ mix.unsqueeze(-1)).squeeze(-1)
            if tab.time_weights[i] != 0.0:
                rhs = rhs + (tab.time_weights[i] * h * h) * dfdt
            big_k.append(matrix.solve(rhs, f))
        y1 = y + weighted_sum(big_k, tab.b_float)
        with torch.no_grad():
            # Step-size control is not differentiated: keep the estimate out of the graph.
            y_error = weighted_sum(big_k, tab.error_float)
        if bool(matrix.singular.any()):
            rejected = matrix.singular.unsqueeze(-1)
            y1 = torch.where(rejected, math.nan, y1)
            y_error = torch.where(rejected, math.nan, y_error)
        f1 = f_stage if tab.fsal else None
        k = [k0, (y1 - y) / h]
        if isinstance(h, float):
            shape = y0.shape
            k = [kj.reshape(shape) for kj in k]
            f1 = None if f1 is None else f1.reshape(shape)
            y1, y_error = y1.reshape(shape), y_error.reshape(shape)
        return StepResult(y1=y1, y_error=y_error, f1=f1, k=tuple(k))


def from_transformed(
    name: str,
    gamma: str,
    a: Sequence[Sequence[str]],
    c: Sequence[Sequence[str]],
    m: Sequence[str],
    m_hat: Sequence[str],
    order: int,
    embedded_order: int,
) -> RosenbrockTableau:
    """A tableau from the transformed form most codes print (Hairer & Wanner II, eq. 7.25).

    That form solves ``(I/(hγ) − J) U_i = f(y0 + Σ a_ij U_j) + Σ (c_ij/h) U_j + …`` with
    ``y1 = y0 + Σ m_j U_j``; it relates to ``α, Γ, b`` by ``a = αΓ⁻¹``,
    ``C = diag(1/γ) − Γ⁻¹`` and ``m = bΓ⁻¹``. The conversion is done in exact rational
    arithmetic on the printed decimals, so the order conditions test the printed values.
    """
    g = Fraction(gamma)
    s = len(m)
    inv = [[Fraction(0)] * s for _ in range(s)]  # Γ⁻¹ = diag(1/γ) − C, lower triangular
    for i in range(s):
        inv[i][i] = 1 / g
        for j, x in enumerate(c[i]):
            inv[i][j] = -Fraction(x)
    big_gamma = _lower_inverse(inv)
    full_a = [[Fraction(x) for x in row] + [Fraction(0)] * (s - len(row)) for row in a]
    alpha = [
        [sum((full_a[i][k] * big_gamma[k][j] for k in range(s)), Fraction(0)) for j in range(i)]
        for i in range(s)
    ]
    gammas = [[big_gamma[i][j] for j in range(i)] for i in range(s)]

    def times_gamma(w: Sequence[str]) -> tuple[Fraction, ...]:
        return tuple(
            sum((Fraction(w[k]) * big_gamma[k][j] for k in range(s)), Fraction(0)) for j in range(s)
        )

    return RosenbrockTableau(
        name, g, alpha, gammas, times_gamma(m), order, times_gamma(m_hat), embedded_order
    )


def _lower_inverse(lower: list[list[Fraction]]) -> list[list[Fraction]]:
    """The inverse of a lower-triangular matrix, by forward substitution, exactly."""
    s = len(lower)
    out = [[Fraction(0)] * s for _ in range(s)]
    for j in range(s):
        for i in range(j, s):
            rhs = Fraction(1 if i == j else 0) - sum(lower[i][k] * out[k][j] for k in range(j, i))
            out[i][j] = rhs / lower[i][i]
    return out
