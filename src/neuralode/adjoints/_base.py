"""The gradient-method interface: who owns the call to the step loop."""

from __future__ import annotations

import abc

from .._problem import Problem
from .._solution import RawSolution
from ..controllers import AbstractController
from ..solvers._explicit_rk import AbstractSolver


def reject_dense(dense: bool, method: str) -> None:
    """Methods that solve without a graph cannot return a differentiable dense solution."""
    if dense:
        raise ValueError(
            f"dense=True needs every step's stages with a graph, which {method} does not "
            "keep; use DirectAdjoint for a differentiable dense solution"
        )


def check_backward(raw: RawSolution) -> None:
    """Raise the :class:`~neuralode.SolverError` of a failed backward (adjoint) solve.

    Without this a failed backward solve would hand autograd NaN (or a partial sum)
    as the gradient, silently.
    """
    error = raw.error(
        "in BacksolveAdjoint's backward solve of the adjoint ODE (t counts down from the "
        "last output time), so no gradient was computed; CheckpointAdjoint() does not "
        "solve backwards and gives exact gradients"
    )
    if error is not None:
        raise error


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
