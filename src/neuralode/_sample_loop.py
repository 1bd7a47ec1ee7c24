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

import functools
import math
from typing import Any, NamedTuple

import torch

from ._loop import RawSolution, _flat_tolerance, landing, step_to
from ._problem import Problem
from ._sample_endings import failures, sample_result
from ._sample_rows import (
    Collector,
    Ended,
    PendingOutputs,
    Rows,
    RowsRecord,
    Window,
    record_rows,
    stack_step,
)
from ._vector_field import VectorField
from .controllers import AbstractController, SolveStart
from .interpolation import needs_f1
from .solvers._explicit_rk import AbstractSolver

# Drop finished samples from the batch (the point of the mode). Off only in the test that
# proves compaction changes no number: finished samples are then frozen in place.
COMPACT = True
# Finished samples stay in the batch, frozen, until they are this share of it: compacting
# costs an index_select per per-sample tensor, and with samples finishing a few at a time
# compacting at every step measured a visible share of a small problem's wall time. The
# frozen rows are then at most this share of the rows evaluated.
COMPACT_SHARE = 0.1
# A compiled solve takes this many steps per call of the compiled graph (see _fused).
# Each call costs some 200 µs of dynamo, guard and allocation overhead on the host,
# whatever the batch, which on small states is most of a step's time; unrolling the
# steps in one graph pays it once for all of them. 1 turns fusion off.
FUSED_STEPS = 4


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
        torch.zeros_like(taus[:, 0]),
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
        taus[:, -1].clone(),
        landing(taus[:, -1], problem.f.t_dtype),
        torch.ones_like(zeros),
        zeros.clone(),
        zeros.clone(),
        zeros.clone(),
        torch.ones_like(zeros, dtype=torch.bool),
        zeros.clone(),
        n_live=batch,
    )
    problem.f.select(None)
    pending = PendingOutputs(problem, solver, outputs)
    if n_times > 1:
        rows = _start(problem, solver, controller, rows, ended)
        fusable = problem.compiled and records is None and FUSED_STEPS > 1
        fusable = fusable and not needs_f1(solver) and solver.fsal
        first = {"single": True, "fused": True}  # a graph not yet called in this solve
        # Steps still to take one at a time after fused steps met trouble, and how many
        # to take after the next trouble: doubled while fused calls keep meeting it (a
        # sample creeping up to a singularity), so few fused calls are wasted.
        single, backoff = 0, FUSED_STEPS
        while rows.n_live:
            if fusable and not single:
                fused = _advance_fused(
                    problem, solver, controller, rows, ended, pending, max_steps, first["fused"]
                )
                first["fused"] = False
                if fused is not None:
                    rows, backoff = fused, FUSED_STEPS
                    continue
                single, backoff = backoff, min(2 * backoff, 64 * FUSED_STEPS)
            rows = _advance(
                problem, solver, controller, rows, ended, pending, max_steps, records,
                first["single"],
            )  # fmt: skip
            first["single"] = False
            single = max(single - 1, 0)
    # The rows still in the batch are all finished (frozen), or never started.
    ended.add(rows, None, problem.direction)
    problem.f.select(None)
    pending.flush()
    return sample_result(problem, outputs, ended)


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
    if problem.compiled:
        # The compiled step takes Python numbers as constants (see _compiled_graphs), but
        # a new tolerance should not recompile it: the state's floats go in as tensors.
        rows.cstate = tuple(_as_input(x, rows.tau) for x in rows.cstate)
    bad = ~torch.isfinite(rows.f0).all(dim=-1)
    n_bad = int(bad.sum())
    if n_bad:
        rows.code, rows.live, rows.n_live = bad * 4, ~bad, rows.n_live - n_bad
        rows, _ = _compact(problem, rows, ended)
    return rows


def _as_input(x: Any, like: torch.Tensor) -> Any:
    """A Python float as a 0-d float64 tensor (a graph input, not a constant)."""
    return torch.tensor(x, dtype=torch.float64, device=like.device) if type(x) is float else x


