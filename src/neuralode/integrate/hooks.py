"""What a caller of the loop can ask to be told about: accepted steps."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ..solvers._explicit_rk import StepResult, StepSize, Time


class OnAccept(Protocol):
    """Called after every accepted step (joint) or every batched step attempt (per-sample).

    ``tau0`` and ``dt`` are the step's start and size in forward time (floats, or ``(B,)``
    tensors per-sample), ``y0`` its start, ``step`` the solver's result and ``accept``
    ``True`` (joint) or the ``(B,)`` mask of the rows that accepted. A gradient method's
    quadrature of the parameters (per-sample backsolve) rides here, and so can an
    integral along the trajectory.
    """

    def __call__(
        self, tau0: Time, dt: StepSize, y0: torch.Tensor, step: StepResult, accept: Any
    ) -> None:
        """Take note of the step."""
