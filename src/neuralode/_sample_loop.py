"""integrate_samples(): the step loop in per-sample mode.

The same algorithm as :func:`neuralode._loop.integrate` (step → controller decides →
interpolate the outputs inside accepted steps → statistics), run on a batch of independent
problems with the clock, step size, error norm, accept/reject decision, controller
history, output times and status held per sample as ``(B,)`` tensors. Why a second loop
body rather than tensor time in the first: the joint loop keeps its clock as Python
floats so that a step costs one host sync and no tensor arithmetic on time, which is most
of a small neural ODE's solver overhead; tensor time there would slow the default path.

Samples that finish (or fail) leave the batch: every per-sample tensor is compacted (once
the finished ones are COMPACT_SHARE of the batch), so the vector field is evaluated on the
samples still running and the total work tracks the sum of each sample's own steps, not
batch size × the slowest sample. This needs a vector
field whose rows are independent (no batch norm, no mixing across samples): the caller
declares that by asking for the per-sample mode.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import torch

from ._loop import _MAX_NONFINITE_STREAK, RawSolution, _flat_tolerance
from ._problem import Problem
from ._sample_rows import (
    Collector,
    Ended,
    Rows,
    RowsRecord,
    Window,
    record_rows,
    step_outputs,
)
from ._solution import Stats, Status
from ._vector_field import VectorField
from .controllers import AbstractController, SolveStart
from .interpolation import needs_f1
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
    outputs = Collector(n_times * batch, math.nan)
    index = torch.arange(batch, device=device)
    outputs.add(index, y0)  # ts[:, 0] is each sample's t0: the first output is y0 itself
    zeros = torch.zeros(batch, dtype=torch.long, device=device)
    ended = Ended(
        zeros.clone(),
        taus[:, 0] * problem.direction,
        zeros.clone(),
        zeros.clone(),
        Collector(batch, 0.0),
    )
    # Fresh, unaliased tensors (clones, not views of the caller's): every later step sees
    # the same kind of inputs, so a compiled step is not recompiled for the first one.
    rows = Rows(
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
    rows: Rows,
    ended: Ended,
) -> Rows:
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
        rtol=_flat_tolerance(rtol, problem),
        atol=_flat_tolerance(atol, problem),
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
    n_outputs: torch.Tensor
    leaving: torch.Tensor
    y1: torch.Tensor
    k: tuple[torch.Tensor, ...]
    f1: torch.Tensor | None
    summary: torch.Tensor


def _attempt(
    f: VectorField,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: Rows,
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
    summary = torch.stack([count.sum(), leaving.sum(), accept.sum()])
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
        n_outputs=count,
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
    rows: Rows,
    ended: Ended,
    outputs: Collector,
    max_steps: int,
    records: list[RowsRecord] | None,
) -> Rows:
    """One batched step: attempt, then outputs, retirements and the next ``f0``."""
    f, d = problem.f, problem.direction
    if problem.compiled:
        attempt = _compiled_step(f, solver, controller, rows, max_steps, d)
    else:
        attempt = _attempt(f, solver, controller, rows, max_steps, d)
    # The host sync of the step: the output window, and whether the batch shrinks (steps
    # where samples leave add one more, to find them).
    n_outputs, n_leaving, n_accepted = attempt.summary.tolist()
    accept, tau, dt, count = attempt.accept, attempt.tau0, attempt.dt, attempt.n_outputs
    if records is not None and n_accepted:
        records.append(record_rows(rows, accept, tau, dt, count, n_outputs))
    f1 = attempt.f1
    if n_outputs:
        if f1 is None and needs_f1(solver):
            f1 = f(d * attempt.tau_new, attempt.y_new)
        window = Window(rows.idx, rows.taus, rows.n_out, count, n_outputs)
        step = StepResult(attempt.y1, None, attempt.f1, attempt.k)
        values, pos = step_outputs(problem, solver, window, rows.y, tau, dt, step, f1)
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
    rows: Rows,
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
    rows: Rows,
    leaving: torch.Tensor,
    code: torch.Tensor,
    n_leaving: int,
    ended: Ended,
    direction: float,
) -> Rows:
    """Record the ``n_leaving`` rows in ``leaving`` as ended, and freeze them."""
    out = leaving.nonzero().squeeze(-1)
    ended.add(rows.take(out, 0), code.index_select(0, out), direction)
    return dataclasses.replace(rows, live=rows.live & ~leaving, n_live=rows.n_live - n_leaving)


def _compact(problem: Problem, rows: Rows) -> tuple[Rows, torch.Tensor | None]:
    """Drop the frozen rows (unless compaction is off); also return the kept positions."""
    if not COMPACT or not rows.n_live:
        return rows, None
    keep = rows.live.nonzero().squeeze(-1)
    rows = rows.take(keep, rows.n_live)
    problem.f.select(rows.idx)
    return rows, keep


def _result(problem: Problem, outputs: Collector, ended: Ended) -> RawSolution:
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
