"""Exact gradients of the discrete solution with memory ∝ accepted steps × state size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._loop import RawSolution, integrate, replay_step
from .._problem import Problem
from .._sample_rows import RowsRecord, replay_rows
from ..controllers import AbstractController
from ..solvers._explicit_rk import AbstractSolver
from ._base import AbstractAdjoint, reject_dense
from ._params import field_parameters
from ._second_order import differentiable_backward, forward_with_graph


@dataclass(frozen=True)
class CheckpointAdjoint(AbstractAdjoint):
    """Backpropagate through the solver one recomputed step at a time.

    The forward solve keeps no graph, only each accepted step's start ``(t, y, dt)``. The
    backward pass walks the steps from last to first, recomputes each one with autograd
    from its stored start, and backpropagates through it alone. The gradient is the same
    as :class:`DirectAdjoint`'s (exact for the discrete solution; ACA, Zhuang et al. 2020)
    at the cost of one extra forward evaluation of each accepted step, while memory holds
    the accepted states plus a single step's graph instead of every evaluation's
    activations.

    Second derivatives (``create_graph=True``): the stored states are constants, cut from
    ``y0`` and the parameters, so that backward re-runs the forward solve with a graph and
    returns DirectAdjoint's gradient (equal to rounding) with every higher derivative
    exact; it needs DirectAdjoint's memory for that backward only.
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
        """Forward solve without a graph, recording the accepted steps."""
        reject_dense(dense, "CheckpointAdjoint")
        records: list[Any] = []
        with torch.no_grad():
            raw = integrate(problem, solver, controller, max_steps=max_steps, records=records)
        params = field_parameters(problem.f.f, problem.params, "CheckpointAdjoint")
        setup = _Replay(problem, solver, controller, max_steps, records, raw.stats)
        raw.ys = _Checkpointed.apply(setup, raw.ys, problem.y0, *params)
        return raw


@dataclass
class _Replay:
    problem: Problem
    solver: AbstractSolver
    controller: AbstractController
    max_steps: int
    records: list[Any]
    stats: Any


class _Checkpointed(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, setup: _Replay, ys: torch.Tensor, y0: torch.Tensor, *params: torch.Tensor
    ) -> torch.Tensor:
        ctx.setup = setup
        ctx.save_for_backward(*params)
        return ys.clone()

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor) -> tuple[Any, ...]:
        setup: _Replay = ctx.setup
        params = list(ctx.saved_tensors)
        field = setup.problem.f
        nfe_before = field.nfe
        if differentiable_backward():
            grad_y0, grad_params = _backward_with_graph(setup, grad_ys, params)
            setup.stats.nfe_backward += field.nfe - nfe_before
            return (None, None, grad_y0, *grad_params)
        if setup.problem.batched:
            grad_y0, grad_params = _backward_rows(setup, grad_ys, params)
            setup.stats.nfe_backward += field.nfe - nfe_before
            return (None, None, grad_y0, *grad_params)
        grad_params = [torch.zeros_like(p) for p in params]
        # Cotangent of the state at the end of the step being replayed.
        a = torch.zeros_like(grad_ys[0])
        for record in reversed(setup.records):
            with torch.enable_grad():
                y0 = record.y0.detach().requires_grad_(True)
                y1, outputs = replay_step(setup.problem, setup.solver, record, y0)
                targets, cotangents = [y1], [a]
                if outputs is not None:
                    targets.append(outputs)
                    cotangents.append(grad_ys[record.i0 : record.i1])
                grads = torch.autograd.grad(targets, (y0, *params), cotangents, allow_unused=True)
            a = grads[0] if grads[0] is not None else torch.zeros_like(a)
            for acc, g in zip(grad_params, grads[1:], strict=True):
                if g is not None:
                    acc.add_(g)
        setup.stats.nfe_backward += field.nfe - nfe_before
        return (None, None, a + grad_ys[0], *grad_params)


def _backward_with_graph(
    setup: _Replay, grad_ys: torch.Tensor, params: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A differentiable gradient (``create_graph=True``): DirectAdjoint's, recomputed.

    The stored step starts are constants, cut from ``y0`` and ``θ``, so replaying steps
    from them cannot give the second-order terms that flow through the states. Re-running
    the forward solve with a graph does, and the gradient through that graph is the
    same exact gradient (up to rounding) with every higher derivative. This backward then
    needs DirectAdjoint's memory; the first-order backward keeps the checkpointed one.
    """
    y0 = setup.problem.y0
    ys = forward_with_graph(setup.problem, setup.solver, setup.controller, setup.max_steps)
    grads = torch.autograd.grad(ys, (y0, *params), grad_ys, create_graph=True, allow_unused=True)
    wrt = (y0, *params)
    out = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt, strict=True)]
    return out[0], out[1:]


def _backward_rows(
    setup: _Replay, grad_ys: torch.Tensor, params: list[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-sample mode: replay each batched step's accepted rows, last step first.

    A sample's state only changes in the steps it accepted, so each record carries the
    cotangent of just its rows back through their step; the other samples' cotangents
    wait untouched for their own records.
    """
    flat = grad_ys.reshape(-1, grad_ys.shape[-1])  # output cotangents by (T, B) position
    grad_params = [torch.zeros_like(p) for p in params]
    a = torch.zeros_like(grad_ys[0])  # (B, N): cotangent of each sample's current state
    record: RowsRecord
    for record in reversed(setup.records):
        with torch.enable_grad():
            y0 = record.y0.detach().requires_grad_(True)
            y1, outputs, pos = replay_rows(setup.problem, setup.solver, record, y0)
            targets, cotangents = [y1], [a.index_select(0, record.idx)]
            if outputs is not None and pos is not None:
                targets.append(outputs)
                cotangents.append(flat[pos])
            grads = torch.autograd.grad(targets, (y0, *params), cotangents, allow_unused=True)
        if grads[0] is not None:
            a = a.index_copy(0, record.idx, grads[0])
        for acc, g in zip(grad_params, grads[1:], strict=True):
            if g is not None:
                acc.add_(g)
    setup.problem.f.select(None)
    return a + grad_ys[0], grad_params