class _Attempt(NamedTuple):
    """One batched step attempt, before the host looks at it (see :func:`_attempt`).

    As few tensors as the host needs: each output of a compiled step costs wrapper time
    at every call, so the step comes as one :func:`stack_step` tensor (what the outputs
    read), and ``f1`` only when it is not the last stage (FSAL: ``f1_is_last``).

    ``rows``: the rows' next state (``f0`` updated only when the solver returns ``f1``);
    ``summary``: ``[outputs, leaving, accepted, trouble]`` row counts, the step's one sync.
    """

    rows: tuple[Any, ...]
    dt: torch.Tensor
    accept: torch.Tensor
    n_outputs: torch.Tensor
    leaving: torch.Tensor
    stacked: torch.Tensor
    f1: torch.Tensor | None
    f1_is_last: bool
    summary: torch.Tensor

    def step_f1(self) -> torch.Tensor | None:
        """The step's ``f(t1, y1)`` if the solver returned it, else ``None``."""
        return self.stacked[:, -2] if self.f1_is_last else self.f1


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
    field and the rows' update included) when the solve asks for it. Why a row stopped
    is worked out on the host, and only at steps where one may have failed
    (:func:`neuralode._sample_endings.failures`): the common step computes no failure code.
    """
    tau, y, dt_proposed = rows.tau, rows.y, rows.dt
    # As in the joint loop: the step lands exactly on the sample's last time rather than
    # leave a sliver, and the controller's proposal must respect dt_min.
    tau1, dt, underflow = step_to(tau, dt_proposed, rows.tau_end, rows.tau_land, f.t_dtype)
    dt_min = controller.min_step()
    if dt_min:
        underflow = underflow | (dt_proposed < dt_min * (1 - 1e-9))
    go = rows.live & ~(underflow | (rows.steps >= max_steps))
    # (direction * x is x itself going forwards: two tensor ops less per step.)
    t0, h = (tau, dt) if direction == 1.0 else (direction * tau, direction * dt)
    step = solver.step(f, t0, y, rows.f0, h)
    decision = controller.decide_rows(tau, dt, y, step, rows.cstate)
    accept = decision.accept & go
    nonfinite = decision.nonfinite & go
    tau_new = torch.where(accept, tau1, tau)
    n_next = torch.searchsorted(rows.taus, tau_new.unsqueeze(-1), right=True).squeeze(-1)
    count = n_next - rows.n_out
    # A row stays if it stepped, finitely, and has outputs left; the others leave, except
    # the non-finite ones still allowed retries, which failures() takes back out. Trouble:
    # rows that may fail (could not step, or were not finite), hence need failures().
    stays = (go ^ nonfinite) & (n_next < rows.taus.shape[1])
    leaving = rows.live ^ stays
    trouble = nonfinite | (rows.live ^ go)
    summary = torch.stack([count, leaving, accept, trouble]).sum(dim=1)
    accepted = accept.unsqueeze(-1)
    f0 = rows.f0 if step.f1 is None else torch.where(accepted, step.f1, rows.f0)
    updated = (
        tau_new,
        decision.dt_next,
        torch.where(accepted, step.y1, y),
        f0,
        n_next,
        (rows.streak + 1) * nonfinite,  # the streak of non-finite retries (of go rows)
        rows.steps + go,
        rows.accepted + accept,
        decision.state,
    )
    f1_is_last = step.f1 is step.k[-1]
    f1 = None if f1_is_last else step.f1
    stacked = stack_step(y, step)
    return _Attempt(updated, dt, accept, count, leaving, stacked, f1, f1_is_last, summary)


def _advance(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: Rows,
    ended: Ended,
    outputs: PendingOutputs,
    max_steps: int,
    records: list[RowsRecord] | None,
    first: bool,
) -> Rows:
    """One batched step (``first`` of the solve?): attempt, outputs, retirements, next ``f0``."""
    f, d = problem.f, problem.direction
    if problem.compiled:
        attempt = _compiled_step(f, solver, controller, rows, max_steps, d, first)
    else:
        attempt = _attempt(f, solver, controller, rows, max_steps, d)
    # The host sync of the step: the output window, and whether the batch shrinks.
    n_outputs, n_leaving, n_accepted, n_trouble = attempt.summary.tolist()
    f1 = attempt.step_f1()
    has_f1 = f1 is not None
    if records is not None and n_accepted:
        window = (rows.tau, attempt.dt, attempt.n_outputs)
        records.append(record_rows(rows, attempt.accept, *window, n_outputs))
    if n_outputs:
        f1 = _outputs(problem, solver, rows, attempt, f1, outputs, n_outputs)
    rows, keep = _next_rows(
        problem, controller, rows, attempt, ended, max_steps, n_leaving, n_trouble
    )
    if not has_f1 and n_accepted and rows.n_live:
        # Without FSAL, the next f0 of the accepted rows is one more call of f.
        accept = attempt.accept
        if keep is not None:
            accept = accept.index_select(0, keep)
            f1 = None if f1 is None else f1.index_select(0, keep)
        if f1 is None:
            f1 = f(d * rows.tau, rows.y)
        rows.f0 = torch.where(accept.unsqueeze(-1), f1, rows.f0)
    return rows


def _outputs(
    problem: Problem,
    solver: AbstractSolver,
    rows: Rows,
    attempt: _Attempt,
    f1: torch.Tensor | None,
    outputs: PendingOutputs,
    n_outputs: int,
) -> torch.Tensor | None:
    """Queue the outputs inside the rows' steps; return ``f1`` (evaluated if Hermite)."""
    if f1 is None and needs_f1(solver):
        f1 = problem.f(problem.direction * attempt.rows[0], attempt.rows[2])
    window = Window(rows.idx, outputs.taus, rows.n_out, attempt.n_outputs, n_outputs)
    outputs.add(window, rows.tau, attempt.dt, attempt.stacked, f1 if needs_f1(solver) else None)
    return f1


