"""torchdiffeq's behaviours around the solver, for neuralode.compat only.

The vector field wrapper (time in the state's dtype, dtype promotion, ``perturb``) and a
controller wrapper that calls torchdiffeq's ``callback_*`` methods and marks extra jump
times. Both wrap the native objects; the native API never sees them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._solution import State
from .controllers import AbstractController, Decision, SolveStart
from .solvers._explicit_rk import StepResult

CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


class Promote(Exception):
    """Raised by :class:`CompatField` on its first call when ``f`` returns a wider dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__(f"the vector field computes in {dtype}")
        self.dtype = dtype


def real_dtype(y: State) -> torch.dtype:
    """The real dtype of ``y``'s (first) part: ``float64`` for ``complex128``."""
    part = y if isinstance(y, torch.Tensor) else y[0]
    return part.abs().dtype if part.is_complex() else part.dtype


class CompatField:
    """``func`` as torchdiffeq calls it.

    * ``t`` arrives in the state's (real) dtype: torchdiffeq casts it so (``_PerturbFunc``),
      and real code relies on it (``2 * y / t`` with a float32 state and float64 ``t``
      stays float32).
    * A vector field that returns a wider floating dtype than the state makes torchdiffeq
      compute in the promoted dtype: the first call raises :class:`Promote` so compat can
      restart the solve in that dtype; afterwards outputs are cast to ``dtype``.
    * ``perturb=True`` (fixed-step methods): evaluations at the first and last time are
      nudged one float into the interval, as torchdiffeq's ``Perturb.NEXT``/``PREV`` do;
      interior grid points are handled by the loop as jumps (left limit at the end of a
      step, right limit at the start of the next).
    """

    def __init__(
        self,
        func: Callable[..., State],
        y0: State,
        *,
        nudge: dict[float, float] | None = None,
    ) -> None:
        self.func = func
        self.t_dtype = real_dtype(y0)
        self.dtype = (y0 if isinstance(y0, torch.Tensor) else y0[0]).dtype
        # Keyed by the times as f sees them (in the state's dtype).
        self.nudge = {self._key(t): to for t, to in (nudge or {}).items()}
        self.first = True

    def _key(self, t: float) -> float:
        return float(torch.tensor(t, dtype=self.t_dtype))

    def __call__(self, t: torch.Tensor, y: State) -> State:
        if t.dtype != self.t_dtype:
            t = t.to(self.t_dtype)
        if self.nudge:
            t = self._nudged(t)
        out = self.func(t, y)
        if self.first:
            self.first = False
            self._check_promotion(out)
        return self._cast(out)

    def _nudged(self, t: torch.Tensor) -> torch.Tensor:
        toward = self.nudge.get(float(t))
        if toward is None:
            return t
        return torch.nextafter(t, torch.tensor(toward, dtype=t.dtype, device=t.device))

    def _check_promotion(self, out: object) -> None:
        parts = (out,) if isinstance(out, torch.Tensor) else out
        if not isinstance(parts, (tuple, list)):
            return  # the boundary check reports it
        wide = self.dtype
        for part in parts:
            if isinstance(part, torch.Tensor) and part.is_floating_point():
                wide = torch.promote_types(wide, part.dtype)
        if wide != self.dtype:
            raise Promote(wide)

    def _cast(self, out: State) -> State:
        if isinstance(out, torch.Tensor):
            return (
                out
                if out.dtype == self.dtype or not out.is_floating_point()
                else out.to(self.dtype)
            )
        if isinstance(out, (tuple, list)):
            return tuple(
                o.to(self.dtype)
                if isinstance(o, torch.Tensor) and o.is_floating_point() and o.dtype != self.dtype
                else o
                for o in out
            )
        return out


