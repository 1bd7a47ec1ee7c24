"""The joint driver: one step size for the whole state (torchdiffeq's semantics).

step → controller decides (accept, next dt) → on accept, interpolate every output time
inside the step → statistics. The driver runs in forward time ``tau`` (see
:class:`~neuralode._problem.Problem`); the solver and the vector field see the caller's
signed time. Its clock, step sizes and error ratios are Python floats: one host sync per
step (the controller's verdict) and no tensor arithmetic on time, which is most of a
small neural ODE's solver overhead.
"""

from __future__ import annotations

import bisect

import torch

from .._checks import all_finite
from .._problem import Problem, flat_tolerance
from .._solution import RawSolution, Stats
from ..controllers import AbstractController, SolveStart
from ..interpolation import DenseInterpolation
from ..solvers._explicit_rk import AbstractSolver, SolverState, StepResult
from .clock import landing, next_float, step_to
from .endings import NEWTON_FAILURES, Failure, ending, hopeless, linear_algebra
from .events import Cut, Watcher
from .hooks import OnAccept
from .outputs import assemble, outputs_in_step
from .records import StepRecord


def integrate_joint(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    *,
    max_steps: int,
    dense: bool = False,
    records: list[StepRecord] | None = None,
    on_accept: OnAccept | None = None,
    watcher: Watcher | None = None,
) -> RawSolution:
    """Solve a joint ``problem``; see :func:`neuralode.integrate.integrate`."""
    f, d, taus = problem.f, problem.direction, problem.taus
    tau, y, f0 = taus[0], problem.y0, problem.f0
    out = _Collected(problem, solver, dense, records)
    stats, failure, dt = Stats(), Failure.NONE, 0.0
    if len(taus) > 1 and not all_finite(f0):
        # Nothing a smaller step can fix: fail before choosing a (NaN) first step.
        failure = Failure.NONFINITE_AT_T0
    elif len(taus) > 1:
        dt, cstate = controller.init(_start(problem, solver, controller, tau, y, f0))
    sstate = solver.initial_state(y.reshape(1, -1))
    stops, jumps = _forced_stops(controller, problem)
    t_dtype, t_f0, streak = problem.ts.dtype, d * tau, 0
    stop_at, land = None, 0.0  # the stop the steps head for, and where they land on it
    if watcher is not None:
        watcher.start(torch.tensor([tau], dtype=torch.float64, device=y.device), y.reshape(1, -1))
    while not failure and out.n_out < len(taus):
        if stats.steps >= max_steps:
            failure = Failure.MAX_STEPS
            break
        # The controller's proposal, not a step cut short to land on a stop, is what must
        # respect dt_min (with slack for dt having been recomputed as t1 - t0).
        underflow = dt < controller.min_step() * (1 - 1e-9)
        i_stop = bisect.bisect_right(stops, tau)
        tau_stop = stops[i_stop] if i_stop < len(stops) else taus[-1]
        if tau_stop != stop_at:  # (the same stop for most steps: computed once for it)
            stop_at, land = tau_stop, landing(tau_stop, t_dtype)
        # Land exactly on the next stop rather than leave a sliver.
        tau1, dt, lost = step_to(tau, dt, tau_stop, land, t_dtype)
        if underflow or lost:
            failure = Failure.DT_MIN if underflow else Failure.CLOCK
            failure = Failure.NONFINITE_UNDERFLOW if streak else failure
            break
        # A step that ends on a jump of f evaluates its end stages just before the jump
        # (the left limit), as torchdiffeq does; the step after restarts just past it.
        t1_stage = next_float(d * tau1, d * tau, t_dtype) if tau1 in jumps else None
        step = solver.step(f, d * tau, y, f0, d * dt, t1_stage, sstate)
        stats.steps += 1
        decision = controller.decide(tau, dt, y, step, cstate)
        cstate = decision.state
        if not decision.accept:
            stats.rejected += 1
            streak = streak + 1 if decision.nonfinite else 0
            failure = hopeless(decision.nonfinite, controller.adaptive, streak, f0)
            newton = step.newton_failed
            if failure in NEWTON_FAILURES and newton is not None and bool(newton.any()):
                failure = NEWTON_FAILURES[failure]
            dt = dt if failure else decision.dt_next
            if step.retry_state is not None:
                sstate = step.retry_state
            continue
        streak = 0
        stats.accepted += 1
        if on_accept is not None:
            on_accept(tau, dt, y, step, True)
        cut = None if watcher is None else _watch(watcher, tau, dt, tau1, y, step, f)
        if cut is not None:
            # The step ends at the event: its outputs up to it, then the state after it.
            tau_e, y_e = float(cut.tau[0]), cut.y[0].reshape(y.shape)
            out.accept(tau, tau1, dt, y, step, t_f0, t1_stage, sstate, tau_end=tau_e)
            tau, y, t_f0, sstate = tau_e, y_e, d * tau_e, step.state
            if bool(cut.stop[0]):
                break
            dt = decision.dt_next
            if out.n_out < len(taus):
                f0 = f(t_f0, y)
                if bool(cut.jumped[0]):
                    # The state jumped: the step-size history says nothing about what
                    # follows, so choose the next step as at the start of a solve.
                    dt, cstate = controller.init(_start(problem, solver, controller, tau, y, f0))
                    sstate = solver.initial_state(y.reshape(1, -1))
            continue
        f1 = out.accept(tau, tau1, dt, y, step, t_f0, t1_stage, sstate)
        tau, y, t_f0, sstate = tau1, step.y1, d * tau1, step.state
        if out.n_out < len(taus):
            if tau in jumps:
                f0, t_f0 = _restart(problem, tau, y)
                sstate = solver.initial_state(y.reshape(1, -1))
            else:
                f0 = f1 if f1 is not None else f(d * tau, y)
        dt = decision.dt_next
    stats.nfe = f.nfe
    for name, count in linear_algebra(f.counts).items():
        setattr(stats, name, count)
    status, detail = ending(failure, d * tau, t_dtype)
    return RawSolution(
        ys=assemble(out.ys, len(taus)), stats=stats, status=status, t_last=d * tau, y_last=y,
        dt_last=d * dt if dt else 0.0, detail=detail, dense=out.dense,
    )  # fmt: skip