def _stepped(rows: Rows, updated: tuple[Any, ...], live: torch.Tensor, n_live: int) -> Rows:
    """``rows`` after a step: its ``updated`` state (see :class:`_Attempt`) and ``live``."""
    tau, dt, y, f0, n_out, streak, steps, accepted, cstate = updated
    return Rows(
        rows.idx, tau, dt, y, f0, rows.taus, rows.tau_end, rows.tau_land, n_out, streak,
        steps, accepted, live, rows.code, cstate, n_live,
    )  # fmt: skip


class _Fused(NamedTuple):
    """:data:`FUSED_STEPS` steps in one graph (see :func:`_fused`), stacked per step.

    ``rows`` and ``live``: the rows' state after the last step; ``tau``, ``n_out``: each
    step's start, ``(K, A)``; ``dt``, ``n_outputs``, ``stacked``: as :class:`_Attempt`'s,
    ``(K, A)``, ``(K, A)``, ``(K, A, s + 2, N)``; ``summary``: each step's
    ``[outputs, leaving, accepted, trouble, live at the start]`` row counts, ``(K, 5)``.
    """

    rows: tuple[Any, ...]
    live: torch.Tensor
    tau: torch.Tensor
    n_out: torch.Tensor
    dt: torch.Tensor
    n_outputs: torch.Tensor
    stacked: torch.Tensor
    summary: torch.Tensor


