"""Solver flags shared by the experiments (``--solver --tol --adjoint --seminorm``).

Method names are mapped to solver classes by :data:`neuralode.compat.METHODS`, the one
place that does so.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from ...adjoints import AbstractAdjoint, BacksolveAdjoint, CheckpointAdjoint, DirectAdjoint
from ...compat import METHODS
from ...controllers import PIDController
from .config import check_positive

# Spelled out rather than derived from METHODS: mypy needs the names in the source, and
# --help lists them in this order, not METHODS'. A test checks that they are exactly
# METHODS' adaptive solvers.
AdaptiveMethod = Literal["dopri5", "tsit5", "bosh3", "dopri8", "adaptive_heun", "fehlberg2"]
GradientMethod = Literal["direct", "backsolve", "checkpoint"]


def make_adjoint(name: str, seminorm: bool = False) -> AbstractAdjoint:
    """The gradient method called ``name`` (``--adjoint``)."""
    if name == "direct":
        return DirectAdjoint()
    if name == "backsolve":
        return BacksolveAdjoint(seminorm=seminorm)
    if name == "checkpoint":
        return CheckpointAdjoint()
    raise ValueError(f"--adjoint must be direct, backsolve or checkpoint, got {name!r}")


@dataclasses.dataclass(frozen=True)
class SolverOptions:
    """How the ODE is solved and differentiated."""

    solver: AdaptiveMethod = "dopri5"
    """Adaptive Runge-Kutta method."""
    tol: float = 1e-3
    """Relative and absolute tolerance (rtol = atol), as in the paper."""
    adjoint: GradientMethod = "backsolve"
    """Gradient method: backsolve (the paper's adjoint, O(1) memory),
    checkpoint (exact gradients), direct (backprop through the solver)."""
    seminorm: bool = False
    """Backsolve only: control the error of the state and adjoint alone (Kidger et al. 2021)."""
    max_steps: int = 10_000
    """Step budget per solve."""

    def __post_init__(self) -> None:
        check_positive(self, "tol", "max_steps")
        if self.seminorm and self.adjoint != "backsolve":
            raise ValueError(f"--seminorm needs --adjoint backsolve, got --adjoint {self.adjoint}")

    def ode_options(self) -> dict[str, Any]:
        """``solver``, ``controller`` and ``adjoint`` keyword arguments for solve / ODEBlock."""
        return {
            "solver": METHODS[self.solver](),
            "controller": PIDController(rtol=self.tol, atol=self.tol),
            "adjoint": make_adjoint(self.adjoint, self.seminorm),
        }