@dataclass(frozen=True)
class Callbacks:
    """The ``callback_*`` methods torchdiffeq calls, with the state restored for them.

    Attributes:
        step: ``callback_step(t0, y0, dt)`` before every attempted step, or ``None``.
        accept: ``callback_accept_step(t0, y0, dt)`` after an accepted step, or ``None``.
        reject: ``callback_reject_step(t0, y0, dt)`` after a rejected step, or ``None``.
        unflatten: Restores the user's state structure from the solver's tensor.
        t_dtype: dtype of the ``t0`` and ``dt`` tensors passed (torchdiffeq: float64 for
            adaptive methods, the grid's dtype for fixed-step ones).
    """

    step: Callable[..., Any] | None
    accept: Callable[..., Any] | None
    reject: Callable[..., Any] | None
    unflatten: Callable[[torch.Tensor], Any]
    t_dtype: torch.dtype

    def call(self, which: Callable[..., Any] | None, t0: float, y0: torch.Tensor, dt: float):
        """Call one callback with torchdiffeq's arguments (``t0`` in the caller's time)."""
        if which is None:
            return
        device = y0.device
        which(
            torch.tensor(t0, dtype=self.t_dtype, device=device),
            self.unflatten(y0),
            torch.tensor(dt, dtype=self.t_dtype, device=device),
        )


def find_callbacks(
    func: object, method: str, adaptive: bool, suffix: str = ""
) -> tuple[Callable[..., Any] | None, Callable[..., Any] | None, Callable[..., Any] | None]:
    """``func``'s ``callback_*`` methods (``suffix="_adjoint"``: their adjoint twins).

    Fixed-step methods only call ``callback_step``; like torchdiffeq, warn about the others.
    """
    step, accept, reject = (getattr(func, name + suffix, None) for name in CALLBACKS)
    if not adaptive and (accept or reject):
        names = {n + suffix for n, cb in zip(CALLBACKS[1:], (accept, reject), strict=True) if cb}
        warnings.warn(f"Solver '{method}' does not support callbacks {names}", stacklevel=5)
        return step, None, None
    return step, accept, reject


@dataclass(frozen=True)
class CompatController(AbstractController):
    """A native controller plus torchdiffeq's callbacks and extra jump times.

    The controller is the one object the loop consults before and after every step, so
    the callbacks ride on it: ``callback_step`` for the first step at :meth:`init`, then
    after each verdict ``callback_accept_step``/``callback_reject_step`` and
    ``callback_step`` for the next attempt (torchdiffeq's order). Not a PIDController, so
    BacksolveAdjoint uses it as given (compat builds the backward norm itself).

    Attributes:
        inner: The native controller making every decision.
        callbacks: The user's callbacks, or ``None``.
        jump_ts: Extra times at which ``f`` jumps (``perturb=True``: the interior grid).
    """

    inner: AbstractController
    callbacks: Callbacks | None = None
    jump_ts: tuple[float, ...] = ()

    @property
    def adaptive(self) -> bool:
        """As the inner controller."""
        return self.inner.adaptive

    def min_step(self) -> float:
        """As the inner controller."""
        return self.inner.min_step()

    def tolerances(self) -> tuple[Any, Any]:
        """As the inner controller."""
        return self.inner.tolerances()

    def stops(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The inner controller's stops, plus :attr:`jump_ts`."""
        step_ts, jump_ts = self.inner.stops()
        return step_ts, tuple(jump_ts) + self.jump_ts

    def init(self, start: SolveStart) -> tuple[float, Any]:
        """The inner first step; announce it to ``callback_step``."""
        dt, state = self.inner.init(start)
        d, tau_end = start.direction, float(start.tau_end)
        if self.callbacks is not None:
            self.callbacks.call(self.callbacks.step, d * float(start.tau0), start.y0, dt)
        return dt, (state, d, tau_end)

    def decide(
        self, tau0: float, dt: float, y0: torch.Tensor, step: StepResult, state: Any
    ) -> Decision:
        """The inner verdict, reported to the callbacks."""
        inner_state, d, tau_end = state
        decision = self.inner.decide(tau0, dt, y0, step, inner_state)
        cb = self.callbacks
        if cb is not None:
            cb.call(cb.accept if decision.accept else cb.reject, d * tau0, y0, dt)
            tau1 = tau0 + dt if decision.accept else tau0
            done = tau1 >= tau_end - 4 * math.ulp(max(1.0, abs(tau_end)))
            if not done:
                y1 = step.y1 if decision.accept else y0
                cb.call(cb.step, d * tau1, y1, float(decision.dt_next))
        return Decision(decision.accept, decision.dt_next, (decision.state, d, tau_end),
                        decision.nonfinite)  # fmt: skip
