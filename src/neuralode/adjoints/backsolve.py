"""The paper's adjoint method: solve an augmented ODE backwards, in O(1) memory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .._norms import rms_norm
from .._problem import Problem
from .._solution import RawSolution
from .._vector_field import State, Structure, VectorField
from ..controllers import AbstractController, PIDController
from ..integrate import integrate
from ..solvers._explicit_rk import AbstractSolver
from ._backsolve_rows import solve_adjoint_rows
from ._base import AbstractAdjoint, check_backward, reject_dense
from ._params import field_parameters
from ._second_order import (
    differentiable_backward,
    field_vjp,
    forward_with_graph,
    with_derivative_of,
)


@dataclass(frozen=True)
class BacksolveAdjoint(AbstractAdjoint):
    """Gradients from the adjoint ODE solved backwards in time (Chen et al. 2018, Alg. 1).

    The forward solve keeps no graph. The backward pass integrates the augmented state
    ``[y, a, g]`` from the last output time to the first: ``dy/dt = f``,
    ``da/dt = −aᵀ ∂f/∂y``, ``dg/dt = −aᵀ ∂f/∂θ``, adding each output's cotangent to ``a``
    at its time and restarting ``y`` from the forward value there. Memory is constant in
    the number of steps.

    Gradients are approximate: the backward solve reconstructs ``y(t)`` instead of
    remembering it, so on dynamics that are unstable backwards (contracting forwards, e.g.
    strongly damped or dissipative systems) the reconstruction drifts and the gradient
    error can be far above the tolerance. Prefer :class:`CheckpointAdjoint` (exact,
    memory ∝ steps) or :class:`DirectAdjoint` when memory allows.

    Second derivatives (``create_graph=True``, e.g. Hessian-vector products): the backward
    re-runs the forward solve with a graph (connecting the stored outputs to ``y0`` and
    the parameters) and records the backward solve, each adjoint evaluation's partial
    derivatives being differentiable once more. The result is the derivative of the
    gradient this method returns: exact for a loss linear in the outputs; otherwise the
    loss's own curvature comes back through this method's approximate first-order
    product, so it agrees with finite differences of the backsolve gradient to within that
    gradient's error. Memory is then ∝ steps, as for DirectAdjoint. Third derivatives
    raise ``NotImplementedError``.

    Attributes:
        solver: Solver for the backward solve (the forward one by default).
        controller: Step-size control for the backward solve (the forward one by
            default). Tensor (per-component) tolerances of the forward controller do not
            carry over to the augmented state: give a controller with float tolerances.
        seminorm: Leave the parameter block ``g`` out of error control (Kidger, Chen &
            Lyons, "Hey, that's not an ODE", ICML 2021): fewer backward steps, because
            ``g`` is an integral that never feeds back into the dynamics. In per-sample
            mode (``batch_dims=1``) ``g`` is always left out: each sample solves its own
            ``[y, a]`` backwards and ``g``, shared by all samples, is accumulated outside
            their states.
    """

    solver: AbstractSolver | None = None
    controller: AbstractController | None = None
    seminorm: bool = False

    def solve(
        self,
        problem: Problem,
        solver: AbstractSolver,
        controller: AbstractController,
        *,
        max_steps: int,
        dense: bool,
    ) -> RawSolution:
        """Forward solve without a graph; the gradient comes from the backward ODE."""
        reject_dense(dense, "BacksolveAdjoint")
        backward = _BackwardSetup(
            problem=problem,
            solver=self.solver or solver,
            controller=self._backward_controller(problem, controller),
            max_steps=max_steps,
            forward_solver=solver,
            forward_controller=controller,
        )
        with torch.no_grad():
            raw = integrate(problem, solver, controller, max_steps=max_steps)
        backward.stats = raw.stats
        params = field_parameters(problem.f.f, problem.params, "BacksolveAdjoint")
        raw.ys = _Backsolve.apply(backward, raw.ys, problem.y0, *params)
        return raw

    def _backward_controller(
        self, problem: Problem, forward: AbstractController
    ) -> AbstractController:
        controller = self.controller or forward
        if not isinstance(controller, PIDController):
            return controller
        rtol, atol = controller.tolerances()
        if not isinstance(rtol, (int, float)) or not isinstance(atol, (int, float)):
            raise ValueError(
                "BacksolveAdjoint needs float tolerances for the augmented backward state; "
                "pass BacksolveAdjoint(controller=PIDController(rtol=..., atol=...))"
            )
        if problem.batched:
            # One sample's [y, a]; g is outside every sample's state (see _backsolve_rows).
            return dataclasses.replace(controller, norm=_augmented_norm(problem.y0.shape[-1], True))
        n = problem.y0.numel()
        return dataclasses.replace(controller, norm=_augmented_norm(n, self.seminorm))


def _augmented_norm(n: int, seminorm: bool) -> Any:
    """Torchdiffeq's mixed norm over ``[y, a, g]``: the largest RMS of the blocks."""

    def norm(x: torch.Tensor) -> torch.Tensor:
        blocks = [rms_norm(x[:n]), rms_norm(x[n : 2 * n])]
        if not seminorm and x.numel() > 2 * n:
            blocks.append(rms_norm(x[2 * n :]))
        return torch.stack(blocks).amax()

    return norm