def _watch(
    watcher: Watcher,
    tau: float,
    dt: float,
    tau1: float,
    y: torch.Tensor,
    step: StepResult,
    f: object,
) -> Cut | None:
    """The joint state's accepted step, searched for events as the watcher's one row."""
    f1 = step.f1
    if watcher.solver.needs_f1 and f1 is None:
        f1 = f(watcher.d * tau1, step.y1)  # type: ignore[operator]
    device = y.device
    clock = torch.tensor([tau, dt, tau1], dtype=torch.float64, device=device)
    stacked = torch.stack([y, *step.k, step.y1]).reshape(1, len(step.k) + 2, -1)
    one = torch.ones(1, dtype=torch.bool, device=device)
    return watcher.check(
        torch.zeros(1, dtype=torch.long, device=device), clock[:1], clock[1:2], clock[2:], stacked,
        None if f1 is None else f1.reshape(1, -1), one,
    )  # fmt: skip


def _restart(problem: Problem, tau: float, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``f`` just past a jump of ``f`` at ``tau``, and that time.

    The step that ended on the jump evaluated its end stages at the left limit, so its
    ``f1`` is not the next step's ``f0``: restart from the right one.
    """
    d = problem.direction
    t_f0 = next_float(d * tau, d * problem.taus[-1], problem.ts.dtype)
    return problem.f(t_f0, y), t_f0


def _start(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    tau: float,
    y: torch.Tensor,
    f0: torch.Tensor,
) -> SolveStart:
    """What the controller may look at to choose a first step from ``(tau, y)``."""
    rtol, atol = controller.tolerances()
    d = problem.direction
    return SolveStart(
        solver=solver,
        f=problem.f,
        t0=d * tau,
        y0=y,
        f0=f0,
        tau0=tau,
        tau_end=problem.taus[-1],
        direction=d,
        rtol=flat_tolerance(rtol, problem),
        atol=flat_tolerance(atol, problem),
    )


def _forced_stops(controller: AbstractController, problem: Problem) -> tuple[list[float], set]:
    """The controller's ``step_ts`` and ``jump_ts`` inside the interval, in forward time."""
    step_ts, jump_ts = controller.stops()
    lo, hi = problem.taus[0], problem.taus[-1]
    d = problem.direction
    jumps = {d * t for t in jump_ts if lo < d * t < hi}
    stops = sorted({d * t for t in step_ts if lo < d * t < hi} | jumps)
    return stops, jumps


class _Collected:
    """What the joint driver keeps of its accepted steps: outputs, dense output, records."""

    def __init__(
        self,
        problem: Problem,
        solver: AbstractSolver,
        dense: bool,
        records: list[StepRecord] | None,
    ) -> None:
        self.problem, self.solver, self.records = problem, solver, records
        # (Read at every accepted step: kept as attributes of their own.)
        self.f, self.d, self.taus = problem.f, problem.direction, problem.taus
        self.ys = [problem.y0.unsqueeze(0)]  # ts[0] is t0: the first output is y0 itself
        self.n_out = 1
        self.hermite = solver.needs_f1
        unflatten = problem.structure.unflatten
        self.dense = DenseInterpolation(solver, problem.direction, unflatten) if dense else None

    def accept(
        self,
        tau: float,
        tau1: float,
        dt: float,
        y: torch.Tensor,
        step: StepResult,
        t_f0: float,
        t1_stage: float | None,
        state0: SolverState,
        tau_end: float | None = None,
    ) -> torch.Tensor | None:
        """Keep what an accepted step gives; return ``f(t1, y1)`` if it is known by now.

        ``state0``: the solver state the step started from. ``tau_end``: an event cut the
        step there; only the outputs up to it are kept.
        """
        f, d, taus = self.f, self.d, self.taus
        f1 = step.f1
        n_out_before = self.n_out
        n_next = bisect.bisect_right(taus, tau1 if tau_end is None else tau_end, lo=self.n_out)
        if n_next > self.n_out:
            # Hermite needs f(t1, y1) only for outputs strictly inside the step.
            if self.hermite and f1 is None and taus[self.n_out] < tau1:
                f1 = f(d * tau1, step.y1)
            self.ys.append(
                outputs_in_step(self.solver, taus, self.n_out, n_next, tau, dt, d, y, step, f1)
            )
            self.n_out = n_next
        if self.dense is not None:
            if self.hermite and f1 is None:
                f1 = f(d * tau1, step.y1)
            self.dense.add(tau, d * dt, y, step.k, f1, tau_end)
        if self.records is not None:
            kept = state0 if self.solver.replay_needs_state else ()
            record = StepRecord(tau, dt, y, t_f0, t1_stage, n_out_before, self.n_out, kept)
            self.records.append(record)
        return f1
