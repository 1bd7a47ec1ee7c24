"""Adams multistep methods on a fixed grid: Adams–Bashforth and Adams–Bashforth–Moulton.

A multistep method reuses ``f`` at earlier points, so it carries a history from step to
step: the solver state (:meth:`AbstractSolver.initial_state`). It holds the last values
of ``f``, newest first, and in one float64 row how many of them are valid and their
times (the step reads that row on the host once)::

    F: (1, P, N)   [count, t_1, ..., t_P]: (1, 1 + P)

They step the joint state (a fixed grid is one grid for the whole state). The
coefficients are those of the polynomial through the history's actual times, so a grid
whose steps vary
(a last step cut short to land on ``t1``, irregular output times used as the grid, a
step cut at an event) keeps the method's order. On an even grid they are the classical
ones, read from tables computed exactly with fractions. Like torchdiffeq's, the first
steps are RK4 (Kutta's 3/8 rule) while the history is too short, and the order then
grows by one per step up to the method's.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, lru_cache
from typing import ClassVar, TypeVar

import torch

from ._explicit_rk import (
    AbstractSolver,
    FlatField,
    SolverState,
    StepResult,
    StepSize,
    Time,
    hermite_polynomials,
    hermite_weights,
)
from .fixed import RK4

MAX_ORDER = 12
# The first Adams step uses three values of f (torchdiffeq's rule: below that, RK4).
_MIN_VALUES = 3
_INTERPOLATIONS = ("auto", "hermite", "linear")
# Steps whose nodes are within this of an even grid (relative to the step) use the
# exact classical coefficients; the general formula agrees with them to rounding.
_EVEN = 1e-12
# The step is y1 = y0 + dt * slope: dense output sees two "stages", f0 and the slope.
_B = (0.0, 1.0)
_RK4 = RK4()

Number = TypeVar("Number", float, Fraction)


def integrated_lagrange(nodes: Sequence[Number]) -> list[Number]:
    """``∫_0^1 ℓ_j(s) ds`` for the Lagrange basis on ``nodes`` (exact for fractions).

    ``nodes`` are times relative to the step, ``s = (t - t0) / dt``. The numerator
    polynomials are built from their roots: for past nodes (``s ≤ 0``) every factor
    ``s - s_i`` has non-negative coefficients, so the integral over ``[0, 1]`` sums terms
    of one sign and does not cancel, even at order 12 in floats.
    """
    weights = []
    for j, sj in enumerate(nodes):
        poly = [sj - sj + 1]  # coefficients, lowest degree first (1 of the nodes' type)
        denominator = sj - sj + 1
        for i, si in enumerate(nodes):
            if i == j:
                continue
            poly = [
                (poly[p - 1] if p else 0) - si * (poly[p] if p < len(poly) else 0)
                for p in range(len(poly) + 1)
            ]
            denominator *= sj - si
        weights.append(sum(c / (p + 1) for p, c in enumerate(poly)) / denominator)
    return weights


@cache
def even_weights(n_values: int, implicit: bool) -> tuple[float, ...]:
    """The classical coefficients on an even grid, newest value first.

    Adams–Bashforth (``implicit=False``): on ``f`` at ``s = 0, -1, …, -(n-1)``.
    Adams–Moulton: on ``f`` at ``s = 1, 0, -1, …, -(n-2)`` (``n`` values with the new one).
    """
    start = 1 if implicit else 0
    nodes = [Fraction(start - j) for j in range(n_values)]
    return tuple(float(w) for w in integrated_lagrange(nodes))


def adams_weights(nodes: Sequence[float], implicit: bool) -> tuple[float, ...]:
    """The weights on ``f`` at ``nodes`` (newest first): the exact table on an even grid."""
    start = 1.0 if implicit else 0.0
    if all(abs(s - (start - j)) <= _EVEN for j, s in enumerate(nodes)):
        return even_weights(len(nodes), implicit)
    return tuple(integrated_lagrange(list(nodes)))


@lru_cache(maxsize=64)
def _as_tensor(
    weights: tuple[float, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    # Cached: on an even grid every step has the same weights.
    return torch.tensor(weights, dtype=dtype, device=device)


@dataclass(frozen=True)
class AdamsBashforth(AbstractSolver):
    """Adams–Bashforth of a given order on a fixed grid (torchdiffeq's ``explicit_adams``).

    One evaluation of ``f`` per step: ``y1 = y0 + dt Σ_j β_j f_{n-j}`` over the last
    ``order`` values of ``f``. Explicit multistep methods have small stability regions,
    which shrink as the order grows: the step must be small against the dynamics' time
    scales (for stiff problems use an implicit solver, see the stiff solvers' guide).

    Attributes:
        order: The method's order, 1 to 12 (the number of values of ``f`` it uses).
        interpolation: Output times inside a step: ``"auto"``/``"hermite"`` (cubic
            Hermite, which costs no extra evaluation: the next step needs ``f(t1, y1)``
            anyway) or ``"linear"``.
    """

    order: int = 4  # a field here; one-step methods compute it
    interpolation: str = "auto"
    # The lowest order the method has (a corrector needs a predictor of order ≥ 1).
    _LOWEST: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_order(self.order, self._LOWEST, type(self).__name__)
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}"
            )

    # Values of f the predictor uses at most (f0 included).
    @property
    def _values(self) -> int:
        return self.order

    @property
    def error_order(self) -> int:
        """A fixed-step method: its order."""
        return self.order

    @property
    def adaptive(self) -> bool:
        """No error estimate: a fixed grid."""
        return False

    @property
    def fsal(self) -> bool:
        """``f(t1, y1)`` is the next step's first evaluation, not a by-product."""
        return False

    @property
    def compilable(self) -> bool:
        """No: the step reads the history's length and spacing on the host."""
        return False

    @property
    def needs_f1(self) -> bool:
        """Cubic Hermite weighs ``f(t1, y1)``."""
        return self.interpolation != "linear"

    def stage_weights(self, thetas: Sequence[float]) -> list[list[float]]:
        """Weights on ``(f0, slope[, f1])``, with ``y1 = y0 + dt * slope``."""
        if self.interpolation == "linear":
            return [[0.0, theta] for theta in thetas]
        return [hermite_weights(_B, theta) for theta in thetas]

    def stage_polynomials(self) -> list[list[float]]:
        """:meth:`stage_weights` as polynomial coefficients."""
        if self.interpolation == "linear":
            return [[0.0, 0.0], [0.0, 1.0]]
        return hermite_polynomials(_B)

    def initial_state(self, y0: torch.Tensor) -> SolverState:
        """An empty history: ``F (1, P, N)`` and ``[count, t_1..t_P]`` ``(1, 1 + P)``, zeros."""
        rows, n = y0.shape
        past = max(self._values - 1, 1)
        return (
            y0.new_zeros(rows, past, n),
            torch.zeros(rows, 1 + past, dtype=torch.float64, device=y0.device),
        )

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
        """One step from the history in ``state`` (RK4 while it is too short)."""
        if not isinstance(dt, float) or isinstance(t0, torch.Tensor):
            raise TypeError(
                f"{type(self).__name__} steps the joint state on a fixed grid; per-sample "
                "mode (batch_dims=1) needs an adaptive solver such as Dopri5()"
            )
        history, meta = state if state else self.initial_state(y0.reshape(1, -1))
        # The state's one host read per step: how many past values, and their times.
        count, *times = meta[0].tolist()
        n_past = min(int(count), self._values - 1)
        past = history[0]
        if n_past + 1 < min(self._values, _MIN_VALUES):
            y1 = _RK4.step(f, t0, y0, f0, dt, t1_stage).y1
            slope, converged = (y1 - y0) / dt, True
        else:
            nodes = [0.0, *((t - t0) / dt for t in times[:n_past])]
            slope, converged = self._slope(f, t0, y0, f0, dt, t1_stage, past[:n_past], nodes)
            y1 = torch.add(y0, slope, alpha=dt)
        # The new history: f0 first; it grows by one unless the corrector did not converge.
        grown = min(n_past + 1 if converged else n_past, history.shape[1])
        new_meta = [float(grown), float(t0), *times[: history.shape[1] - 1]]
        new_state = (
            torch.cat([f0.reshape(1, 1, -1), history[:, :-1]], dim=1),
            torch.tensor([new_meta], dtype=torch.float64, device=meta.device),
        )
        return StepResult(y1=y1, y_error=None, f1=None, k=(f0, slope), state=new_state)

    def _slope(
        self,
        f: FlatField,
        t0: float,
        y0: torch.Tensor,
        f0: torch.Tensor,
        dt: float,
        t1_stage: float | None,
        past: torch.Tensor,
        nodes: list[float],
    ) -> tuple[torch.Tensor, bool]:
        """``(y1 - y0) / dt`` of the Adams–Bashforth step, and True (nothing to converge)."""
        return _combine(adams_weights(nodes, False), f0, past), True


@dataclass(frozen=True)
class AdamsBashforthMoulton(AdamsBashforth):
    """Adams–Bashforth predictor, Adams–Moulton corrector (torchdiffeq's ``implicit_adams``).

    The predictor of order ``order - 1`` gives a first ``y1``; the corrector of order
    ``order`` is iterated by evaluating ``f(t1, y1)`` until two successive increments
    agree within ``rtol``/``atol`` (at most ``max_iters`` evaluations), the same test as
    torchdiffeq's. Each step costs the corrector's evaluations plus ``f(t1, y1)`` for the
    next step. The iteration is a fixed point, not Newton: it converges when
    ``dt · ‖∂f/∂y‖`` is small, so it is not a stiff solver. A step whose iteration did not
    converge is kept (it is still the predictor–corrector method of the same order), a
    warning says so, and the order stops growing for that step.

    Attributes:
        order: The method's order, 2 to 12.
        max_iters: Corrector evaluations per step at most.
        rtol, atol: The corrector's convergence test.
        interpolation: As :class:`AdamsBashforth`'s.
    """

    max_iters: int = 4
    rtol: float = 1e-7
    atol: float = 1e-9
    _LOWEST: ClassVar[int] = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.max_iters, bool) or not isinstance(self.max_iters, int):
            raise TypeError(f"max_iters must be an int, got {self.max_iters!r}")
        if self.max_iters < 1:
            raise ValueError(f"max_iters must be at least 1, got {self.max_iters}")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")

    @property
    def _values(self) -> int:
        return self.order - 1

    def _slope(
        self,
        f: FlatField,
        t0: float,
        y0: torch.Tensor,
        f0: torch.Tensor,
        dt: float,
        t1_stage: float | None,
        past: torch.Tensor,
        nodes: list[float],
    ) -> tuple[torch.Tensor, bool]:
        """Predict, then correct until two increments agree; whether they did."""
        slope = _combine(adams_weights(nodes, False), f0, past)
        # The corrector's nodes: the new point s = 1, then the predictor's.
        gamma = adams_weights([1.0, *nodes], True)
        known = _combine(gamma[1:], f0, past)
        gamma_new = gamma[0]
        t1 = t0 + dt if t1_stage is None else t1_stage
        for _ in range(self.max_iters):
            f1 = f(t1, torch.add(y0, slope, alpha=dt))
            new = torch.add(known, f1, alpha=gamma_new)
            # torchdiffeq's test, on the increments dt * slope.
            with torch.no_grad():
                scale = (self.atol / abs(dt)) + self.rtol * torch.maximum(slope.abs(), new.abs())
                converged = bool(((new - slope).abs() < scale).all())
            slope = new
            if converged:
                return slope, True
        warnings.warn(
            f"AdamsBashforthMoulton: the corrector did not converge in max_iters="
            f"{self.max_iters} evaluations at t={t0} (dt={dt}); the step is kept. Use a "
            "smaller step, or a stiff solver if the problem is stiff.",
            RuntimeWarning,
            stacklevel=3,
        )
        return slope, False


def _check_order(order: object, lowest: int, name: str) -> None:
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"{name}: order must be an int, got {order!r}")
    if not lowest <= order <= MAX_ORDER:
        raise ValueError(f"{name}: order must be between {lowest} and {MAX_ORDER}, got {order}")


def _combine(weights: tuple[float, ...], f0: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
    """``w_0 f0 + Σ_j w_j past[j-1]``: one matrix-vector product for the history."""
    out = torch.mul(f0.reshape(-1), weights[0])
    if past.shape[0]:
        out.addmv_(past.t(), _as_tensor(weights[1:], f0.dtype, f0.device))
    return out.reshape(f0.shape)
