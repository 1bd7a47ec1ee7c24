"""Second derivatives: the pieces a gradient method needs for a differentiable backward.

``torch.autograd.grad(..., create_graph=True)`` runs a custom Function's backward with
grad mode on; that is how a method tells that the gradient it returns must itself be
differentiable (:func:`differentiable_backward`). The replaying methods answer with:

* :func:`forward_with_graph`: the forward solve run again with autograd recording, the
  graph :class:`~neuralode.DirectAdjoint` keeps, which connects the forward states to
  ``y0`` and the parameters (the states the methods saved are constants);
* :func:`field_vjp`: ``f(t, y)`` and its vector-Jacobian products with ``∂f/∂y`` and the
  *partial* ``∂f/∂θ``, differentiable once more in ``y``, the cotangent and ``θ``. Calling
  ``torch.autograd.grad(f(t, y), θ, a, create_graph=True)`` directly would not do: when
  ``y`` itself depends on ``θ`` (it does once it is connected), autograd returns the
  total derivative through ``y``'s history, not the partial the adjoint ODE needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import _autograd as autograd
from .._problem import Problem
from ..controllers import AbstractController
from ..integrate import integrate
from ..solvers._explicit_rk import AbstractSolver

_THIRD_ORDER = (
    "third and higher derivatives through BacksolveAdjoint are not supported (its "
    "backward solve is differentiable once, for Hessian-vector products); use "
    "CheckpointAdjoint() or DirectAdjoint(), which support any order"
)


def differentiable_backward() -> bool:
    """Whether the backward being run must return a differentiable gradient.

    Autograd enables grad mode inside a Function's backward exactly when the caller asked
    for ``create_graph=True`` (a Hessian-vector product, a gradient penalty).
    """
    return torch.is_grad_enabled()


def forward_with_graph(
    problem: Problem, solver: AbstractSolver, controller: AbstractController, max_steps: int
) -> torch.Tensor:
    """The forward outputs recomputed with autograd recording (``DirectAdjoint``'s graph).

    The same loop on the same inputs takes the same steps, so the values are those of
    the solve without a graph. ``problem.y0`` and ``problem.f0`` are the ones the caller's
    graph reaches (``f0`` was evaluated with grad at the boundary). A ``compile_step``
    solve is re-run eagerly: a compiled step's backward donates its buffers and refuses
    ``create_graph=True``; compiled and eager steps agree to rounding.
    """
    if problem.tuning.compile:
        eager = dataclasses.replace(problem.tuning, compile=False)
        problem = dataclasses.replace(problem, tuning=eager)
    with torch.enable_grad():
        return integrate(problem, solver, controller, max_steps=max_steps).ys


def with_derivative_of(value: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
    """``value`` exactly, with the derivative of ``graph`` (the same numbers, recomputed).

    Keeps a differentiable backward's first gradient bit-identical to the plain one.
    """
    return value + (graph - graph.detach())


class _FieldVJP(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        call: Callable[[torch.Tensor], torch.Tensor],
        params: tuple[torch.Tensor, ...],
        wrt_params: bool,
        y: torch.Tensor,
        a: torch.Tensor,
        *param_inputs: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        # `params` are the very tensors `call` closes over (autograd.grad must be asked
        # about those objects); `param_inputs` are the same tensors as inputs, so that the
        # outer graph knows the outputs depend on them, whether or not their own
        # vector-Jacobian products are outputs (`wrt_params`).
        ctx.call, ctx.params, ctx.wrt = call, params, params if wrt_params else ()
        ctx.save_for_backward(y, a)
        fy, vjps = _first_order(call, y, a, ctx.wrt)
        return (fy, *vjps)

    @staticmethod
    def backward(ctx: Any, *cotangents: torch.Tensor) -> tuple[Any, ...]:
        if torch.is_grad_enabled():
            raise NotImplementedError(_THIRD_ORDER)
        y, a = ctx.saved_tensors
        params: tuple[torch.Tensor, ...] = ctx.params
        with torch.enable_grad():
            y_var = y.detach().requires_grad_(True)
            a_var = a.detach().requires_grad_(True)
            fy, vjps = _vjps(ctx.call, y_var, a_var, ctx.wrt, create_graph=True)
            pairs = [
                (o, c) for o, c in zip((fy, *vjps), cotangents, strict=True) if o.requires_grad
            ]
            if not pairs:  # f depends on neither y nor θ: nothing to differentiate
                return (None, None, None, None, None, *(None for _ in params))
            grads = torch.autograd.grad(
                [o for o, _ in pairs],
                (y_var, a_var, *params),
                [c for _, c in pairs],
                allow_unused=True,
            )
        return (None, None, None, *grads)


def _first_order(
    call: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    a: torch.Tensor,
    params: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`_vjps` at ``y`` without a graph: the values, attached to nothing."""
    with torch.enable_grad():
        y_var = y.detach().requires_grad_(True)
        fy, vjps = _vjps(call, y_var, a.detach(), params, create_graph=False)
    return fy.detach(), vjps


def _vjps(
    call: Callable[[torch.Tensor], torch.Tensor],
    y_var: torch.Tensor,
    a: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    create_graph: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``f`` at the leaf ``y_var`` and ``[aᵀ∂f/∂y, aᵀ∂f/∂θ_1, ...]`` (zeros where unused)."""
    fy = call(y_var)
    grads = autograd.grad(fy, (y_var, *params), a, allow_unused=True, create_graph=create_graph)
    wrt = (y_var, *params)
    return fy, [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt, strict=True)]


def field_vjp(
    call: Callable[[torch.Tensor], torch.Tensor],
    y: torch.Tensor,
    a: torch.Tensor,
    params: Sequence[torch.Tensor],
    *,
    wrt_params: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """``(f(y), aᵀ∂f/∂y, [aᵀ∂f/∂θ_i])`` with partial derivatives, differentiable once more.

    ``call`` evaluates ``f`` at a flat state (time and per-sample arguments bound) and
    depends on the tensors ``params``; with ``wrt_params=False`` the list of their
    products comes back empty (the outputs still depend on them). The
    values are those of one evaluation and one vector-Jacobian product; when the outer
    graph is differentiated (a Hessian-vector product) the backward re-evaluates ``f``
    and takes the second-order vector-Jacobian products of that one evaluation. Third
    derivatives raise ``NotImplementedError``.
    """
    if not torch.is_grad_enabled():
        # The usual backward pass (no create_graph): nothing differentiates the products,
        # so skip the Function that would make them differentiable, whose apply costs
        # about as much as a small field's own evaluation.
        fy, vjps = _first_order(call, y, a, params if wrt_params else ())
        return fy, vjps[0], vjps[1:]
    out = _FieldVJP.apply(call, tuple(params), wrt_params, y, a, *params)
    return out[0], out[1], list(out[2:])