@dataclass
class _BackwardSetup:
    problem: Problem
    solver: AbstractSolver
    controller: AbstractController
    max_steps: int
    forward_solver: AbstractSolver
    forward_controller: AbstractController
    stats: Any = None


class _Backsolve(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, setup: _BackwardSetup, ys: torch.Tensor, y0: torch.Tensor, *params: torch.Tensor
    ) -> torch.Tensor:
        ctx.setup = setup
        ctx.save_for_backward(ys, *params)
        return ys.clone()

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor) -> tuple[Any, ...]:
        setup: _BackwardSetup = ctx.setup
        ys, *params = ctx.saved_tensors
        nfe_rerun = 0
        if differentiable_backward():
            # The returned gradient must be differentiable (create_graph=True): the saved
            # ys are constants, so connect them to y0 and θ through a recorded re-run of
            # the forward solve; the backward solve below then records its own steps.
            field = setup.problem.f
            nfe_before = field.nfe
            graph = forward_with_graph(
                setup.problem, setup.forward_solver, setup.forward_controller, setup.max_steps
            )
            ys = with_derivative_of(ys, graph)
            nfe_rerun = field.nfe - nfe_before
        if setup.problem.batched:
            grad_y0, grad_params, nfe = solve_adjoint_rows(
                setup.problem, setup.solver, setup.controller, setup.max_steps, ys, grad_ys, params
            )
        else:
            grad_y0, grad_params, nfe = _solve_adjoint(setup, ys, grad_ys, params)
        setup.stats.nfe_backward += nfe + nfe_rerun
        return (None, None, grad_y0, *grad_params)


def _solve_adjoint(
    setup: _BackwardSetup,
    ys: torch.Tensor,
    grad_ys: torch.Tensor,
    params: list[torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    problem = setup.problem
    augmented = _AugmentedField(problem, params)
    times = problem.ts.tolist()
    y, a = ys[-1], grad_ys[-1]
    g = torch.zeros(sum(p.numel() for p in params), dtype=ys.dtype, device=ys.device)
    nfe = 0
    for i in range(len(times) - 1, 0, -1):
        state = (y, a, g)
        segment = torch.tensor([times[i], times[i - 1]], dtype=problem.ts.dtype)
        back = augmented.problem(state, segment)
        raw = integrate(back, setup.solver, setup.controller, max_steps=setup.max_steps)
        check_backward(raw)
        nfe += back.f.nfe
        end = raw.ys[-1]
        n = y.numel()
        # Restart y from the forward solution (torchdiffeq does the same): the backward
        # reconstruction of y drifts, the stored forward value does not.
        y = ys[i - 1]
        a = end[n : 2 * n].view_as(a) + grad_ys[i - 1]
        g = end[2 * n :]
    grads = list(torch.split(g, [p.numel() for p in params])) if params else []
    return a, [gp.view_as(p) for gp, p in zip(grads, params, strict=True)], nfe


class _AugmentedField:
    """The augmented dynamics ``[f, −aᵀ∂f/∂y, −aᵀ∂f/∂θ]`` on the flat ``[y, a, g]``."""

    def __init__(self, problem: Problem, params: list[torch.Tensor]) -> None:
        self.forward_problem = problem
        self.params = params

    def __call__(self, t: torch.Tensor, state: State) -> State:
        y, a, _ = state
        f = self.forward_problem.f

        def call(y_var: torch.Tensor) -> torch.Tensor:
            return f.structure.flatten(f.f(t, f.structure.unflatten(y_var)))

        fy, vjp_y, vjp_params = field_vjp(call, y, a, self.params)
        flat = [v.reshape(-1) for v in vjp_params]
        g_dot = torch.cat(flat) if flat else y.new_zeros(0)
        return fy, -vjp_y, -g_dot

    def problem(self, state: tuple[torch.Tensor, ...], segment: torch.Tensor) -> Problem:
        """The backward problem from ``segment[0]`` to ``segment[1]``."""
        structure = Structure.of(state)
        field = VectorField(self, structure, segment.dtype, state[0].device)
        t0 = float(segment[0])
        f0 = structure.flatten(self(field.time(t0), state))
        field.nfe += 1
        return Problem(
            f=field,
            y0=structure.flatten(state),
            f0=f0,
            ts=segment,
            taus=(-t0, -float(segment[1])) if segment[1] < segment[0] else (t0, float(segment[1])),
            direction=-1.0 if segment[1] < segment[0] else 1.0,
            structure=structure,
        )
