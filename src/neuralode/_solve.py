"""solve(): validate → Problem → adjoint.solve(...) → Solution (raise on failure)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._loop import RawSolution
from ._problem import Problem
from ._solution import Solution, SolverError, State, Status
from ._vector_field import Structure, UserField, VectorField
from .adjoints import AbstractAdjoint, DirectAdjoint
from .adjoints._time import attach_initial_time, attach_output_times
from .controllers import AbstractController, PIDController
from .solvers import AbstractSolver, Dopri5

DEFAULT_MAX_STEPS = 10_000


def solve(
    f: UserField,
    y0: State,
    ts: torch.Tensor,
    *,
    solver: AbstractSolver | None = None,
    controller: AbstractController | None = None,
    adjoint: AbstractAdjoint | None = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    dense: bool = False,
    throw: bool = True,
    params: Sequence[torch.Tensor] | None = None,
) -> Solution:
    """Solve ``dy/dt = f(t, y)``, ``y(ts[0]) = y0``, and return the state at every ``ts``.

    Args:
        f: The vector field ``f(t, y)``: ``t`` a 0-d tensor, ``y`` shaped like ``y0``;
            returns a tensor (or tuple) of ``y0``'s shape and dtype.
        y0: Initial state at ``ts[0]``: a floating tensor of any shape, or a tuple of them.
        ts: Output times, a 1-D floating tensor, strictly increasing or strictly decreasing
            (reverse-time solve). ``ts[0]`` is the initial time.
        solver: The method; ``Dopri5()`` by default.
        controller: Step-size control; ``PIDController()`` (rtol 1e-6, atol 1e-8) for
            adaptive solvers. Fixed-step solvers need ``ConstantStepSize(dt)`` or ``StepTo``.
        adjoint: Gradient method: ``DirectAdjoint()`` (backprop through the solver, the
            default), ``BacksolveAdjoint()`` (the paper's O(1)-memory adjoint) or
            ``CheckpointAdjoint()`` (exact, memory ∝ steps). Gradients reach ``y0``, the
            parameters of ``f`` and, if ``ts.requires_grad``, the output times.
        max_steps: Total budget of attempted steps over the whole solve.
        dense: Also return a dense interpolant (``Solution.dense``) over the interval.
        throw: Raise :class:`SolverError` on failure (default). With ``throw=False`` the
            solution carries the failing ``status``, NaN in every output it did not reach,
            and the last good state.
        params: The tensors ``f`` depends on that need gradients, for the gradient methods
            that re-run ``f`` in their backward pass (backsolve, checkpoint). Not needed
            when ``f`` is an ``nn.Module`` (its parameters are used).

    Returns:
        A :class:`Solution` with ``ys`` of shape ``(len(ts), *y0.shape)``.
    """
    solver = Dopri5() if solver is None else solver
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"solver must be a neuralode solver instance such as Dopri5(), got {solver!r}"
        )
    controller = _default_controller(solver) if controller is None else controller
    adjoint = DirectAdjoint() if adjoint is None else adjoint
    _check_config(solver, controller, adjoint, max_steps)
    problem = make_problem(f, y0, ts, params)
    raw = adjoint.solve(problem, solver, controller, max_steps=max_steps, dense=dense)
    raw.ys = attach_output_times(problem, raw.ys)
    return finish(problem, raw, throw=throw)


def _default_controller(solver: AbstractSolver) -> AbstractController:
    if not solver.adaptive:
        raise ValueError(
            f"{type(solver).__name__} is a fixed-step solver and has no error estimate: "
            "pass controller=ConstantStepSize(dt=...) (or StepTo(grid)), or choose an "
            "adaptive solver such as Dopri5()"
        )
    return PIDController()


def _check_config(
    solver: AbstractSolver, controller: object, adjoint: object, max_steps: object
) -> None:
    if not isinstance(controller, AbstractController):
        raise TypeError(
            "controller must be a neuralode controller such as PIDController(rtol=1e-6, "
            f"atol=1e-8) or ConstantStepSize(dt=0.1), got {controller!r}"
        )
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(f"adjoint must be e.g. DirectAdjoint(), got {adjoint!r}")
    if controller.adaptive and not solver.adaptive:
        raise ValueError(
            f"{type(controller).__name__} adapts the step from an error estimate, but "
            f"{type(solver).__name__} has none: use ConstantStepSize(dt=...) or an adaptive "
            "solver such as Dopri5()"
        )
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")


def _check_times(ts: object) -> list[float]:
    if not isinstance(ts, torch.Tensor):
        raise TypeError(
            f"ts must be a 1-D floating torch.Tensor of output times, got {type(ts).__name__}; "
            "e.g. ts=torch.linspace(0.0, 1.0, 11)"
        )
    if not ts.is_floating_point():
        raise TypeError(
            f"ts must be floating point, got dtype {ts.dtype} (values {ts.tolist()[:5]}...); "
            "convert with ts.float() or ts.double()"
        )
    if ts.ndim != 1 or ts.numel() < 1:
        raise ValueError(
            f"ts must be 1-D with at least one time, got shape {tuple(ts.shape)}; "
            "per-sample output times need the per-sample mode"
        )
    # One host transfer, then plain Python checks: cheaper than several tensor reductions
    # and syncs for the short time grids that are the common case.
    values = ts.tolist()
    if not all(map(math.isfinite, values)):
        raise ValueError(f"ts must be finite, got {values}")
    if len(values) > 1:
        sign = 1.0 if values[1] > values[0] else -1.0
        for i, (a, b) in enumerate(zip(values, values[1:], strict=False)):
            if not sign * (b - a) > 0:
                raise ValueError(
                    "ts must be strictly increasing or strictly decreasing, but "
                    f"ts[{i}]={a} and ts[{i + 1}]={b}; remove repeated times and sort them"
                )
    return values


def _check_state(y0: object) -> tuple[torch.Tensor, ...]:
    parts = (y0,) if isinstance(y0, torch.Tensor) else y0
    if not isinstance(parts, tuple) or not parts:
        raise TypeError(
            f"y0 must be a tensor or a non-empty tuple of tensors, got {type(y0).__name__}"
        )
    for i, part in enumerate(parts):
        name = "y0" if isinstance(y0, torch.Tensor) else f"y0[{i}]"
        if not isinstance(part, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(part).__name__}")
        if not part.is_floating_point():
            raise TypeError(
                f"{name} must be floating point, got dtype {part.dtype}; convert with .float()"
            )
        if not bool(torch.isfinite(part).all()):
            bad = torch.nonzero(~torch.isfinite(part))[:5].tolist()
            raise ValueError(f"{name} contains NaN or inf (at indices {bad}); fix the input")
        if part.dtype != parts[0].dtype or part.device != parts[0].device:
            raise TypeError(
                f"all parts of y0 must share a dtype and device: y0[0] is {parts[0].dtype} on "
                f"{parts[0].device}, {name} is {part.dtype} on {part.device}"
            )
    return parts


def _check_field_output(out: object, y0: State) -> None:
    expected = Structure.of(y0)
    if isinstance(y0, torch.Tensor):
        got = out if isinstance(out, torch.Tensor) else None
        if got is None:
            raise TypeError(f"f(t, y) must return a tensor like y0, got {type(out).__name__}")
        pairs = [("f(t, y)", got, y0)]
    else:
        if not isinstance(out, (tuple, list)) or len(out) != len(expected.shapes):
            raise TypeError(
                f"f(t, y) must return a tuple of {len(expected.shapes)} tensors like y0, "
                f"got {type(out).__name__}"
            )
        pairs = [(f"f(t, y)[{i}]", o, y) for i, (o, y) in enumerate(zip(out, y0, strict=False))]
    for name, got, want in pairs:
        if not isinstance(got, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(got).__name__}")
        if got.shape != want.shape:
            raise ValueError(
                f"{name} returned shape {tuple(got.shape)} but the state has shape "
                f"{tuple(want.shape)}; the vector field must return dy/dt with y's shape "
                "(no broadcasting)"
            )
        if got.dtype != want.dtype:
            raise TypeError(
                f"{name} returned dtype {got.dtype} but the state is {want.dtype}; cast the "
                "output (or y0) so both match"
            )


def make_problem(
    f: UserField, y0: State, ts: torch.Tensor, params: Sequence[torch.Tensor] | None = None
) -> Problem:
    """Validate the inputs at the boundary and build the flat :class:`Problem`."""
    if not callable(f):
        raise TypeError(f"f must be callable as f(t, y), got {type(f).__name__}")
    values = _check_times(ts)
    parts = _check_state(y0)
    structure = Structure.of(y0)
    field = VectorField(f, structure, ts.dtype, parts[0].device)
    # Every use of y0 downstream, f0 included, must go through the t0-gradient hook.
    y0_flat = attach_initial_time(field, ts, structure.flatten(y0))
    out = f(field.time(values[0]), structure.unflatten(y0_flat))
    field.nfe += 1
    _check_field_output(out, y0)
    direction = 1.0 if len(values) == 1 or values[-1] > values[0] else -1.0
    taus = tuple(direction * t for t in values)
    return Problem(
        f=field,
        y0=y0_flat,
        f0=structure.flatten(out),
        ts=ts,
        taus=taus,
        direction=direction,
        structure=structure,
        params=None if params is None else tuple(params),
    )


def finish(problem: Problem, raw: RawSolution, *, throw: bool) -> Solution:
    """Unflatten the loop's result and raise on failure when asked to."""
    if raw.status is not Status.SUCCESS and throw:
        raise SolverError(
            raw.status,
            t=raw.t_last,
            dt=raw.dt_last,
            steps=raw.stats.steps,
            detail=raw.detail,
        )
    unflatten = problem.structure.unflatten
    return Solution(
        ts=problem.ts,
        ys=unflatten(raw.ys),
        stats=raw.stats,
        status=raw.status,
        t_last=raw.t_last if math.isfinite(raw.t_last) else float("nan"),
        y_last=unflatten(raw.y_last),
        dense=raw.dense,
    )
