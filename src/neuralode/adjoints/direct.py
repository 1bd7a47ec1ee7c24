"""Backpropagation through the solver's operations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._problem import Problem
from .._solution import RawSolution
from ..controllers import AbstractController
from ..integrate import integrate
from ..solvers._explicit_rk import AbstractSolver
from ._base import AbstractAdjoint
from ._second_order import differentiable_backward

_COMPILED_SECOND_ORDER = (
    "create_graph=True (second derivatives) through DirectAdjoint with compile_step=True "
    "is not supported: a compiled step's backward frees its buffers and cannot be "
    "differentiated again. Use adjoint=CheckpointAdjoint() (the same gradient; it "
    "recomputes the solve eagerly for second derivatives) or compile_step=False"
)


@dataclass(frozen=True)
class DirectAdjoint(AbstractAdjoint):
    """Record every solver operation with autograd and backpropagate through them.

    Exact gradients of the discrete solution, and the fastest method when memory allows:
    memory grows with function evaluations × the vector field's activations. Step sizes
    are chosen under ``no_grad`` (as in diffrax), so no gradient flows through the
    controller's decisions.

    Second and higher derivatives (``create_graph=True``) are plain autograd through the
    same graph: the exact derivatives of the discrete solution with the step sizes held
    fixed, at the memory of one more graph of that size. Not with ``compile_step=True``
    (a clear error says so; use :class:`CheckpointAdjoint` there).
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
        raw = integrate(problem, solver, controller, max_steps=max_steps, dense=dense)
        if problem.tuning.compile and raw.ys.requires_grad:
            raw.ys = _FirstOrderOnly.apply(raw.ys)
        return raw


class _FirstOrderOnly(torch.autograd.Function):
    """Identity that turns torch.compile's refusal of create_graph into a clear error."""

    @staticmethod
    def forward(ctx: Any, ys: torch.Tensor) -> torch.Tensor:
        return ys.view_as(ys)

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor) -> torch.Tensor:
        if differentiable_backward():
            raise NotImplementedError(_COMPILED_SECOND_ORDER)
        return grad_ys
