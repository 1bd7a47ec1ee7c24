"""The backsolve adjoint in per-sample mode: every sample's adjoint ODE on its own steps.

Each sample solves ``[y, a]`` backwards (``dy/dt = f``, ``da/dt = −aᵀ∂f/∂y``) with its own
error control, step sizes and output times, and leaves the batch when it reaches its
``t0``. The parameter gradient ``g`` is the one quantity the samples share
(``dL/dθ = Σ_b ∫ a_bᵀ ∂f/∂θ dt``), so it is not part of any sample's state: after each
batched step, the accepted samples' quadrature increments
``Σ_i b_i · dt_b · (−a_iᵀ ∂f/∂θ)`` are added to one accumulator with a single
vector-Jacobian product over the step's stages, weighted row by row. This is the
seminorm variant (Kidger, Chen & Lyons, ICML 2021) by construction: ``g`` never enters
error control, which for a shared sum has no per-sample meaning anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import _autograd as autograd
from .._problem import Problem
from .._vector_field import State, Structure, VectorField
from ..controllers import AbstractController
from ..integrate import integrate
from ..solvers._explicit_rk import AbstractSolver, StepResult
from ._base import check_backward
from ._second_order import differentiable_backward, field_vjp


class _AdjointRows:
    """``[f, −aᵀ∂f/∂y]`` per sample; keeps each evaluation for the ``θ`` part.

    The first-order backward stashes each evaluation's graph (one vector-Jacobian product
    over a step's stages then gives the ``θ`` increment). A differentiable backward
    (``create_graph=True``) stashes each evaluation's point instead, and takes the ``θ``
    part with :func:`field_vjp` at each stage: the partial derivative, differentiable once
    more (see :mod:`._second_order`).
    """

    def __init__(self, problem: Problem, params: list[torch.Tensor]) -> None:
        self.forward_field = problem.f
        self.params = params
        self.differentiable = differentiable_backward()
        self.stash: list[tuple[Any, torch.Tensor]] = []
        # The per-sample args of the rows in the batch at the last evaluation: the step's.
        self.args: tuple[torch.Tensor, ...] = ()

    def evaluate(self, t: torch.Tensor, y: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        """``f(t, y)`` on the flat rows with a graph reaching ``y`` and the parameters."""
        inner = self.forward_field
        return inner.structure.flatten(inner.f(t, inner.structure.unflatten(y), *args))

    def at(self, t: torch.Tensor, args: tuple[torch.Tensor, ...]) -> Any:
        """``f`` at time ``t`` with per-sample ``args``, as a function of the flat rows."""
        return lambda y: self.evaluate(t, y, *args)

    def __call__(self, t: torch.Tensor, state: State, *args: torch.Tensor) -> State:
        y, a = state
        self.args = args
        if self.differentiable:
            call = self.at(t, args)
            fy, vjp_y, _ = field_vjp(call, y, a, self.params, wrt_params=False)
            if self.params:
                self.stash.append(((call, y), a))
            return fy, -vjp_y
        with torch.enable_grad():
            y_var = y.detach().requires_grad_(True)
            fy = self.evaluate(t, y_var, *args)
            (vjp_y,) = autograd.grad(
                fy, y_var, a, allow_unused=True, retain_graph=bool(self.params)
            )
        if self.params:
            self.stash.append((fy, a.detach()))
        vjp_y = torch.zeros_like(y) if vjp_y is None else vjp_y
        return fy.detach(), -vjp_y


@dataclass
class _ParameterQuadrature:
    """The ``θ`` quadrature of every accepted backward step (an ``on_accept`` hook).

    Attributes:
        dynamics: The adjoint dynamics (holds the step's stage graphs).
        vector_field: Its wrapper (its counters count the quadrature's evaluations too).
        weights: The backward solver's ``b``: how its stages make up a step.
        direction: Direction of the backward solve's time.
        params: The parameters.
        grads: The accumulated parameter gradient, one tensor per parameter.
    """

    dynamics: _AdjointRows
    vector_field: VectorField
    weights: tuple[float, ...]
    direction: float
    params: list[torch.Tensor]
    grads: list[torch.Tensor] = field(default_factory=list)

    def __call__(
        self,
        tau0: Any,
        dt: Any,
        y0: torch.Tensor,
        step: StepResult,
        accept: Any,
    ) -> None:
        """Add the accepted rows' ``θ`` increments of the step to the accumulator."""
        if self.params:
            self._accumulate(tau0, dt, y0, accept)

    def _accumulate(
        self, tau0: torch.Tensor, dt: torch.Tensor, y0: torch.Tensor, accept: torch.Tensor
    ) -> None:
        b = self.weights
        stages = self.dynamics.stash[len(self.dynamics.stash) - (len(b) - 1) :]
        self.dynamics.stash = []
        n = y0.shape[-1] // 2
        weight = (-self.direction * dt * accept).to(y0.dtype).unsqueeze(-1)  # (A, 1)
        args = self.dynamics.args
        if not self.grads:
            self.grads = [torch.zeros_like(p) for p in self.params]
        if self.dynamics.differentiable:
            start = ((self.dynamics.at(self.direction * tau0, args), y0[:, :n]), y0[:, n:])
            self._accumulate_differentiable([start, *stages], b, weight)
            return
        # Stage 0 is f(t0, y0), evaluated in an earlier step (FSAL) or an earlier call:
        # evaluate it again here with a graph rather than keep old graphs alive.
        with torch.enable_grad():
            f0 = self.dynamics.evaluate(self.direction * tau0, y0[:, :n], *args)
        self.vector_field.nfe += 1
        self.vector_field.rows += y0.shape[0]
        pairs = [(f0, y0[:, n:]), *stages]
        outs, cotangents = [], []
        for bi, (fy, a) in zip(b, pairs, strict=True):
            if bi != 0.0:
                outs.append(fy)
                cotangents.append(a * (bi * weight))
        grads = autograd.grad(outs, self.params, cotangents, allow_unused=True)
        for acc, g in zip(self.grads, grads, strict=True):
            if g is not None:
                acc.add_(g)

    def _accumulate_differentiable(
        self, pairs: list[tuple[Any, torch.Tensor]], b: Any, weight: torch.Tensor
    ) -> None:
        """The ``θ`` increment as a differentiable sum of each stage's partial VJP."""
        for bi, ((call, y), a) in zip(b, pairs, strict=True):
            if bi == 0.0:
                continue
            _, _, vjps = field_vjp(call, y, a * (bi * weight), self.params)
            self.vector_field.nfe += 1
            self.vector_field.rows += y.shape[0]
            self.grads = [acc + g for acc, g in zip(self.grads, vjps, strict=True)]


def solve_adjoint_rows(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    max_steps: int,
    ys: torch.Tensor,
    grad_ys: torch.Tensor,
    params: list[torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Per-sample backsolve: ``(dL/dy0, dL/dθ, evaluations)`` from the output cotangents.

    ``ys`` and ``grad_ys`` are ``(T, B, N)``; segment ``i`` runs every sample from its
    ``ts[b, i]`` back to ``ts[b, i − 1]``.
    """
    weights = solver.quadrature_weights
    if weights is None:
        raise TypeError(
            f"BacksolveAdjoint in per-sample mode integrates the parameter gradient with the "
            f"weights of a Runge–Kutta step, which {type(solver).__name__} has none of: use "
            "an explicit Runge–Kutta solver for the backward solve, or CheckpointAdjoint()"
        )
    taus = problem.sample_taus
    assert taus is not None
    dynamics = _AdjointRows(problem, params)
    y, a = ys[-1], grad_ys[-1]
    quadrature: _ParameterQuadrature | None = None
    nfe = 0
    for i in range(taus.shape[1] - 1, 0, -1):
        back = _segment(problem, dynamics, (y, a), taus[:, [i, i - 1]])
        quadrature = _ParameterQuadrature(
            dynamics,
            back.f,
            weights,
            back.direction,
            params,
            quadrature.grads if quadrature is not None else [],
        )
        raw = integrate(back, solver, controller, max_steps=max_steps, on_accept=quadrature)
        check_backward(raw)
        nfe += back.f.nfe
        n = y.shape[-1]
        # Restart y from the forward solution (as in joint mode): the backward
        # reconstruction of y drifts, the stored forward value does not.
        y = ys[i - 1]
        a = raw.ys[-1][:, n:] + grad_ys[i - 1]
    grads = quadrature.grads if quadrature is not None and quadrature.grads else []
    if len(grads) != len(params):
        grads = [torch.zeros_like(p) for p in params]
    return a, grads, nfe


def _segment(
    problem: Problem, dynamics: _AdjointRows, state: tuple[torch.Tensor, ...], taus: torch.Tensor
) -> Problem:
    """The per-sample backward problem over one output interval (``taus``: forward time)."""
    forward = problem.direction
    structure = Structure.of(state, batched=True)
    vf = VectorField(dynamics, structure, problem.ts.dtype, state[0].device, problem.f.args)
    t0 = (forward * taus[:, 0]).to(problem.ts.dtype)
    f0 = structure.flatten(dynamics(t0, state, *vf.args))
    vf.nfe += 1
    vf.rows += t0.shape[0]
    return Problem(
        f=vf,
        y0=structure.flatten(state),
        f0=f0,
        ts=forward * taus.to(problem.ts.dtype),
        taus=(),
        direction=-forward,
        structure=structure,
        sample_taus=-taus,
    )
