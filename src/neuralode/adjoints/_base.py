"""The gradient-method interface: who owns the call to the step loop."""

from __future__ import annotations

import abc

from .._loop import RawSolution
from .._problem import Problem
from ..controllers import AbstractController
from ..solvers._explicit_rk import AbstractSolver


class AbstractAdjoint(abc.ABC):
    """How gradients of a solve are computed. Holds configuration only."""

    @abc.abstractmethod
    def solve(
        self,
        problem: Problem,
        solver: AbstractSolver,
        controller: AbstractController,
        *,
        max_steps: int,
        dense: bool,
    ) -> RawSolution:
        """Run the solve so that its outputs carry gradients the way this method defines."""
