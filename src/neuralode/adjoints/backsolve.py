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
from ..interpolation.dense import DenseInterpolation
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
    memory ∝ steps) or :class:`DirectAdjoint` when memory allows; on stiff problems, or
    use ``interpolate=True``, which reads ``y(t)`` from the forward solve instead.

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
        interpolate: Do not reconstruct ``y`` backwards: read ``y(t)`` from the forward
            solve's dense output and solve only ``[a, g]`` backwards (SciML's
            ``InterpolatingAdjoint``). The cure for stiff problems, where the backward
            reconstruction amplifies its error by ``e^{|λ| h}`` across each step (measured
            in docs/stiff.md); memory ∝ steps (the forward steps' stages), like
            :class:`CheckpointAdjoint`'s. The gradient's accuracy is then the dense
            output's (cubic Hermite for the implicit solvers). Joint mode, first
            derivatives only.
    """

    solver: AbstractSolver | None = None
    controller: AbstractController | None = None
    seminorm: bool = False
    interpolate: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.interpolate, bool):
            raise TypeError(
                f"BacksolveAdjoint interpolate must be True or False, got {self.interpolate!r}"
            )

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
        if self.interpolate and problem.batched:
            raise ValueError(
                "BacksolveAdjoint(interpolate=True) is for joint mode (batch_dims=0); in "
                "per-sample mode use CheckpointAdjoint() for stiff problems"
            )
        backward = _BackwardSetup(
            problem=problem,
            solver=self.solver or solver,
            controller=self._backward_controller(problem, controller),
            max_steps=max_steps,
            forward_solver=solver,
            forward_controller=controller,
        )
        with torch.no_grad():
            raw = integrate(
                problem, solver, controller, max_steps=max_steps, dense=self.interpolate
            )
        backward.stats = raw.stats
        backward.interpolant, raw.dense = raw.dense, None  # the backward pass's, not the user's
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
            return dataclasses.replace(
                controller, norm=_augmented_norm(problem.y0.shape[-1], True, 2)
            )
        n = problem.y0.numel()
        blocks = 1 if self.interpolate else 2  # [a, g] or [y, a, g]
        return dataclasses.replace(controller, norm=_augmented_norm(n, self.seminorm, blocks))


def _augmented_norm(n: int, seminorm: bool, blocks: int) -> Any:
    """Torchdiffeq's mixed norm over ``[y, a, g]`` (or ``[a, g]``): the largest block RMS.

    ``blocks`` is the number of ``n``-component blocks before ``g``.
    """

    def norm(x: torch.Tensor) -> torch.Tensor:
        rms = [rms_norm(x[i * n : (i + 1) * n]) for i in range(blocks)]
        if not seminorm and x.numel() > blocks * n:
            rms.append(rms_norm(x[blocks * n :]))
        return torch.stack(rms).amax()

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
    interpolant: DenseInterpolation | None = None


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
        if setup.interpolant is not None and differentiable_backward():
            raise NotImplementedError(
                "second derivatives (create_graph=True) through "
                "BacksolveAdjoint(interpolate=True) are not supported: y(t) comes from the "
                "forward dense output, a constant; use BacksolveAdjoint() or DirectAdjoint()"
            )
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
    augmented = _AugmentedField(problem, params, setup.interpolant)
    times = problem.ts.tolist()
    y, a = ys[-1], grad_ys[-1]
    g = torch.zeros(sum(p.numel() for p in params), dtype=ys.dtype, device=ys.device)
    nfe = 0
    for i in range(len(times) - 1, 0, -1):
        state = (a, g) if setup.interpolant is not None else (y, a, g)
        # On the host: the backward problem reads its two times as floats.
        segment = torch.tensor([times[i], times[i - 1]], dtype=problem.ts.dtype, device="cpu")
        back = augmented.problem(state, segment)
        raw = integrate(back, setup.solver, setup.controller, max_steps=setup.max_steps)
        check_backward(raw)
        nfe += back.f.nfe
        end = raw.ys[-1]
        n = y.numel()
        if setup.interpolant is not None:
            end = torch.cat([y.reshape(-1), end])  # as if [y, a, g]; y is not solved
        # Restart y from the forward solution (torchdiffeq does the same): the backward
        # reconstruction of y drifts, the stored forward value does not.
        y = ys[i - 1]
        a = end[n : 2 * n].view_as(a) + grad_ys[i - 1]
        g = end[2 * n :]
    grads = list(torch.split(g, [p.numel() for p in params])) if params else []
    return a, [gp.view_as(p) for gp, p in zip(grads, params, strict=True)], nfe


class _AugmentedField:
    """The augmented dynamics ``[f, −aᵀ∂f/∂y, −aᵀ∂f/∂θ]`` on the flat ``[y, a, g]``.

    With an ``interpolant`` the state is ``[a, g]`` and ``y(t)`` is read from it.
    """

    def __init__(
        self,
        problem: Problem,
        params: list[torch.Tensor],
        interpolant: DenseInterpolation | None = None,
    ) -> None:
        self.forward_problem = problem
        self.params = params
        self.interpolant = interpolant

    def __call__(self, t: torch.Tensor, state: State) -> State:
        f = self.forward_problem.f
        if self.interpolant is None:
            y, a, _ = state
        else:
            a, _ = state
            # Extrapolated past the ends: a backward stage past its step (Kvaerno5's
            # c = 1.23) lands beyond the first output time.
            y = self.interpolant.state_at(float(t), extrapolate=True)
            y = y.reshape(self.forward_problem.y0.shape)  # the solver's tensor, as a is

        def call(y_var: torch.Tensor) -> torch.Tensor:
            return f.structure.flatten(f.f(t, f.structure.unflatten(y_var)))

        # −aᵀ∂f/∂y and −aᵀ∂f/∂θ as the products with −a: one negation, not two (and the
        # same numbers: a sign flip is exact).
        fy, vjp_y, vjp_params = field_vjp(call, y, torch.neg(a), self.params)
        flat = [v.reshape(-1) for v in vjp_params]
        g_dot = torch.cat(flat) if flat else y.new_zeros(0)
        if self.interpolant is not None:
            return vjp_y, g_dot
        return fy, vjp_y, g_dot

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
