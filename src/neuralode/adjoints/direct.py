"""Backpropagation through the solver's operations."""

from __future__ import annotations

from dataclasses import dataclass

from .._loop import RawSolution, integrate
from .._problem import Problem
from ..controllers import AbstractController
from ..solvers._explicit_rk import AbstractSolver
from ._base import AbstractAdjoint


@dataclass(frozen=True)
class DirectAdjoint(AbstractAdjoint):
    """Record every solver operation with autograd and backpropagate through them.

    Exact gradients of the discrete solution, and the fastest method when memory allows:
    memory grows with function evaluations × the vector field's activations. Step sizes
    are chosen under ``no_grad`` (as in diffrax), so no gradient flows through the
    controller's decisions.
    """

    def solve(
        self,
        problem: Problem,
        solver: AbstractSolver,
        controller: AbstractController,
        *,
        max_steps: int,
        dense: bool,
    ) -> RawSolution:
        """Run the step loop with autograd recording (whatever the caller's grad mode)."""
        return integrate(problem, solver, controller, max_steps=max_steps, dense=dense)
