"""integrate_samples(): the step loop in per-sample mode.

The same algorithm as :func:`neuralode._loop.integrate` (step → controller decides →
interpolate the outputs inside accepted steps → statistics), run on a batch of independent
problems with the clock, step size, error norm, accept/reject decision, controller
history, output times and status held per sample as ``(B,)`` tensors. Why a second loop
body rather than tensor time in the first: the joint loop keeps its clock as Python
floats so that a step costs one host sync and no tensor arithmetic on time, which is most
of a small neural ODE's solver overhead; tensor time there would slow the default path.

Samples that finish (or fail) leave the batch: every per-sample tensor is compacted, so
the vector field is only evaluated on the samples still running and the total work is the
sum of each sample's own steps, not batch size × the slowest sample. This needs a vector
field whose rows are independent (no batch norm, no mixing across samples): the caller
declares that by asking for the per-sample mode.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ._loop import _MAX_NONFINITE_STREAK, RawSolution, _broadcast_tolerance
from ._problem import Problem
from ._solution import Stats, Status
from ._vector_field import VectorField
from .controllers import AbstractController, SolveStart
from .interpolation import interpolate_rows, needs_f1
from .solvers._explicit_rk import AbstractSolver, StepResult

# Drop finished samples from the batch (the point of the mode). Off only in the test that
# proves compaction changes no number: finished samples are then frozen in place.
COMPACT = True
# Finished samples stay in the batch, frozen, until they are this share of it: compacting
# costs an index_select per per-sample tensor, and with samples finishing a few at a time
# compacting at every step measured a visible share of a small problem's wall time. The
# frozen rows are then at most this share of the rows evaluated.
COMPACT_SHARE = 0.1

# Why a sample stopped: 0 = still running or succeeded.
_ENDINGS: dict[int, tuple[Status, str]] = {
    1: (Status.MAX_STEPS, ""),
    2: (Status.DT_MIN, ""),
    3: (Status.NONFINITE, "the step size underflowed while retrying non-finite steps"),
    4: (Status.NONFINITE, "f(t0, y0) itself is not finite"),
    5: (Status.NONFINITE, f"{_MAX_NONFINITE_STREAK} shrunken retries in a row were non-finite"),
    6: (Status.NONFINITE, "f(t, y) itself is not finite at the start of the step"),
}


@dataclass
class _Rows:
    """Loop state of the samples still in the batch, one row each (compacted together).

    Attributes:
        idx: Position of each row in the caller's batch, ``(A,)``.
        tau: Forward time reached, float64 ``(A,)``.
        dt: Next step to attempt (forward time, positive), float64 ``(A,)``.
        y: State at ``tau``, ``(A, N)``.
        f0: ``f(tau, y)``, ``(A, N)``.
        taus: Output times in forward time, float64 ``(A, T)``.
        n_out: Outputs written so far (those at or before ``tau``), ``(A,)``.
        streak: Non-finite rejections in a row, ``(A,)``.
        steps: Steps attempted, ``(A,)``.
        accepted: Steps accepted, ``(A,)``.
        live: Still stepping; ``False`` for finished rows not yet compacted away.
        cstate: The controller's state; its tensors with a leading dim are per-row.
        n_live: Number of live rows (host-side, from the step's one sync).
    """

    idx: torch.Tensor
    tau: torch.Tensor
    dt: torch.Tensor
    y: torch.Tensor
    f0: torch.Tensor
    taus: torch.Tensor
    n_out: torch.Tensor
    streak: torch.Tensor
    steps: torch.Tensor
    accepted: torch.Tensor
    live: torch.Tensor
    cstate: Any = ()
    n_live: int = 0

    def take(self, keep: torch.Tensor, n_live: int) -> _Rows:
        """The rows at positions ``keep`` (``n_live`` of them live)."""
        picked = {
            f.name: getattr(self, f.name).index_select(0, keep)
            for f in dataclasses.fields(self)
            if f.name not in ("cstate", "n_live")
        }
        cstate = tuple(_take(x, keep) for x in self.cstate)
        return _Rows(**picked, cstate=cstate, n_live=n_live)


def _take(x: Any, keep: torch.Tensor) -> Any:
    return x.index_select(0, keep) if isinstance(x, torch.Tensor) and x.ndim else x


@dataclass(frozen=True)
class RowsRecord:
    """The accepted rows of one batched step, enough to replay them (checkpointing).

    Attributes:
        idx: Batch positions of the accepted rows, ``(a,)``.
        tau0: Their start times (forward), ``(a,)``.
        dt: Their step sizes (forward), ``(a,)``.
        y0: Their states at the start, ``(a, N)``.
        n_out: Index of the first output each produced, ``(a,)``.
        count: Number of outputs each produced, ``(a,)``.
        width: ``max(count)``, the output window of the step.
    """

    idx: torch.Tensor
    tau0: torch.Tensor
    dt: torch.Tensor
    y0: torch.Tensor
    n_out: torch.Tensor
    count: torch.Tensor
    width: int


class _Collector:
    """Scattered ``(position, value)`` rows assembled once at the end.

    Writes go to a list and are placed with one out-of-place ``index_put``, so autograd
    sees one op instead of an in-place write per step. Position ``size`` is a scratch row
    that absorbs the padding of output windows.
    """

    def __init__(self, size: int, fill: float) -> None:
        self.size, self.fill = size, fill
        self.pos: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def add(self, pos: torch.Tensor, values: torch.Tensor) -> None:
        self.pos.append(pos.reshape(-1))
        self.values.append(values.reshape(pos.numel(), -1))

    def assemble(self, like: torch.Tensor) -> torch.Tensor:
        values = torch.cat(self.values)
        shape = (self.size + 1, values.shape[-1])
        base = torch.full(shape, self.fill, dtype=like.dtype, device=like.device)
        out = base.index_put((torch.cat(self.pos),), values)
        return out[: self.size]


@dataclass
class _Ended:
    """What each sample left behind when it left the batch, ``(B, ...)``."""

    code: torch.Tensor
    t_last: torch.Tensor
    steps: torch.Tensor
    accepted: torch.Tensor
    y_last: _Collector

    def add(self, rows: _Rows, code: torch.Tensor, direction: float) -> None:
        self.code[rows.idx] = code
        self.t_last[rows.idx] = direction * rows.tau
        self.steps[rows.idx] = rows.steps
        self.accepted[rows.idx] = rows.accepted
        self.y_last.add(rows.idx, rows.y)


def integrate_samples(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    *,
    max_steps: int,
    records: list[RowsRecord] | None = None,
) -> RawSolution:
    """Solve every sample of a per-sample ``problem`` with its own steps.

    ``max_steps`` is each sample's budget. ``records``, when a list, receives the accepted
    rows of every step (see :func:`replay_rows`).
    """
    taus = problem.sample_taus
    assert taus is not None  # integrate() dispatches only per-sample problems here
    batch, n_times = taus.shape
    y0, device = problem.y0, problem.y0.device
    outputs = _Collector(n_times * batch, math.nan)
    index = torch.arange(batch, device=device)
    outputs.add(index, y0)  # ts[:, 0] is each sample's t0: the first output is y0 itself
    zeros = torch.zeros(batch, dtype=torch.long, device=device)
    ended = _Ended(
        zeros.clone(),
        taus[:, 0] * problem.direction,
        zeros.clone(),
        zeros.clone(),
        _Collector(batch, 0.0),
    )
    # Fresh, unaliased tensors (clones, not views of the caller's): every later step sees
    # the same kind of inputs, so a compiled step is not recompiled for the first one.
    rows = _Rows(
        index,
        taus[:, 0].clone(),
        torch.zeros_like(taus[:, 0]),
        y0.clone(),
        problem.f0.clone(),
        taus.clone(),
        torch.ones_like(zeros),
        zeros.clone(),
        zeros.clone(),
        zeros.clone(),
        torch.ones_like(zeros, dtype=torch.bool),
        n_live=batch,
    )
    problem.f.select(None)
    if n_times > 1:
        rows = _start(problem, solver, controller, rows, ended)
        while rows.n_live:
            rows = _advance(problem, solver, controller, rows, ended, outputs, max_steps, records)
    else:
        ended.add(rows, zeros, problem.direction)
    problem.f.select(None)
    return _result(problem, outputs, ended)


def _start(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: _Rows,
    ended: _Ended,
) -> _Rows:
    """First step sizes; samples whose ``f(t0, y0)`` is not finite fail at once."""
    d = problem.direction
    rtol, atol = controller.tolerances()
    start = SolveStart(
        solver=solver,
        f=problem.f,
        t0=d * rows.tau,
        y0=rows.y,
        f0=rows.f0,
        tau0=rows.tau,
        tau_end=rows.taus[:, -1],
        direction=d,
        rtol=_rows_tolerance(rtol, problem),
        atol=_rows_tolerance(atol, problem),
    )
    rows.dt, rows.cstate = controller.init_rows(start)
    bad = ~torch.isfinite(rows.f0).all(dim=-1)
    n_bad = int(bad.sum())
    if n_bad:
        rows = _retire(rows, bad, torch.where(bad, 4, 0), n_bad, ended, d)
        rows, _ = _compact(problem, rows)
    return rows


class _Attempt(NamedTuple):
    """One batched step attempt, before the host looks at it (see :func:`_attempt`)."""

    tau0: torch.Tensor
    dt: torch.Tensor
    tau_new: torch.Tensor
    y_new: torch.Tensor
    dt_next: torch.Tensor
    cstate: Any
    n_next: torch.Tensor
    streak: torch.Tensor
    go: torch.Tensor
    accept: torch.Tensor
    code: torch.Tensor
    count: torch.Tensor
    leaving: torch.Tensor
    y1: torch.Tensor
    k: tuple[torch.Tensor, ...]
    f1: torch.Tensor | None
    summary: torch.Tensor


def _attempt(
    f: VectorField,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: _Rows,
    max_steps: int,
    direction: float,
) -> _Attempt:
    """Every live row attempts its own step and is judged alone: tensors only, no sync.

    This is the part of a step that ``torch.compile`` captures as one graph (vector
    field included) when the solve asks for it.
    """
    tau, y, tau_end = rows.tau, rows.y, rows.taus[:, -1]
    # As in the joint loop: the controller's proposal must respect dt_min; the step then
    # lands exactly on the sample's last time, stretched by a hair rather than leave a sliver.
    tau1 = torch.where(tau + rows.dt * (1 + 1e-10) >= tau_end, tau_end, tau + rows.dt)
    dt = tau1 - tau
    t_info = torch.finfo(f.t_dtype)
    underflow = dt <= 4 * t_info.eps * torch.clamp(tau.abs(), min=t_info.tiny)
    if controller.min_step():
        underflow |= rows.dt < controller.min_step() * (1 - 1e-9)
    code = torch.where(underflow, torch.where(rows.streak > 0, 3, 2), 0)
    code = torch.where(rows.live, torch.where(rows.steps >= max_steps, 1, code), 0)
    go = rows.live & (code == 0)
    step = solver.step(f, direction * tau, y, rows.f0, direction * dt)
    decision = controller.decide_rows(tau, dt, y, step, rows.cstate)
    accept = decision.accept & go
    nonfinite = decision.nonfinite & go
    streak = torch.where(go, torch.where(nonfinite, rows.streak + 1, 0), rows.streak)
    f0_bad = ~torch.isfinite(rows.f0).all(dim=-1)
    code = torch.where(nonfinite & (streak == 1) & f0_bad, 6, code)
    code = torch.where(nonfinite & (streak >= _MAX_NONFINITE_STREAK), 5, code)
    tau_new = torch.where(accept, tau1, tau)
    n_next = torch.searchsorted(rows.taus, tau_new.unsqueeze(-1), right=True).squeeze(-1)
    count = n_next - rows.n_out
    leaving = (go & (n_next == rows.taus.shape[1])) | (code != 0)
    summary = torch.stack([count.max(), leaving.sum(), accept.sum()])
    return _Attempt(
        tau0=tau,
        dt=dt,
        tau_new=tau_new,
        y_new=torch.where(accept.unsqueeze(-1), step.y1, y),
        dt_next=decision.dt_next,
        cstate=decision.state,
        n_next=n_next,
        streak=streak,
        go=go,
        accept=accept,
        code=code,
        count=count,
        leaving=leaving,
        y1=step.y1,
        k=step.k,
        f1=step.f1,
        summary=summary,
    )


def _advance(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: _Rows,
    ended: _Ended,
    outputs: _Collector,
    max_steps: int,
    records: list[RowsRecord] | None,
) -> _Rows:
    """One batched step: attempt, then outputs, retirements and the next ``f0``."""
    f, d = problem.f, problem.direction
    if problem.compiled:
        attempt = _compiled_step(f, solver, controller, rows, max_steps, d)
    else:
        attempt = _attempt(f, solver, controller, rows, max_steps, d)
    # The one host sync of the step: the output window, and whether the batch shrinks.
    width, n_leaving, n_accepted = attempt.summary.tolist()
    accept, tau, dt, count = attempt.accept, attempt.tau0, attempt.dt, attempt.count
    if records is not None and n_accepted:
        records.append(_record(rows, accept, tau, dt, count, width))
    f1 = attempt.f1
    if width:
        if f1 is None and needs_f1(solver):
            f1 = f(d * attempt.tau_new, attempt.y_new)
        window = _Window(rows.idx, rows.taus, rows.n_out, count, width)
        step = StepResult(attempt.y1, None, attempt.f1, attempt.k)
        values, pos = _outputs(problem, solver, window, rows.y, tau, dt, step, f1)
        outputs.add(pos, values)
    rows = dataclasses.replace(
        rows,
        tau=attempt.tau_new,
        dt=attempt.dt_next,
        y=attempt.y_new,
        n_out=attempt.n_next,
        streak=attempt.streak,
        steps=rows.steps + attempt.go,
        accepted=rows.accepted + accept,
        cstate=attempt.cstate,
    )
    if n_leaving:
        rows = _retire(rows, attempt.leaving, attempt.code, n_leaving, ended, d)
        if rows.idx.numel() - rows.n_live > COMPACT_SHARE * rows.idx.numel():
            rows, keep = _compact(problem, rows)
            if keep is not None:
                accept = accept.index_select(0, keep)
                f1 = None if f1 is None else f1.index_select(0, keep)
    if n_accepted and rows.n_live:
        if f1 is None:
            f1 = f(d * rows.tau, rows.y)
        rows.f0 = torch.where(accept.unsqueeze(-1), f1, rows.f0)
    return rows


# torch.compile backend of the compiled step; the tests switch it to "eager" (dynamo's
# tracing, no code generation) to check for graph breaks in seconds.
COMPILE_BACKEND = "inductor"


@functools.cache
def _compiled_attempt(backend: str) -> Any:
    # Compiled once per process: dynamo keys its cache on the function's code and guards
    # on the vector field, solver and controller, so a training loop that keeps calling
    # the same model reuses the graph. The batch dimension is dynamic from the start, as
    # compaction shrinks it every few steps; a batch of one sample is its own graph
    # (dynamo specialises sizes 0 and 1).
    return torch.compile(_attempt, fullgraph=True, dynamic=True, backend=backend)


def _compiled_step(
    f: VectorField,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: _Rows,
    max_steps: int,
    direction: float,
) -> _Attempt:
    f.counting = False
    try:
        attempt = _compiled_attempt(COMPILE_BACKEND)(
            f, solver, controller, rows, max_steps, direction
        )
    finally:
        f.counting = True
    evaluations = len(attempt.k) - 1  # every stage after k[0] = f0 is one call of f
    f.nfe += evaluations
    f.rows += evaluations * rows.y.shape[0]
    return attempt


def _retire(
    rows: _Rows,
    leaving: torch.Tensor,
    code: torch.Tensor,
    n_leaving: int,
    ended: _Ended,
    direction: float,
) -> _Rows:
    """Record the ``n_leaving`` rows in ``leaving`` as ended, and freeze them."""
    out = leaving.nonzero().squeeze(-1)
    ended.add(rows.take(out, 0), code.index_select(0, out), direction)
    return dataclasses.replace(rows, live=rows.live & ~leaving, n_live=rows.n_live - n_leaving)


def _compact(problem: Problem, rows: _Rows) -> tuple[_Rows, torch.Tensor | None]:
    """Drop the frozen rows (unless compaction is off); also return the kept positions."""
    if not COMPACT or not rows.n_live:
        return rows, None
    keep = rows.live.nonzero().squeeze(-1)
    rows = rows.take(keep, rows.n_live)
    problem.f.select(rows.idx)
    return rows, keep


@dataclass(frozen=True)
class _Window:
    """Which outputs a batched step produced: ``count[a]`` from ``n_out[a]`` on, per row.

    Attributes:
        idx: Batch positions of the rows, ``(A,)``.
        taus: Their output times (forward), ``(A, T)``.
        n_out: First output index of each row's step, ``(A,)``.
        count: Outputs inside each row's step, ``(A,)``.
        width: ``max(count)``.
    """

    idx: torch.Tensor
    taus: torch.Tensor
    n_out: torch.Tensor
    count: torch.Tensor
    width: int


def _outputs(
    problem: Problem,
    solver: AbstractSolver,
    window: _Window,
    y0: torch.Tensor,
    tau0: torch.Tensor,
    dt: torch.Tensor,
    step: StepResult,
    f1: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs each row's step produced, ``width`` slots per row.

    Returns values ``(A, width, N)`` and their flat positions ``(A, width)`` in the
    ``(T, B)`` output grid; padding goes to the scratch position ``T * B``.
    """
    batch, n_times = problem.y0.shape[0], window.taus.shape[1]
    slots = torch.arange(window.width, device=y0.device)
    j = window.n_out.unsqueeze(-1) + slots  # (A, width)
    valid = slots < window.count.unsqueeze(-1)
    t_out = window.taus.gather(1, j.clamp(max=n_times - 1))
    theta = torch.where(valid, (t_out - tau0.unsqueeze(-1)) / dt.unsqueeze(-1), 0.0)
    values = interpolate_rows(solver, y0, step.k, f1, problem.direction * dt, theta)
    # Outputs exactly at the step end are y1 itself, as in the joint loop.
    at_end = (t_out >= (tau0 + dt).unsqueeze(-1)).unsqueeze(-1)
    values = torch.where(at_end, step.y1.unsqueeze(1), values)
    pos = torch.where(valid, j * batch + window.idx.unsqueeze(-1), n_times * batch)
    return values, pos


def _record(
    rows: _Rows,
    accept: torch.Tensor,
    tau0: torch.Tensor,
    dt: torch.Tensor,
    count: torch.Tensor,
    width: int,
) -> RowsRecord:
    a = accept.nonzero().squeeze(-1)
    return RowsRecord(
        idx=rows.idx[a],
        tau0=tau0[a],
        dt=dt[a],
        y0=rows.y[a],
        n_out=rows.n_out[a],
        count=count[a],
        width=width,
    )


def replay_rows(
    problem: Problem, solver: AbstractSolver, record: RowsRecord, y0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Recompute a record's steps from ``y0`` exactly as :func:`integrate_samples` did.

    Returns ``y1`` and the outputs with their flat positions (``None`` if none), as
    functions of ``y0`` (and of the vector field's parameters) for autograd.
    """
    f, d = problem.f, problem.direction
    f.select(record.idx)
    f0 = f(d * record.tau0, y0)
    step = solver.step(f, d * record.tau0, y0, f0, d * record.dt)
    if not record.width:
        return step.y1, None, None
    f1 = step.f1
    if f1 is None and needs_f1(solver):
        f1 = f(d * (record.tau0 + record.dt), step.y1)
    taus = problem.sample_taus
    assert taus is not None
    window = _Window(
        record.idx, taus.index_select(0, record.idx), record.n_out, record.count, record.width
    )
    values, pos = _outputs(problem, solver, window, y0, record.tau0, record.dt, step, f1)
    return step.y1, values, pos


def _result(problem: Problem, outputs: _Collector, ended: _Ended) -> RawSolution:
    batch, n_times = problem.sample_taus.shape  # type: ignore[union-attr]
    codes = ended.code.tolist()
    sample_status = tuple(_ENDINGS[c][0] if c else Status.SUCCESS for c in codes)
    failed = [i for i, c in enumerate(codes) if c]
    status, detail = Status.SUCCESS, ""
    if failed:
        status, detail = _ENDINGS[codes[failed[0]]]
        shown = str(failed[:10])[:-1] + (", ...]" if len(failed) > 10 else "]")
        detail = f"{len(failed)} of {batch} samples failed (samples {shown})" + (
            f"; sample {failed[0]}: {detail}" if detail else ""
        )
    steps, accepted = int(ended.steps.sum()), int(ended.accepted.sum())
    stats = Stats(
        steps=steps,
        accepted=accepted,
        rejected=steps - accepted,
        nfe=problem.f.nfe,
        rows=problem.f.rows,
        sample_steps=ended.steps,
        sample_accepted=ended.accepted,
    )
    ys = outputs.assemble(problem.y0).view(n_times, batch, -1)
    return RawSolution(
        ys=ys,
        stats=stats,
        status=status,
        t_last=ended.t_last.to(problem.ts.dtype),
        y_last=ended.y_last.assemble(problem.y0),
        dt_last=math.nan,
        detail=detail,
        sample_status=sample_status,
    )


def _rows_tolerance(value: Any, problem: Problem) -> torch.Tensor | float:
    """A tolerance as a float or as a ``(B, N)`` tensor (per-component, or per-sample)."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    shapes = problem.structure.shapes
    if len(parts) != len(shapes):
        raise ValueError(
            f"a per-component tolerance needs one tensor per state part ({len(shapes)}), "
            f"got {len(parts)}"
        )
    batch = problem.y0.shape[0]
    full = [
        _broadcast_tolerance(p, torch.Size((batch, *s))) for p, s in zip(parts, shapes, strict=True)
    ]
    flat = problem.structure.flatten(full[0] if len(full) == 1 else tuple(full))
    return flat.to(problem.y0)
