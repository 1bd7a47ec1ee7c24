"""Exact gradients of the discrete solution with memory ∝ accepted steps × state size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import _autograd as autograd
from .._problem import Problem
from .._solution import RawSolution
from ..controllers import AbstractController
from ..integrate import AbstractRecord, integrate
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
        records: list[AbstractRecord] = []
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
    records: list[AbstractRecord]
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
        grad_params = [torch.zeros_like(p) for p in params]
        # Cotangent of the state at the end of the step being replayed (per-sample: of
        # each sample's current state; a record moves only its own rows).
        a = torch.zeros_like(grad_ys[0])
        # The same for the solver's state (a multistep history), one per tensor of it;
        # None until a step's replay reads it. A restarted step's state is blank and
        # unread, so nothing flows from it into the steps before.
        a_state: list[torch.Tensor | None] = []
        record: AbstractRecord
        for record in reversed(setup.records):
            with torch.enable_grad():
                y0 = record.y0.detach().requires_grad_(True)
                state0 = tuple(
                    x.detach().requires_grad_(x.is_floating_point()) for x in record.state0
                )
                replayed = record.replay(setup.problem, setup.solver, y0, state0)
                targets, cotangents = [replayed.y1], [record.gather(a)]
                for x, ax in zip(replayed.state, a_state, strict=False):
                    if ax is not None and x.requires_grad:
                        targets.append(x)
                        cotangents.append(record.gather(ax))
                if replayed.outputs is not None:
                    targets.append(replayed.outputs)
                    cotangents.append(record.output_grads(grad_ys, replayed))
                leaves = [x for x in state0 if x.requires_grad]
                wrt = (y0, *leaves, *params)
                grads = autograd.grad(targets, wrt, cotangents, allow_unused=True)
            a = record.scatter(a, grads[0])
            grads_state = iter(grads[1 : 1 + len(leaves)])
            if len(a_state) < len(state0):
                a_state += [None] * (len(state0) - len(a_state))
            for i, x in enumerate(state0):
                g = next(grads_state) if x.requires_grad else None
                ax = a_state[i]
                if g is None and ax is None:
                    continue
                # An unread input state gets a zero cotangent, not its output's.
                g = torch.zeros_like(x) if g is None else g
                a_state[i] = record.scatter(record.blank(x, a) if ax is None else ax, g)
            for acc, g in zip(grad_params, grads[1 + len(leaves) :], strict=True):
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
