"""The controller interface: choose the first step and accept or reject each step."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch

from ..solvers._explicit_rk import AbstractSolver, FlatField, StepResult, Time


@dataclass(frozen=True)
class SolveStart:
    """What a controller may look at to choose the first step.

    Attributes:
        solver: The solver (its ``error_order`` sets the step-size exponent).
        f: The vector field on the solver's state.
        t0: Initial time (caller's time).
        y0: Initial state.
        f0: ``f(t0, y0)``.
        tau0: Initial time in forward time ``tau = direction * t``.
        tau_end: Final time in forward time.
        direction: ``+1.0`` or ``-1.0``.
        rtol: Relative tolerance on the solver's state (float or tensor).
        atol: Absolute tolerance likewise.
    """

    solver: AbstractSolver
    f: FlatField
    t0: Time
    y0: torch.Tensor
    f0: torch.Tensor
    tau0: Time
    tau_end: Time
    direction: float
    rtol: torch.Tensor | float
    atol: torch.Tensor | float


@dataclass  # (not frozen: built at every step; see StepResult)
class Decision:
    """A controller's verdict on one attempted step.

    Attributes:
        accept: Keep the step.
        dt_next: Size of the next step to attempt (positive; in the direction of
            integration).
        state: The controller's new state.
        nonfinite: The step was rejected because it produced NaN or inf.
    """

    accept: Any
    dt_next: Any
    state: Any
    nonfinite: Any = False


class AbstractController(abc.ABC):
    """Step-size control. Holds configuration only; its state is passed explicitly.

    Times seen by a controller run forwards (``tau = direction * t``), so step sizes are
    positive for forward and reverse solves alike. One ``init`` and one ``decide`` serve
    both modes: written with :mod:`neuralode._arith`, the same formula reads on Python
    floats (joint) and on ``(B,)`` rows (per-sample).
    """

    @property
    @abc.abstractmethod
    def adaptive(self) -> bool:
        """Whether this controller needs an error estimate from the solver."""

    @abc.abstractmethod
    def init(self, start: SolveStart) -> tuple[Any, Any]:
        """Return the first step size and the initial controller state.

        In per-sample mode (``start.tau0`` a ``(B,)`` tensor) the first steps are a
        ``(B,)`` tensor, and every tensor in the state with a leading dimension is per-row:
        the loop drops finished samples from it by indexing that dimension.
        """

    @abc.abstractmethod
    def decide(
        self, tau0: Any, dt: Any, y0: torch.Tensor, step: StepResult, state: Any
    ) -> Decision:
        """Accept or reject the step of size ``dt`` from ``tau0`` and propose the next.

        Joint mode: ``tau0`` and ``dt`` are floats and the verdict is a ``bool``.
        Per-sample mode (only for ``adaptive`` controllers): they are ``(B,)`` tensors,
        one step per row of the ``(B, N)`` state, and the verdict, next step and
        ``nonfinite`` are ``(B,)`` tensors, computed without a host sync.
        """

    def min_step(self) -> float:
        """Smallest allowed step; a smaller proposal ends the solve with ``DT_MIN``."""
        return 0.0

    def tolerances(self) -> tuple[Any, Any]:
        """``(rtol, atol)`` as configured, for flattening onto the state by the problem."""
        return 0.0, 0.0

    def stops(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(step_ts, jump_ts)``: times every solve must step to exactly."""
        return (), ()
