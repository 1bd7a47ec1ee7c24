"""solve(): validate → Problem → adjoint.solve(...) → Solution (raise on failure)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch

from ._checks import (
    all_finite,
    check_norm,
    check_stops,
    check_tolerances_for,
    check_whole_number,
)
from ._event_solve import replay
from ._events import Event, as_events
from ._norms import max_norm, rms_norm
from ._problem import DEFAULT_TUNING, PerSampleTuning, Problem, make_problem
from ._solution import RawSolution, Solution, State, Status
from ._time_gradients import attach_output_times
from ._vector_field import UserField
from .adjoints import AbstractAdjoint, BacksolveAdjoint, DirectAdjoint
from .controllers import AbstractController, PIDController
from .integrate import Watcher, integrate
from .regularizers import AbstractRegularizer, solve_regularized
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
    batch_dims: int = 0,
    args: torch.Tensor | Sequence[torch.Tensor] = (),
    compile_step: bool = False,
    tuning: PerSampleTuning | None = None,
    regularizers: Sequence[AbstractRegularizer] = (),
    event: Event | Sequence[Event] | None = None,
) -> Solution:
    """Solve ``dy/dt = f(t, y)``, ``y(ts[0]) = y0``, and return the state at every ``ts``.

    Args:
        f: The vector field ``f(t, y)``: ``t`` a 0-d tensor, ``y`` shaped like ``y0``;
            returns a tensor (or tuple) of ``y0``'s shape and dtype.
        y0: Initial state at ``ts[0]``: a floating tensor of any shape, or a tuple of them.
            Complex states are solved as they are (time stays real, error control on
            ``|·|``) in joint mode, with ``DirectAdjoint`` or ``CheckpointAdjoint``.
            ``f`` must not write into the ``y`` it receives (``y *= 2``): that is an error.
        ts: Output times, a 1-D floating tensor, strictly increasing or strictly decreasing
            (reverse-time solve). ``ts[0]`` is the initial time.
        solver: The method; ``Dopri5()`` by default.
        controller: Step-size control; ``PIDController()`` (rtol 1e-6, atol 1e-8) for
            adaptive solvers. Fixed-step solvers need ``ConstantStepSize(dt)`` or ``StepTo``.
        adjoint: Gradient method: ``DirectAdjoint()`` (backprop through the solver, the
            default), ``BacksolveAdjoint()`` (the paper's O(1)-memory adjoint) or
            ``CheckpointAdjoint()`` (exact, memory ∝ steps). Gradients reach ``y0``, the
            parameters of ``f`` and, if ``ts.requires_grad``, the output times.
        max_steps: Total budget of attempted steps over the whole solve (a whole number;
            ``1e4`` is accepted, ``2.5`` is an error).
        dense: Also return a dense interpolant (``Solution.dense``) over the interval.
        throw: Raise :class:`SolverError` on failure (default). With ``throw=False`` the
            solution carries the failing ``status``, NaN in every output it did not reach,
            and the last good state.
        params: The tensors ``f`` depends on that need gradients, for the gradient methods
            that re-run ``f`` in their backward pass (backsolve, checkpoint). Not needed
            when ``f`` is an ``nn.Module`` (its parameters are used).
        batch_dims: ``0`` (default): one problem, one step size for the whole state
            (torchdiffeq's semantics). ``1``: per-sample mode. The leading dimension of
            ``y0`` (of every part of a tuple ``y0``) holds ``B`` independent problems,
            each with its own error norm, step size, accept/reject decision, status and,
            if ``ts`` has shape ``(B, T)``, its own output times; samples that finish
            leave the batch. ``f`` then receives ``t`` as a ``(b,)`` tensor, one time per
            row of ``y``, and ``b`` shrinks as samples finish, so row ``i`` of
            ``f(t, y)`` must depend on row ``i`` of ``y`` only (no batch norm, no mixing
            across samples). ``max_steps`` is then each sample's budget.
        args: Per-sample mode only: tensors with one row per sample (each sample's own
            constants, e.g. its ``mu``), passed on as ``f(t, y, *args)`` and restricted to
            the samples still in the batch, like ``y``.
        compile_step: Compile each step's tensor work (the solver's stages with ``f``,
            error control and bookkeeping) into one graph with ``torch.compile``. Pays off
            for small vector fields over many steps; the first solve pays the compilation
            (see the docs on per-sample mode). In joint mode the whole state runs as the
            one row of the per-sample driver (equal to the eager solve up to rounding;
            not with ``dense``, ``event``, ``step_ts``/``jump_ts``, tensor tolerances or
            ``CheckpointAdjoint``).
        tuning: Per-sample mode (or ``compile_step=True``): the driver's performance knobs
            (:class:`~neuralode.PerSampleTuning`: compile backend, steps fused per compiled
            call, steps between host reads, compaction, output batching). None of them
            changes a number. In joint mode a tuning with ``sync_every > 1`` runs the
            state as the per-sample driver's one row, as ``compile_step=True`` does.
        regularizers: Integrals along the trajectory to penalise in training
            (:class:`~neuralode.KineticEnergy`, :class:`~neuralode.JacobianFrobenius`),
            solved as extra states of this solve and outside its error control (a PID
            controller takes the steps it would take without them); their values are
            in ``Solution.regularization`` by name. Not with ``dense=True``.
        event: An :class:`~neuralode.Event` or a tuple of them: zero crossings of
            conditions on the solution that stop a sample, change its state (a jump) or
            are only recorded, each sample on its own in per-sample mode. The events met
            are in ``Solution.event_ts`` / ``event_index`` / ``event_element``; outputs
            after a jump are the post-jump trajectory, outputs after a stop are NaN.
            Under ``torch.no_grad()`` the solve runs once; with autograd on it runs a
            second, differentiable pass between the events the first found (so
            gradients reach the event times and through the jumps with every gradient
            method). Not with ``regularizers``; with ``dense=True`` the interpolant
            follows the jumps (it is the first pass's, without a graph).

    Returns:
        A :class:`Solution` with ``ys`` of shape ``(T, *y0.shape)``: in per-sample mode
        ``ys[i, b]`` is sample ``b`` at ``ts[b, i]`` (or ``ts[i]`` for 1-D ``ts``).
    """
    solver = Dopri5() if solver is None else solver
    if not isinstance(solver, AbstractSolver):
        raise TypeError(
            f"solver must be a neuralode solver instance such as Dopri5(), got {solver!r}"
        )
    controller = default_controller(solver) if controller is None else controller
    adjoint = DirectAdjoint() if adjoint is None else adjoint
    if event is not None and regularizers:
        raise ValueError(
            "event= cannot be combined with regularizers yet: an event cuts steps and jumps "
            "the state, which the regularisers' integrals do not follow"
        )
    if regularizers:
        return solve_regularized(
            solve, f, y0, ts, regularizers, controller=controller, batch_dims=batch_dims,
            dense=dense, solver=solver, adjoint=adjoint, max_steps=max_steps, throw=throw,
            params=params, args=args, compile_step=compile_step, tuning=tuning,
        )  # fmt: skip
    max_steps = _check_config(solver, controller, adjoint, max_steps)
    _check_batch_dims(batch_dims, controller)
    tuning = _per_sample_options(batch_dims, args, compile_step, tuning)
    if tuning is not None and tuning.compile and not solver.compilable:
        raise ValueError(
            f"compile_step=True: {type(solver).__name__}'s steps cannot be compiled (its "
            "Newton iterations stop on a host-side convergence test); solve with "
            "compile_step=False"
        )
    problem = make_problem(f, y0, ts, params, batch_dims=batch_dims, args=args, tuning=tuning)
    _check_controller_for(problem, controller)
    if problem.y0.is_complex():
        _check_complex(problem, adjoint)
    if event is not None:
        events = as_events(event)
        watcher = Watcher(problem, solver, events)
        with torch.no_grad():
            raw = integrate(
                problem, solver, controller, max_steps=max_steps, dense=dense, watcher=watcher
            )
        assert raw.events is not None
        table = raw.events.table(problem.y0.shape[0] if problem.batched else 1)
        event_ts = table.times.to(ts.dtype)
        if torch.is_grad_enabled():

            def segment(
                y: State, seg_ts: torch.Tensor, seg_args: tuple[torch.Tensor, ...]
            ) -> Solution:
                return solve(
                    f, y, seg_ts, solver=solver, controller=controller, adjoint=adjoint,
                    max_steps=max_steps, params=params, batch_dims=batch_dims, args=seg_args,
                    tuning=tuning,
                )  # fmt: skip

            ys, event_ts, y_event, nfe = replay(segment, problem, f, ts, y0, events, table, raw)
            raw.ys = ys.reshape(raw.ys.shape)
            stopped = table.stopped.unsqueeze(-1)
            if not problem.batched:
                y_event, stopped = y_event[0].reshape(raw.y_last.shape), table.stopped[0]
            # Where an event stopped a sample, its last state, differentiable.
            raw.y_last = torch.where(stopped, y_event, raw.y_last)
            raw.stats.nfe += nfe
        solution = finish(problem, raw, throw=throw)
        lead = slice(None) if problem.batched else 0
        solution.event_ts = event_ts[lead]
        solution.event_index, solution.event_element = table.event[lead], table.element[lead]
        return solution
    raw = adjoint.solve(problem, solver, controller, max_steps=max_steps, dense=dense)
    raw.ys = attach_output_times(problem.f, problem.ts, raw.ys)
    return finish(problem, raw, throw=throw)


def _per_sample_options(
    batch_dims: int, args: object, compile_step: bool, tuning: object
) -> PerSampleTuning | None:
    """Check the options that only the per-sample mode takes; the driver's tuning."""
    if tuning is not None and not isinstance(tuning, PerSampleTuning):
        raise TypeError(f"tuning must be a neuralode.PerSampleTuning, got {tuning!r}")
    if tuning is not None and not batch_dims and not (compile_step or tuning.joint_as_row):
        raise ValueError(
            "tuning= configures the per-sample driver and needs batch_dims=1 (or, in joint "
            "mode, compile_step=True or tuning.sync_every > 1, which run the joint state as "
            f"its one row); the eager joint mode has no such knobs, got {tuning!r}"
        )
    if not isinstance(args, (torch.Tensor, tuple, list)):
        raise TypeError(
            "args must be a tensor or a tuple of tensors with one row per sample (batch_dims=1), "
            f"got {type(args).__name__}"
        )
    if not batch_dims and (isinstance(args, torch.Tensor) or len(args)):
        raise ValueError(
            "args= passes per-sample constants with batch_dims=1; with one joint problem, "
            "let f close over them (e.g. functools.partial or an nn.Module attribute)"
        )
    if compile_step:
        return dataclasses.replace(tuning or DEFAULT_TUNING, compile=True)
    return tuning


def _check_complex(problem: Problem, adjoint: AbstractAdjoint) -> None:
    """The gradient paths that do not handle a complex state yet (they would be wrong)."""
    if isinstance(adjoint, BacksolveAdjoint):
        raise TypeError(
            "BacksolveAdjoint does not support complex states yet (its adjoint state mixes "
            "complex y with real parameter gradients): use DirectAdjoint() or "
            "CheckpointAdjoint(), which are exact, or solve torch.view_as_real(y0)"
        )
    if problem.ts.requires_grad:
        # dL/dt_i = Re<g_i, f(t_i, y_i)> needs the conjugate of the complex cotangent,
        # which the output-time gradients do not take yet: they would be silently wrong.
        raise TypeError(
            "gradients with respect to ts are not supported for complex states yet: pass "
            "ts.detach(), or solve torch.view_as_real(y0) (a real state) to get them"
        )


def default_controller(solver: AbstractSolver) -> AbstractController:
    """The controller ``solve`` uses when given none: a PID one for adaptive solvers."""
    if not solver.adaptive:
        raise ValueError(
            f"{type(solver).__name__} is a fixed-step solver and has no error estimate: "
            "pass controller=ConstantStepSize(dt=...) (or StepTo(grid)), or choose an "
            "adaptive solver such as Dopri5()"
        )
    return _DEFAULT_PID


# One shared instance (it is immutable): building and validating one costs ~8 µs, at every
# solve that passes no controller.
_DEFAULT_PID = PIDController()


def _check_config(
    solver: AbstractSolver, controller: object, adjoint: object, max_steps: object
) -> int:
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
    return check_whole_number(max_steps, "max_steps")


def _check_controller_for(problem: Problem, controller: AbstractController) -> None:
    """What a controller's settings mean for this problem: its dtype, interval and norm."""
    if problem.batched:
        assert problem.sample_taus is not None
        lo, hi = float(problem.sample_taus.min()), float(problem.sample_taus.max())
    else:
        lo, hi = problem.taus[0], problem.taus[-1]
    lo, hi = sorted((problem.direction * lo, problem.direction * hi))
    step_ts, jump_ts = controller.stops()
    check_stops(step_ts, "step_ts", lo, hi)
    check_stops(jump_ts, "jump_ts", lo, hi)
    if not controller.adaptive:
        return
    check_tolerances_for(problem.y0.dtype, *controller.tolerances())
    norm = getattr(controller, "norm", rms_norm)
    if norm is not rms_norm and norm is not max_norm:
        check_norm(norm, problem.y0, problem.batched)


def _check_batch_dims(batch_dims: object, controller: AbstractController) -> None:
    if isinstance(batch_dims, bool) or batch_dims not in (0, 1):
        raise ValueError(
            f"batch_dims must be 0 (one joint problem) or 1 (the leading dim of y0 holds "
            f"independent problems), got {batch_dims!r}"
        )
    if not batch_dims:
        return
    if not controller.adaptive:
        raise ValueError(
            f"batch_dims=1 steps every sample with its own adaptive step size, which "
            f"{type(controller).__name__} does not do: use PIDController(rtol=..., atol=...), "
            "or batch_dims=0 for fixed steps (they are the same for every sample anyway)"
        )
    if any(controller.stops()):
        raise ValueError(
            "step_ts/jump_ts are not supported with batch_dims=1 yet; use batch_dims=0, or "
            "split the solve at those times"
        )


def finish(problem: Problem, raw: RawSolution, *, throw: bool) -> Solution:
    """Unflatten the loop's result and raise on failure when asked to."""
    _fail_nonfinite_outputs(problem, raw)
    error = raw.error()
    if error is not None and throw:
        raise error
    t_last = raw.t_last  # per-sample: a (B,) tensor, NaN where a sample never started
    if isinstance(t_last, float) and not math.isfinite(t_last):
        t_last = float("nan")
    unflatten = problem.structure.unflatten
    return Solution(
        ts=problem.ts,
        ys=unflatten(raw.ys),
        stats=raw.stats,
        status=raw.status,
        t_last=t_last,
        y_last=unflatten(raw.y_last),
        dense=raw.dense,
        sample_status=raw.sample_status,
    )


def _fail_nonfinite_outputs(problem: Problem, raw: RawSolution) -> None:
    """Turn a success whose outputs are not all finite into a ``NONFINITE`` failure.

    Every accepted state is finite, but an output inside a step is the step's interpolant,
    which may use a stage the step's own checks never saw: the last stage of a fixed step
    (``y1`` is finite, ``f(t1, y1)`` overflowed), or ``f(t1, y1)`` evaluated for a Hermite
    interpolant after the step was accepted. Such an output is a numerical failure, never
    an answer (one reduction over the outputs and one host sync per solve).
    """
    if all_finite(raw.ys):
        return
    with torch.no_grad():
        # Per output (joint, (T,)) or per output and sample ((T, B)).
        lead = raw.ys.shape[:2] if raw.sample_status is not None else raw.ys.shape[:1]
        finite = torch.isfinite(raw.ys).reshape(*lead, -1).all(-1)
        if raw.events is not None:
            # Outputs after a sample stopped at an event are NaN by design.
            finite = finite | ~_reached(problem, raw)
        if raw.sample_status is not None:
            finite = finite.all(0)
    detail = (
        "an output inside the last step is not finite (the step's interpolant used a "
        "non-finite stage, e.g. f(t1, y1) overflowed): reduce the step size or tighten "
        "the tolerances"
    )
    if raw.sample_status is None:
        if raw.status is Status.SUCCESS and not bool(finite.all()):
            bad = int((~finite).nonzero()[0]) if finite.ndim else 0
            raw.status, raw.detail = Status.NONFINITE, f"{detail} (ts[{bad}])"
        return
    statuses = list(raw.sample_status)
    bad_rows = (~finite).nonzero().reshape(-1).tolist() if not bool(finite.all()) else []
    changed = False
    for b in bad_rows:
        if statuses[b] is Status.SUCCESS:
            statuses[b], changed = Status.NONFINITE, True
    if changed:
        raw.sample_status = tuple(statuses)
        raw.status = next(s for s in statuses if s is not Status.SUCCESS)
        raw.detail = detail


def _reached(problem: Problem, raw: RawSolution) -> torch.Tensor:
    """Which outputs a solve reached, ``(T, B)`` (joint: ``(T,)``): at or before ``t_last``."""
    d = problem.direction
    t_last = torch.as_tensor(raw.t_last, dtype=torch.float64)
    if problem.batched:
        assert problem.sample_taus is not None
        return (problem.sample_taus <= d * t_last.unsqueeze(-1)).T
    return torch.tensor(problem.taus, dtype=torch.float64, device=raw.ys.device) <= d * t_last
