"""A dense solution over the whole solve, assembled from the accepted steps."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..solvers._explicit_rk import AbstractSolver
from .local import interpolate_step


@dataclass(frozen=True)
class _Segment:
    tau0: float
    dt: float  # signed step in the caller's time
    y0: torch.Tensor
    k: tuple[torch.Tensor, ...]
    f1: torch.Tensor | None
    tau1: float  # where the segment ends (forward time): the step's end, or an event's
    cut: bool  # an event ended it (at tau1, before its jump)


@dataclass
class DenseInterpolation:
    """Evaluate the solution anywhere in the solved interval, ``sol.dense(t)``.

    Built from each accepted step's stages with the same interpolant as the output times,
    so it is continuous, exact at step ends, and of the solver's dense-output order.
    Memory grows with the number of steps × stages × state size.
    """

    solver: AbstractSolver
    direction: float
    unflatten: Callable[[torch.Tensor], object]
    _segments: list[_Segment] = field(default_factory=list)
    _starts: list[float] = field(default_factory=list)

    def add(
        self,
        tau0: float,
        dt: float,
        y0: torch.Tensor,
        k: tuple[torch.Tensor, ...],
        f1: torch.Tensor | None,
        tau_end: float | None = None,
    ) -> None:
        """Record one accepted step (used by the step loop).

        ``tau_end``: an event cut the step there (forward time); the step's interpolant
        serves up to it, and the next segment (the state after a jump) from it on.
        """
        tau1 = tau0 + abs(dt) if tau_end is None else tau_end
        if tau1 > tau0 or not self._segments:
            self._segments.append(_Segment(tau0, dt, y0, k, f1, tau1, tau_end is not None))
            self._starts.append(tau0)

    @property
    def t0(self) -> float:
        """Start of the interpolated interval."""
        return self.direction * self._segments[0].tau0

    @property
    def t1(self) -> float:
        """End of the interpolated interval."""
        return self.direction * self._segments[-1].tau1

    def __call__(self, t: float | torch.Tensor) -> object:
        """The solution at time(s) ``t``: shape ``(*t.shape, *y0.shape)``."""
        times = torch.as_tensor(t, dtype=torch.float64)
        flat = [self._at(float(x)) for x in times.reshape(-1)]
        # Each point has the solver's state shape (y0's own for a tensor state, flat for a
        # tuple): keep it, so a (3, 2) state comes back as (*t.shape, 3, 2), not (*t.shape, 6).
        out = torch.stack(flat).reshape(*times.shape, *flat[0].shape)
        return self.unflatten(out)

    def _at(self, t: float) -> torch.Tensor:
        return self.state_at(t)

    def state_at(self, t: float, *, extrapolate: bool = False) -> torch.Tensor:
        """The solver's (flat) state at ``t``.

        ``extrapolate``: beyond the interval, continue the first or last step's
        polynomial (for a stage evaluated slightly past its step, such as Kvaerno5's
        ``c = 1.23`` in a solve that reads this interpolant).
        """
        if not self._segments:
            raise ValueError("the dense interpolant is empty: the solve took no step")
        tau = self.direction * t
        lo, hi = self._segments[0].tau0, self.direction * self.t1
        if not extrapolate and not lo <= tau <= hi:
            raise ValueError(
                f"t={t} is outside the solved interval [{self.t0}, {self.t1}]; "
                "the dense interpolant does not extrapolate"
            )
        i = max(0, bisect.bisect_right(self._starts, tau) - 1)
        if i and tau == self._starts[i] and self._segments[i - 1].cut:
            # At an event: the state before its jump, as the outputs at that time are.
            i -= 1
        seg = self._segments[i]
        theta = (tau - seg.tau0) / abs(seg.dt)
        return interpolate_step(self.solver, seg.y0, seg.k, seg.f1, seg.dt, [theta])[0]