def _fused(
    f: VectorField,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: Rows,
    max_steps: int,
    direction: float,
    n_steps: int,
) -> _Fused:
    """``n_steps`` of :func:`_attempt` in a row, with no host in between (compiled).

    A row that leaves at one step is frozen (``live`` False) for the next ones, exactly
    as the host freezes it between single steps: it keeps its clock, state and counts.
    What the host does between single steps that these steps cannot do, a failure's
    verdict, is not done here: a step with ``trouble`` rows makes the host discard the
    whole result and take those steps one at a time (:func:`_advance_fused`).
    """
    parts: list[list[torch.Tensor]] = [[], [], [], [], [], []]
    live = rows.live
    for _ in range(n_steps):
        attempt = _attempt(f, solver, controller, rows, max_steps, direction)
        n_live = live.sum().unsqueeze(0)
        summary = torch.cat([attempt.summary, n_live])
        for part, x in zip(parts, (rows.tau, rows.n_out, attempt.dt, attempt.n_outputs,
                                   attempt.stacked, summary), strict=True):  # fmt: skip
            part.append(x)
        live = live ^ attempt.leaving
        rows = _stepped(rows, attempt.rows, live, 0)
    tau, n_out, dt, n_outputs, stacked, summary = (torch.stack(p) for p in parts)
    updated = (rows.tau, rows.dt, rows.y, rows.f0, rows.n_out, rows.streak, rows.steps,
               rows.accepted, rows.cstate)  # fmt: skip
    return _Fused(updated, live, tau, n_out, dt, n_outputs, stacked, summary)


def _advance_fused(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: Rows,
    ended: Ended,
    outputs: PendingOutputs,
    max_steps: int,
    first: bool,
) -> Rows | None:
    """:data:`FUSED_STEPS` batched steps in one compiled call (``first`` in this solve?).

    Returns the rows after them, or ``None`` if some row met trouble (could not step, or
    was not finite) in one of them: nothing is kept then, and the caller takes the steps
    one at a time, where :func:`_next_rows` judges the failures.
    """
    f = problem.f
    fused: _Fused = _call_compiled(
        "fused", first, f, solver, controller, rows, max_steps, problem.direction, FUSED_STEPS
    )
    summary = fused.summary.tolist()  # the call's one host sync
    if any(step[3] for step in summary):
        return None
    # Every stage after k[0] = f0 is one call of f, on every row of the batch. Steps
    # after the last row left are not counted as calls, but their rows are.
    evaluations = fused.stacked.shape[2] - 3
    f.nfe += evaluations * sum(1 for step in summary if step[4])
    f.rows += evaluations * FUSED_STEPS * rows.y.shape[0]
    for k, (n_outputs, *_) in enumerate(summary):
        if n_outputs:
            window = Window(rows.idx, outputs.taus, fused.n_out[k], fused.n_outputs[k], n_outputs)
            outputs.add(window, fused.tau[k], fused.dt[k], fused.stacked[k], None)
    n_live = rows.n_live - sum(step[1] for step in summary)
    new = _stepped(rows, fused.rows, fused.live, n_live)
    if new.idx.numel() - new.n_live > COMPACT_SHARE * new.idx.numel():
        new, _ = _compact(problem, new, ended)
    return new


def _next_rows(
    problem: Problem,
    controller: AbstractController,
    rows: Rows,
    attempt: _Attempt,
    ended: Ended,
    max_steps: int,
    n_leaving: int,
    n_trouble: int,
) -> tuple[Rows, torch.Tensor | None]:
    """The rows after the step: leaving rows frozen, compacted when enough are frozen.

    Also returns the positions kept by a compaction (``None`` when there was none).
    """
    new = _stepped(rows, attempt.rows, rows.live, rows.n_live)
    if not n_leaving:
        return new, None
    leaving = attempt.leaving
    if n_trouble:
        # A live row with steps left that did not step could not: its step underflowed.
        # Read from the step's own count, not recomputed, so the verdict is the one the
        # (possibly compiled) step made.
        streak, stuck = attempt.rows[5], attempt.rows[6] == rows.steps
        dt_min = controller.min_step()
        clock = rows.dt >= dt_min * (1 - 1e-9) if dt_min else torch.ones_like(stuck)
        leaving, code = failures(rows, stuck, clock, streak, attempt.leaving, max_steps)
        n_leaving = int(leaving.sum())
        new.code = torch.where(leaving, code, new.code)
        failed = leaving & (code != 0)
        ended.dt_last[rows.idx[failed]] = problem.direction * attempt.dt[failed]
    # Leaving rows stay in the batch, frozen (live is False), until compaction.
    new.live, new.n_live = new.live ^ leaving, new.n_live - n_leaving
    if new.idx.numel() - new.n_live > COMPACT_SHARE * new.idx.numel():
        return _compact(problem, new, ended)
    return new, None


