"""Fixed-step control: a constant step size, or an explicit grid of step points."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..solvers._explicit_rk import StepResult
from ._base import AbstractController, Decision, SolveStart


def _check_finite(y1: torch.Tensor) -> bool:
    # One host sync per step: the fixed-step analogue of the adaptive accept decision, so
    # a NaN is reported where it appears instead of propagating silently to the output.
    return bool(torch.isfinite(y1).all())


@dataclass(frozen=True)
class ConstantStepSize(AbstractController):
    """Steps of constant size ``dt``; the last step is shortened to end on the last time.

    Grid points are computed as ``t0 + n * dt`` (not by accumulating ``dt``), the same grid
    as torchdiffeq's ``step_size`` option, so fixed-step results match it to rounding.
    Output times inside a step come from the solver's interpolant.

    Attributes:
        dt: The step size (positive; the direction comes from the output times).
    """

    dt: float

    def __post_init__(self) -> None:
        number = isinstance(self.dt, (int, float)) and not isinstance(self.dt, bool)
        if not (number and math.isfinite(self.dt) and self.dt > 0):
            raise ValueError(
                f"ConstantStepSize(dt=...) must be a positive finite number, got {self.dt!r}; "
                "pass the step length, e.g. ConstantStepSize(dt=0.01)"
            )

    @property
    def adaptive(self) -> bool:
        """Fixed steps need no error estimate."""
        return False

    def init(self, start: SolveStart) -> tuple[float, Any]:
        """State: ``(tau0, n)``, the grid origin and the index of the current grid point."""
        return float(self.dt), (float(start.tau0), 0)

    def decide(
        self, tau0: float, dt: float, y0: torch.Tensor, step: StepResult, state: Any
    ) -> Decision:
        """Accept every finite step; the next grid point is ``origin + (n + 1) * dt``."""
        if not _check_finite(step.y1):
            return Decision(False, dt, state, nonfinite=True)
        origin, n = state
        tau1 = tau0 + dt
        # Skip past the grid point the step just landed on (the last step may be short).
        while origin + (n + 1) * self.dt <= tau1:
            n += 1
        return Decision(True, origin + (n + 1) * self.dt - tau1, (origin, n))


@dataclass(frozen=True)
class StepTo(AbstractController):
    """Step exactly to each time of a grid (torchdiffeq's ``grid_constructor``).

    Attributes:
        ts: Increasing (or, for reverse solves, decreasing) step points covering the solve.
    """

    ts: Sequence[float]

    def __post_init__(self) -> None:
        values = [float(t) for t in self.ts]
        if len(values) < 2:
            raise ValueError(f"StepTo(ts=...) needs at least two times, got {values}")
        diffs = [b - a for a, b in zip(values, values[1:], strict=False)]
        if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
            raise ValueError("StepTo(ts=...) must be strictly monotone")
        object.__setattr__(self, "ts", tuple(values))

    @property
    def adaptive(self) -> bool:
        """Fixed steps need no error estimate."""
        return False

    def init(self, start: SolveStart) -> tuple[float, Any]:
        """State: ``(grid, i)``, the grid in forward time and the index of the next point."""
        grid = tuple(sorted(start.direction * t for t in self.ts))
        if grid[0] > start.tau0 or grid[-1] < start.tau_end:
            raise ValueError(
                f"StepTo grid [{min(self.ts)}, {max(self.ts)}] does not cover the output times"
            )
        i = next(i for i, g in enumerate(grid) if g > start.tau0)
        return grid[i] - float(start.tau0), (grid, i)

    def decide(
        self, tau0: float, dt: float, y0: torch.Tensor, step: StepResult, state: Any
    ) -> Decision:
        """Accept every finite step and step to the next grid point."""
        if not _check_finite(step.y1):
            return Decision(False, dt, state, nonfinite=True)
        grid, i = state
        tau1 = tau0 + dt
        while i < len(grid) and grid[i] <= tau1:
            i += 1
        dt_next = grid[i] - tau1 if i < len(grid) else dt
        return Decision(True, dt_next, (grid, i))
