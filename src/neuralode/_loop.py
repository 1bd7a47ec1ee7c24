"""integrate(): THE step loop.

step → controller decides (accept, next dt) → on accept, interpolate every output time
inside the step → statistics. The loop runs in forward time ``tau`` (see Problem); the
solver and the vector field see the caller's signed time.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

import torch

from . import _arith
from ._problem import Problem
from ._solution import SolverError, Stats, Status
from .controllers import AbstractController, Decision, SolveStart
from .interpolation import DenseInterpolation, interpolate_step, needs_f1
from .solvers._explicit_rk import AbstractSolver, StepResult

# Non-finite rejections in a row before giving up even if dt has not underflowed: each one
# shrinks dt by factor_min (0.2 by default), so 40 of them cover 28 orders of magnitude.
_MAX_NONFINITE_STREAK = 40
_FIXED_STEP_NAN = (
    "a fixed step produced NaN/inf; the step is likely too large for the problem "
    "(or f is not finite there): reduce dt or use an adaptive solver"
)


@dataclass
class RawSolution:
    """The loop's result on the flat state, before unflattening.

    Attributes:
        ys: Outputs, shape ``(len(ts), N)``; NaN rows where the solve did not reach.
        stats: Work counters.
        status: How the loop ended.
        t_last: Last time reached (caller's time).
        y_last: Flat state at ``t_last``.
        dt_last: Last attempted step (caller's sign).
        detail: Extra words for an error message.
        dense: The dense interpolant if asked for.
        sample_status: Per-sample mode: how each sample ended (``t_last`` is then a
            ``(B,)`` tensor and ``ys`` is ``(len(ts), B, N)``).
    """

    ys: torch.Tensor
    stats: Stats
    status: Status
    t_last: float | torch.Tensor
    y_last: torch.Tensor
    dt_last: float
    detail: str = ""
    dense: DenseInterpolation | None = None
    sample_status: tuple[Status, ...] | None = None

    def error(self, context: str = "") -> SolverError | None:
        """The :class:`SolverError` of a failed solve (``None`` if it succeeded).

        ``context`` says which solve failed when it is not the caller's own (e.g. an
        adjoint's backward solve).
        """
        if self.status is Status.SUCCESS:
            return None
        detail = f"{context}: {self.detail}" if context and self.detail else context or self.detail
        if self.sample_status is None:
            t, samples = float(self.t_last), None
        else:
            samples = [i for i, s in enumerate(self.sample_status) if s is not Status.SUCCESS]
            t = float(self.t_last[samples[0]])  # type: ignore[index]
        return SolverError(
            self.status, t=t, dt=self.dt_last, steps=self.stats.steps, detail=detail,
            samples=samples,
        )  # fmt: skip


@dataclass(frozen=True)
class StepRecord:
    """An accepted step, enough to replay it exactly (checkpointed gradients).

    Attributes:
        tau0: Start in forward time.
        dt: Step size in forward time (positive).
        y0: State at the start.
        t_f0: Time at which ``f0`` was evaluated (just past ``t0`` after a jump).
        t1_stage: Time of the end stages when the step ends on a jump, else ``None``.
        i0: First output index produced by this step.
        i1: One past the last output index produced by this step.
    """

    tau0: float
    dt: float
    y0: torch.Tensor
    t_f0: float
    t1_stage: float | None
    i0: int
    i1: int


def resolution(tau: Any, dtype: torch.dtype) -> Any:
    """The smallest step that still moves ``tau`` as the vector field sees time (``dtype``).

    Four ulps of ``tau`` in ``dtype``: a float, or one per row for a ``(B,)`` tensor.
    """
    info = torch.finfo(dtype)
    return 4 * info.eps * _arith.maximum(abs(tau), info.tiny)


def coarse_clock(t: float, dtype: torch.dtype) -> str:
    """Why a step underflowed against the resolution of ``t`` when ``dtype`` is coarse.

    In float64 such an underflow means a blow-up or stiffness, as the status says (empty
    string). In float32 or lower it may be the time's dtype alone (t = 1e6 in float32
    resolves only steps of 0.5), which float64 output times fix.
    """
    if dtype == torch.float64:
        return ""
    return (
        f"t is {str(dtype).removeprefix('torch.')}, which resolves steps only down to "
        f"{resolution(t, dtype):.3g} at t={t:.6g}: if the solution is smooth there, pass ts "
        "as float64 (the state keeps its own dtype) or shift time to start near 0"
    )


def landing(tau_stop: Any, dtype: torch.dtype) -> Any:
    """The earliest end of a step that :func:`step_to` stretches onto ``tau_stop``.

    A step ending closer to the stop than twice the clock's resolution there would leave a
    remainder the clock cannot step (:func:`resolution`, taken at the remainder's start,
    which is at most that far from the stop): such a step lands on the stop instead.
    """
    return tau_stop - 2 * resolution(tau_stop, dtype)


def step_to(tau: Any, dt: Any, tau_stop: Any, tau_land: Any, dtype: torch.dtype) -> Any:
    """The step of proposed size ``dt`` from ``tau``: ``(tau1, dt1, lost)``.

    ``tau1`` is ``tau + dt``, or exactly ``tau_stop`` when the step reaches
    ``tau_land`` (see :func:`landing`); a step is stretched by a hair (1e-10 relative) or
    by at most two resolutions rather than leave a sliver. Without the resolution term a
    float32 clock ended one step short of ``t1`` about once in 10^5 samples, 4e-7 short at
    ``t1 = 5``, and that remainder failed as an underflow. Diffrax clips to the end for
    the same reason, within an absolute 1e-10 (float64) or 1e-6 (otherwise); relative to
    ``t``, as here, the margin also holds far from 0 (at 1e6 a float32 ulp is 0.06).
    ``dt1 = tau1 - tau``.

    ``lost``: the step is below the clock's resolution and the proposal does not reach
    the stop (the step size has collapsed). A proposal that reaches the stop is never
    lost, however short the step: it moves the clock onto a time it can hold (a tiny
    interval is one such step).

    Python floats in the joint loop, ``(B,)`` tensors per-sample: one rule for both.
    """
    reach = tau + dt * (1 + 1e-10)
    tau1 = _arith.where(reach >= tau_land, tau_stop, tau + dt)
    dt1 = tau1 - tau
    return tau1, dt1, (dt1 <= resolution(tau, dtype)) & (reach < tau_stop)


def _next_float(t: float, toward: float, dtype: torch.dtype) -> float:
    """The neighbour of ``t`` towards ``toward`` as the vector field sees time (``dtype``)."""
    here = torch.tensor(t, dtype=dtype)
    return float(torch.nextafter(here, torch.tensor(toward, dtype=dtype)))


def _forced_stops(controller: AbstractController, problem: Problem) -> tuple[list[float], set]:
    step_ts, jump_ts = controller.stops()
    lo, hi = problem.taus[0], problem.taus[-1]
    d = problem.direction
    jumps = {d * t for t in jump_ts if lo < d * t < hi}
    stops = sorted({d * t for t in step_ts if lo < d * t < hi} | jumps)
    return stops, jumps


def integrate(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    *,
    max_steps: int,
    dense: bool = False,
    records: list[Any] | None = None,
) -> RawSolution:
    """Solve ``problem`` and return the outputs at ``problem.taus``.

    When ``records`` is a list, every accepted step is appended to it (see
    :func:`replay_step`). A per-sample problem runs the per-sample form of this loop
    (:func:`neuralode._sample_loop.integrate_samples`, which records ``RowsRecord``s).
    """
    if problem.batched:
        from ._sample_loop import integrate_samples  # the per-sample loop imports this one

        if dense:
            raise ValueError(
                "dense=True is not available in per-sample mode (batch_dims=1): each sample "
                "has its own steps; pass the times you need in ts (shape (B, T)) instead"
            )
        return integrate_samples(problem, solver, controller, max_steps=max_steps, records=records)
    f, d, taus = problem.f, problem.direction, problem.taus
    tau, y, f0 = taus[0], problem.y0, problem.f0
    tau_end = taus[-1]
    stats = Stats()
    outputs = [y.unsqueeze(0)]  # ts[0] is t0: the first output is y0 itself
    n_out = 1
    stops, jumps = _forced_stops(controller, problem)
    rtol, atol = controller.tolerances()
    dense_out = DenseInterpolation(solver, d, problem.structure.unflatten) if dense else None
    hermite = needs_f1(solver)
    status, detail, nonfinite_streak = Status.SUCCESS, "", 0
    t_dtype = problem.ts.dtype
    t_f0 = d * tau

    dt = 0.0
    if n_out < len(taus) and not bool(torch.isfinite(f0).all()):
        # Nothing a smaller step can fix: fail before choosing a (NaN) first step.
        stats.nfe = f.nfe
        return RawSolution(
            ys=_assemble(outputs, len(taus)),
            stats=stats,
            status=Status.NONFINITE,
            t_last=d * tau,
            y_last=y,
            dt_last=0.0,
            detail="f(t0, y0) itself is not finite",
        )
    if n_out < len(taus):
        start = SolveStart(
            solver=solver,
            f=f,
            t0=d * tau,
            y0=y,
            f0=f0,
            tau0=tau,
            tau_end=tau_end,
            direction=d,
            rtol=_flat_tolerance(rtol, problem),
            atol=_flat_tolerance(atol, problem),
        )
        dt, cstate = controller.init(start)
    while n_out < len(taus):
        if stats.steps >= max_steps:
            status = Status.MAX_STEPS
            break
        # The controller's proposal, not a step cut short to land on a stop, is what must
        # respect dt_min (with slack for dt having been recomputed as t1 - t0).
        underflow = dt < controller.min_step() * (1 - 1e-9)
        i_stop = bisect.bisect_right(stops, tau)
        tau_stop = stops[i_stop] if i_stop < len(stops) else tau_end
        # Land exactly on the next stop rather than leave a sliver.
        tau1, dt, lost = step_to(tau, dt, tau_stop, landing(tau_stop, t_dtype), t_dtype)
        if underflow or lost:
            status = Status.NONFINITE if nonfinite_streak else Status.DT_MIN
            if not (underflow or nonfinite_streak):
                detail = coarse_clock(d * tau, t_dtype)
            break
        # A step that ends on a jump of f evaluates its end stages just before the jump
        # (the left limit), as torchdiffeq does; the step after restarts just past it.
        t1_stage = None
        if tau1 in jumps:
            t1_stage = _next_float(d * tau1, d * tau, t_dtype)
        step = solver.step(f, d * tau, y, f0, d * dt, t1_stage)
        stats.steps += 1
        decision = controller.decide(tau, dt, y, step, cstate)
        cstate = decision.state
        if not decision.accept:
            stats.rejected += 1
            nonfinite_streak = nonfinite_streak + 1 if decision.nonfinite else 0
            failure = _hopeless(decision, controller, nonfinite_streak, f0)
            if failure:
                status, detail = Status.NONFINITE, failure
                break
            dt = decision.dt_next
            continue
        nonfinite_streak = 0
        stats.accepted += 1
        f1 = step.f1
        n_out_before = n_out
        n_next = bisect.bisect_right(taus, tau1, lo=n_out)
        if n_next > n_out:
            # Hermite needs f(t1, y1) only for outputs strictly inside the step.
            if hermite and f1 is None and taus[n_out] < tau1:
                f1 = f(d * tau1, step.y1)
            outputs.append(_outputs_in_step(solver, taus, n_out, n_next, tau, dt, d, y, step, f1))
            n_out = n_next
        if dense_out is not None:
            if hermite and f1 is None:
                f1 = f(d * tau1, step.y1)
            dense_out.add(tau, d * dt, y, step.k, f1)
        if records is not None:
            records.append(StepRecord(tau, dt, y, t_f0, t1_stage, n_out_before, n_out))
        tau, y, t_f0 = tau1, step.y1, d * tau1
        if n_out < len(taus):
            if tau in jumps:
                # f jumps here: the FSAL stage is the left limit; restart from the right one.
                t_f0 = _next_float(d * tau, d * tau_end, t_dtype)
                f1 = f(t_f0, y)
            elif f1 is None:
                f1 = f(d * tau, y)
        f0 = f1 if f1 is not None else f0
        dt = decision.dt_next
    stats.nfe = f.nfe
    ys = _assemble(outputs, len(taus))
    return RawSolution(
        ys=ys,
        stats=stats,
        status=status,
        t_last=d * tau,
        y_last=y,
        dt_last=d * dt,
        detail=detail,
        dense=dense_out,
    )


def _hopeless(
    decision: Decision, controller: AbstractController, nonfinite_streak: int, f0: torch.Tensor
) -> str | None:
    """Why retrying a non-finite step with a smaller dt cannot help, or ``None``."""
    if not decision.nonfinite:
        return None
    if not controller.adaptive:
        return _FIXED_STEP_NAN
    if nonfinite_streak >= _MAX_NONFINITE_STREAK:
        return f"{nonfinite_streak} shrunken retries in a row were non-finite"
    if nonfinite_streak == 1 and not bool(torch.isfinite(f0).all()):
        return "f(t, y) itself is not finite at the start of the step"
    return None


def replay_step(
    problem: Problem, solver: AbstractSolver, record: StepRecord, y0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Recompute an accepted step from ``y0`` exactly as :func:`integrate` took it.

    Returns ``y1`` and the outputs the step produced (``None`` if none), both as functions
    of ``y0`` (and of the vector field's parameters) for autograd.
    """
    f, d = problem.f, problem.direction
    f0 = f(record.t_f0, y0)
    step = solver.step(f, d * record.tau0, y0, f0, d * record.dt, record.t1_stage)
    if record.i1 == record.i0:
        return step.y1, None
    f1 = step.f1
    tau1 = record.tau0 + record.dt
    if needs_f1(solver) and f1 is None and problem.taus[record.i0] < tau1:
        f1 = f(d * tau1, step.y1)
    outputs = _outputs_in_step(
        solver, problem.taus, record.i0, record.i1, record.tau0, record.dt, d, y0, step, f1
    )
    return step.y1, outputs


def _outputs_in_step(
    solver: AbstractSolver,
    taus: tuple[float, ...],
    n_out: int,
    n_next: int,
    tau0: float,
    dt: float,
    d: float,
    y0: torch.Tensor,
    step: StepResult,
    f1: torch.Tensor | None,
) -> torch.Tensor:
    """Outputs ``taus[n_out:n_next]`` (all inside ``(tau0, tau0 + dt]``), shape ``(m, N)``."""
    tau1 = tau0 + dt
    inner = [(t - tau0) / dt for t in taus[n_out:n_next] if t < tau1]
    n_end = (n_next - n_out) - len(inner)  # outputs exactly at the step end: y1 itself
    parts = []
    if inner:
        parts.append(interpolate_step(solver, y0, step.k, f1, d * dt, inner))
    if n_end:
        parts.append(step.y1.unsqueeze(0).expand(n_end, *step.y1.shape))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _assemble(outputs: list[torch.Tensor], n: int) -> torch.Tensor:
    ys = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    missing = n - ys.shape[0]
    if missing:
        # Never uninitialised memory: outputs the solve did not reach are NaN.
        nan = torch.full((missing, *ys.shape[1:]), math.nan, dtype=ys.dtype, device=ys.device)
        ys = torch.cat([ys, nan])
    return ys


def _flat_tolerance(value: object, problem: Problem) -> torch.Tensor | float:
    """A tolerance as a float, or as a tensor laid out like the solver's state.

    Per-component tolerances give one tensor per state part, broadcast to that part's shape
    (with the sample dimension in front in per-sample mode, so a ``(B, 1)`` tensor gives
    each sample its own tolerance), then flattened exactly as the state is.
    """
    if isinstance(value, (int, float)):
        return float(value)
    parts = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    structure = problem.structure
    if len(parts) != len(structure.shapes):
        raise ValueError(
            f"a per-component tolerance needs one tensor per state part "
            f"({len(structure.shapes)}), got {len(parts)}"
        )
    lead = (problem.y0.shape[0],) if structure.batched else ()
    full = tuple(
        _broadcast_tolerance(p, torch.Size((*lead, *s)))
        for p, s in zip(parts, structure.shapes, strict=True)
    )
    # Real even for a complex state: the scale atol + rtol·|y| is real (y.real: y if real).
    y0 = problem.y0
    return structure.flatten(full if structure.is_tuple else full[0]).to(y0.device, y0.real.dtype)


def _broadcast_tolerance(part: object, shape: torch.Size) -> torch.Tensor:
    value = part if isinstance(part, torch.Tensor) else torch.tensor(float(part))  # type: ignore[arg-type]
    try:
        return torch.broadcast_to(value, shape)
    except RuntimeError as err:
        raise ValueError(
            f"a tolerance tensor of shape {tuple(value.shape)} does not broadcast to the "
            f"state shape {tuple(shape)}; give a float or a tensor of the state's shape"
        ) from err