# torch.compile backend of the compiled step; the tests switch it to "eager" (dynamo's
# tracing, no code generation) to check for graph breaks in seconds.
COMPILE_BACKEND = "inductor"


@functools.cache
def _compiled_graphs(backend: str) -> dict[str, tuple[Any, Any]]:
    # Compiled once per process: dynamo keys its cache on the function's code and guards
    # on the vector field, solver and controller, so a training loop that keeps calling
    # the same model reuses the graph. The batch dimension is dynamic from the start, as
    # compaction shrinks it every few steps; a batch of one sample is its own graph
    # (dynamo specialises sizes 0 and 1).
    #   Python numbers (the tableau's weights, the controller's coefficients, max_steps,
    # the vector field's float constants) are constants of the graph: dynamic=True would
    # otherwise lift each to an input (about 45 0-d tensors for dopri5), wrapped and
    # checked at every call. Changing one recompiles; tolerances are inputs (_start).
    #   Returns each compiled function (one step, and FUSED_STEPS steps) bare and inside
    # that config patch. The patch matters only when dynamo traces, but entering it costs
    # ~20 µs a call (~5% of a small step), so only the calls that may trace go through it
    # (see _compiled_step). A call that traces without it anyway still gets a correct
    # graph, with the numbers as inputs.
    patch = torch._dynamo.config.patch(specialize_float=True, specialize_int=True)
    graphs = {}
    for name, fn in (("single", _attempt), ("fused", _fused)):
        compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=backend)
        graphs[name] = (compiled, patch(compiled))
    return graphs


def _call_compiled(
    name: str,
    first: bool,
    f: VectorField,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: Rows,
    *rest: Any,
) -> Any:
    """Call compiled graph ``name`` (``first`` call of it in this solve?) on the arguments.

    Dynamo traces at a solve's first call (a new field, solver, controller, dtype or grad
    mode fails its guards) and when one row is left (it specialises size 1); the other
    calls reuse those graphs, so they skip the config patch. ``f`` counts its own calls
    only outside the graph: the callers count them from what the graph returns.
    """
    bare, patched = _compiled_graphs(COMPILE_BACKEND)[name]
    call = patched if first or rows.y.shape[0] < 2 else bare
    f.counting = False
    try:
        return call(f, solver, controller, rows, *rest)
    finally:
        f.counting = True


def _compiled_step(
    f: VectorField,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: Rows,
    max_steps: int,
    direction: float,
    first: bool,
) -> _Attempt:
    attempt: _Attempt = _call_compiled(
        "single", first, f, solver, controller, rows, max_steps, direction
    )
    # Every stage after k[0] = f0 is one call of f (stacked: y0, the stages, y1).
    evaluations = attempt.stacked.shape[1] - 3
    f.nfe += evaluations
    f.rows += evaluations * rows.y.shape[0]
    return attempt


def _compact(problem: Problem, rows: Rows, ended: Ended) -> tuple[Rows, torch.Tensor | None]:
    """Record the frozen rows and drop them (unless compaction is off).

    Returns the rows and the positions kept (``None`` if nothing was dropped).
    """
    if not COMPACT or not rows.n_live:
        return rows, None
    ended.add(rows, (~rows.live).nonzero().squeeze(-1), problem.direction)
    keep = rows.live.nonzero().squeeze(-1)
    rows = rows.take(keep, rows.n_live)
    problem.f.select(rows.idx)
    return rows, keep
