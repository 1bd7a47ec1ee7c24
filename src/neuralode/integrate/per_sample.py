"""The per-sample driver: a batch of independent problems, each on its own steps.

The same algorithm as the joint driver (step → controller decides → interpolate the
outputs inside accepted steps → statistics), with the clock, step size, error norm,
accept/reject decision, controller history, output times and status held per sample as
``(B,)`` tensors. Why a second driver rather than tensor time in the joint one: the joint
driver keeps its clock as Python floats so that a step costs one host sync and no tensor
arithmetic on time; tensor time there would slow the default path. Everything else (the
clock's rules, the failure table, outputs, records, the step itself) is shared.

Samples that finish (or fail) leave the batch: every per-sample tensor is compacted (once
the finished ones are the tuning's ``compact_share`` of the batch), so the vector field is
evaluated on the samples still running and the total work tracks the sum of each sample's
own steps, not batch size × the slowest sample. This needs a vector field whose rows are
independent (no batch norm, no mixing across samples): the caller declares that by asking
for the per-sample mode.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._problem import Problem, flat_tolerance
from .._solution import RawSolution
from ..controllers import AbstractController, SolveStart
from ..solvers._explicit_rk import AbstractSolver
from .clock import landing
from .compiled import Fused, call_compiled, compiled_attempt
from .compiled import fused as steps_fused
from .endings import Failure, failures, sample_result
from .events import Watcher
from .hooks import OnAccept
from .outputs import Collector, PendingOutputs, Window
from .records import RowsRecord
from .rows import Attempt, Ended, Rows, RowUpdate, attempt, stepped


def integrate_samples(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    *,
    max_steps: int,
    records: list[RowsRecord] | None = None,
    on_accept: OnAccept | None = None,
    watcher: Watcher | None = None,
) -> RawSolution:
    """Solve every sample of a per-sample ``problem``; see :func:`neuralode.integrate.integrate`.

    ``max_steps`` is each sample's budget.
    """
    taus = problem.sample_taus
    assert taus is not None  # integrate() dispatches only per-sample problems here
    batch, n_times = taus.shape
    outputs = Collector(n_times * batch, math.nan)
    rows, ended = _initial(problem)
    outputs.add(rows.idx, problem.y0)  # ts[:, 0] is each sample's t0: the first output
    pending = PendingOutputs(problem, solver, outputs)
    if watcher is not None:
        watcher.start(rows.tau, rows.y)
    if n_times > 1:
        drive = _Driver(problem, solver, controller, ended, pending, max_steps, watcher)
        rows = drive.run(drive.start(rows), records, on_accept)
    # The rows still in the batch are all finished (frozen), or never started.
    ended.add(rows, None, problem.direction)
    pending.flush()
    return sample_result(problem, outputs, ended)


def _initial(problem: Problem) -> tuple[Rows, Ended]:
    """Every sample in the batch at its ``t0``, and an empty record of the finished ones."""
    taus = problem.sample_taus
    assert taus is not None
    batch, device = taus.shape[0], problem.y0.device
    zeros = torch.zeros(batch, dtype=torch.long, device=device)
    ended = Ended(
        code=zeros.clone(), t_last=taus[:, 0] * problem.direction,
        dt_last=torch.zeros_like(taus[:, 0]), steps=zeros.clone(), accepted=zeros.clone(),
        y_last=Collector(batch, 0.0),
    )  # fmt: skip
    # Fresh, unaliased tensors (clones, not views of the caller's): every later step sees
    # the same kind of inputs, so a compiled step is not recompiled for the first one.
    rows = Rows(
        idx=torch.arange(batch, device=device), tau=taus[:, 0].clone(),
        dt=torch.zeros_like(taus[:, 0]), y=problem.y0.clone(), f0=problem.f0.clone(),
        taus=taus.clone(), tau_end=taus[:, -1].clone(),
        tau_land=landing(taus[:, -1], problem.f.t_dtype), n_out=torch.ones_like(zeros),
        streak=zeros.clone(), steps=zeros.clone(), accepted=zeros.clone(),
        live=torch.ones_like(zeros, dtype=torch.bool), code=zeros.clone(), n_live=batch,
    )  # fmt: skip
    return rows, ended


def _rows_of(x: Any, idx: torch.Tensor) -> Any:
    """A per-sample tolerance's rows for samples ``idx`` (a float stays as it is)."""
    return x.index_select(0, idx) if isinstance(x, torch.Tensor) and x.ndim == 2 else x


def _per_row(x: Any, like: torch.Tensor) -> bool:
    """Whether a controller-state entry holds one value per row of ``like``."""
    return isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[0] == like.shape[0]


def _as_input(x: Any, like: torch.Tensor) -> Any:
    """A Python float as a 0-d float64 tensor (a graph input, not a constant)."""
    return torch.tensor(x, dtype=torch.float64, device=like.device) if type(x) is float else x


class _Driver:
    """The host side of the per-sample loop: steps, outputs, retirements, compaction."""

    def __init__(
        self,
        problem: Problem,
        solver: AbstractSolver,
        controller: AbstractController,
        ended: Ended,
        pending: PendingOutputs,
        max_steps: int,
        watcher: Watcher | None = None,
    ) -> None:
        self.problem, self.solver, self.controller = problem, solver, controller
        self.ended, self.pending, self.max_steps = ended, pending, max_steps
        self.watcher = watcher
        self.tuning = problem.tuning
        # The vector field on the rows in the batch (their per-sample args).
        self.field = problem.f
        # Whether each compiled graph has not been called yet in this solve.
        self.fresh_single = self.fresh_fused = True
        # Steps taken between host reads where they can go fused: one compiled graph
        # call, or eager steps queued without a read (see PerSampleTuning).
        tuning = self.tuning
        self.n_fused = tuning.fused_steps if tuning.compile else tuning.sync_every

    def start(self, rows: Rows) -> Rows:
        """First step sizes; samples whose ``f(t0, y0)`` is not finite fail at once."""
        start = self._solve_start(self.field, rows.tau, rows.y, rows.f0, rows.taus[:, -1], None)
        rows.dt, rows.cstate = self.controller.init(start)
        rows.sstate = self.solver.initial_state(rows.y)
        if self.tuning.compile:
            # The compiled step takes Python numbers as constants (see compiled.py), but a
            # new tolerance should not recompile it: the state's floats go in as tensors.
            rows.cstate = tuple(_as_input(x, rows.tau) for x in rows.cstate)
        bad = ~torch.isfinite(rows.f0).all(dim=-1)
        n_bad = int(bad.sum())
        if n_bad:
            rows.code = torch.where(bad, int(Failure.NONFINITE_AT_T0), 0)
            rows.live, rows.n_live = ~bad, rows.n_live - n_bad
            rows, _ = self._compact(rows)
        return rows

    def _solve_start(
        self,
        field: Any,
        tau: torch.Tensor,
        y: torch.Tensor,
        f0: torch.Tensor,
        tau_end: torch.Tensor,
        idx: torch.Tensor | None,
    ) -> SolveStart:
        """What the controller needs to choose first steps for rows (samples ``idx``)."""
        problem, d = self.problem, self.problem.direction
        rtol, atol = (flat_tolerance(x, problem) for x in self.controller.tolerances())
        if idx is not None:
            rtol, atol = (_rows_of(x, idx) for x in (rtol, atol))
        return SolveStart(
            solver=self.solver, f=field, t0=d * tau, y0=y, f0=f0, tau0=tau, tau_end=tau_end,
            direction=d, rtol=rtol, atol=atol,
        )  # fmt: skip

    def run(self, rows: Rows, records: list[RowsRecord] | None, on_accept: OnAccept | None) -> Rows:
        """Step until no row is live: fused steps where they can go, else one at a time."""
        solver, n_fused = self.solver, self.n_fused
        fusable = records is None and on_accept is None and self.watcher is None
        fusable = fusable and n_fused > 1 and not solver.needs_f1 and solver.fsal
        # Steps still to take one at a time after fused steps met trouble, and how many
        # to take after the next trouble: doubled while fused calls keep meeting it (a
        # sample creeping up to a singularity), so few fused calls are wasted.
        single, backoff = 0, n_fused
        while rows.n_live:
            if fusable and not single:
                fused = self.advance_fused(rows)
                if fused is not None:
                    rows, backoff = fused, n_fused
                    continue
                single, backoff = backoff, min(2 * backoff, 64 * n_fused)
            rows = self.advance(rows, records, on_accept)
            single = max(single - 1, 0)
        return rows

    def advance(
        self, rows: Rows, records: list[RowsRecord] | None, on_accept: OnAccept | None
    ) -> Rows:
        """One batched step: attempt, outputs, retirements, next ``f0``."""
        problem, solver, controller = self.problem, self.solver, self.controller
        f, d = self.field, problem.direction
        if self.tuning.compile and on_accept is None:
            step = compiled_attempt(
                f, solver, controller, rows, self.max_steps, d, self.fresh_single,
                self.tuning.backend,
            )  # fmt: skip
            self.fresh_single = False
        else:
            step = attempt(f, solver, controller, rows, self.max_steps, d, on_accept)
        # The host sync of the step: the output window, and whether the batch shrinks.
        n_outputs, n_leaving, n_accepted, n_trouble = step.summary.tolist()
        f1 = step.step_f1()
        has_f1 = f1 is not None
        if self.watcher is not None and n_accepted:
            step, f1 = self._cut(rows, step, f1)
            n_outputs, n_leaving, n_accepted, n_trouble = step.summary.tolist()
        if records is not None and n_accepted:
            window = (rows.tau, step.dt, step.n_outputs)
            with_state = solver.replay_needs_state
            records.append(RowsRecord.of(rows, step.accept, *window, n_outputs, with_state))
        if n_outputs:
            f1 = self._outputs(rows, step, f1, n_outputs)
        rows, keep = self._next_rows(rows, step, n_leaving, n_trouble)
        if not has_f1 and n_accepted and rows.n_live:
            # Without FSAL, the next f0 of the accepted rows is one more call of f.
            accept = step.accept
            if keep is not None:
                accept = accept.index_select(0, keep)
                f1 = None if f1 is None else f1.index_select(0, keep)
            if f1 is None:
                f1 = f(d * rows.tau, rows.y)
            rows.f0 = torch.where(accept.unsqueeze(-1), f1, rows.f0)
        return rows

    def _cut(
        self, rows: Rows, step: Attempt, f1: torch.Tensor | None
    ) -> tuple[Attempt, torch.Tensor | None]:
        """The step with the rows whose step met an event cut at it (see events.py).

        A cut row's step ends at its event with the state after the jump: its outputs are
        those up to the event (from the step's dense output), its ``f0`` is ``f`` there,
        and it leaves the batch if the event stops it. Returns the step and ``f1``
        (evaluated here when Hermite dense output needs it).
        """
        assert self.watcher is not None
        update, d = step.update, self.problem.direction
        if self.solver.needs_f1 and f1 is None:
            f1 = self.field(d * update.tau, update.y)
        cut = self.watcher.check(
            rows.idx, rows.tau, step.dt, update.tau, step.stacked, f1, step.accept
        )
        if cut is None:
            return step, f1
        pos = cut.pos
        tau = update.tau.index_copy(0, pos, cut.tau)
        field = self.problem.f.restrict(rows.idx.index_select(0, pos))
        f_cut = field(d * cut.tau, cut.y)
        n_out = torch.searchsorted(rows.taus, tau.unsqueeze(-1), right=True).squeeze(-1)
        update = update._replace(
            tau=tau, y=update.y.index_copy(0, pos, cut.y),
            f0=update.f0.index_copy(0, pos, f_cut), n_out=n_out,
        )  # fmt: skip
        if bool(cut.jumped.any()):
            update = self._restart(rows, update, field, pos, cut, f_cut)
        count = n_out - rows.n_out
        stays = ~cut.stop & (n_out.index_select(0, pos) < rows.taus.shape[1])
        leaving = step.leaving.index_copy(0, pos, ~stays)
        summary = torch.stack([count.sum(), leaving.sum(), step.summary[2], step.summary[3]])
        return step._replace(update=update, n_outputs=count, leaving=leaving, summary=summary), f1

    def _restart(
        self, rows: Rows, update: RowUpdate, field: Any, pos: torch.Tensor, cut: Any,
        f_cut: torch.Tensor,
    ) -> RowUpdate:  # fmt: skip
        """Rows whose state jumped choose their next step as at the start of a solve.

        The step-size history says nothing about the dynamics after a jump (a ball that
        bounced with a step as long as its whole fall would skip its next bounce).
        """
        jumped = cut.jumped.nonzero().squeeze(-1)
        at = pos.index_select(0, jumped)
        idx = rows.idx.index_select(0, at)
        start = self._solve_start(
            field.restrict(jumped) if field.args else field, cut.tau[jumped], cut.y[jumped],
            f_cut[jumped], rows.tau_end.index_select(0, at), idx,
        )  # fmt: skip
        dt, cstate = self.controller.init(start)
        merged = tuple(
            old.index_copy(0, at, new.to(old.dtype))
            if _per_row(old, rows.tau) and _per_row(new, dt)
            else old
            for old, new in zip(update.cstate, cstate, strict=True)
        )
        # The solver's history is of the dynamics before the jump too: start it afresh.
        fresh = self.solver.initial_state(cut.y[jumped])
        sstate = tuple(
            old.index_copy(0, at, new) for old, new in zip(update.sstate, fresh, strict=True)
        )
        return update._replace(dt=update.dt.index_copy(0, at, dt), cstate=merged, sstate=sstate)

    def _outputs(
        self, rows: Rows, step: Attempt, f1: torch.Tensor | None, n_outputs: int
    ) -> torch.Tensor | None:
        """Queue the outputs inside the rows' steps; return ``f1`` (evaluated if Hermite)."""
        hermite = self.solver.needs_f1
        if f1 is None and hermite:
            f1 = self.field(self.problem.direction * step.update.tau, step.update.y)
        window = Window(rows.idx, self.pending.taus, rows.n_out, step.n_outputs, n_outputs)
        self.pending.add(window, rows.tau, step.dt, step.stacked, f1 if hermite else None)
        return f1

    def _next_rows(
        self, rows: Rows, step: Attempt, n_leaving: int, n_trouble: int
    ) -> tuple[Rows, torch.Tensor | None]:
        """The rows after the step: leaving rows frozen, compacted when enough are frozen.

        Also returns the positions kept by a compaction (``None`` when there was none).
        """
        new = stepped(rows, step.update, rows.live, rows.n_live)
        if not n_leaving:
            return new, None
        leaving = step.leaving
        if n_trouble:
            # A live row with steps left that did not step could not: its step underflowed.
            # Read from the step's own count, not recomputed, so the verdict is the one the
            # (possibly compiled) step made.
            streak, stuck = step.update.streak, step.update.steps == rows.steps
            dt_min = self.controller.min_step()
            clock = rows.dt >= dt_min * (1 - 1e-9) if dt_min else torch.ones_like(stuck)
            leaving, code = failures(rows, stuck, clock, streak, step.leaving, self.max_steps)
            if step.newton is not None:
                newton = step.newton & (code == Failure.NONFINITE_STREAK)
                code = torch.where(newton, int(Failure.NEWTON_STREAK), code)
            n_leaving = int(leaving.sum())
            new.code = torch.where(leaving, code, new.code)
            failed = leaving & (code != 0)
            self.ended.dt_last[rows.idx[failed]] = self.problem.direction * step.dt[failed]
        # Leaving rows stay in the batch, frozen (live is False), until compaction.
        new.live, new.n_live = new.live ^ leaving, new.n_live - n_leaving
        return self._maybe_compact(new)

    def _maybe_compact(self, rows: Rows) -> tuple[Rows, torch.Tensor | None]:
        if rows.idx.numel() - rows.n_live > self.tuning.compact_share * rows.idx.numel():
            return self._compact(rows)
        return rows, None

    def _compact(self, rows: Rows) -> tuple[Rows, torch.Tensor | None]:
        """Record the frozen rows and drop them (unless the tuning turns compaction off).

        Returns the rows and the positions kept (``None`` if nothing was dropped).
        """
        if not self.tuning.compact or not rows.n_live:
            return rows, None
        self.ended.add(rows, (~rows.live).nonzero().squeeze(-1), self.problem.direction)
        keep = rows.live.nonzero().squeeze(-1)
        rows = rows.take(keep, rows.n_live)
        self.field = self.problem.f.restrict(rows.idx)
        return rows, keep

    def advance_fused(self, rows: Rows) -> Rows | None:
        """``n_fused`` batched steps with one host read: one compiled call, or eager steps.

        Returns the rows after them, or ``None`` if some row met trouble (could not step,
        or was not finite) in one of them: nothing is kept then, and the caller takes the
        steps one at a time, where :meth:`_next_rows` judges the failures.
        """
        f, n_steps = self.field, self.n_fused
        given = (self.solver, self.controller, rows, self.max_steps, self.problem.direction)
        fused: Fused
        if self.tuning.compile:
            fused = call_compiled(
                "fused", self.fresh_fused, self.tuning.backend, f, *given, n_steps
            )
            self.fresh_fused = False
        else:
            # The same function the compiled graph runs, called eagerly (and counted
            # below, like the graph's calls).
            fused = steps_fused(f.uncounted(), *given, n_steps)
        summary = fused.summary.tolist()  # the one host sync of the n_fused steps
        if any(step[3] for step in summary):
            return None
        # Every stage after k[0] = f0 is one call of f, on every row of the batch. Steps
        # after the last row left are not counted as calls, but their rows are.
        evaluations = fused.stacked.shape[2] - 3
        f.nfe += evaluations * sum(1 for step in summary if step[4])
        f.rows += evaluations * n_steps * rows.y.shape[0]
        taus = self.pending.taus
        for k, (n_outputs, *_) in enumerate(summary):
            if n_outputs:
                window = Window(rows.idx, taus, fused.n_out[k], fused.n_outputs[k], n_outputs)
                self.pending.add(window, fused.tau[k], fused.dt[k], fused.stacked[k], None)
        n_live = rows.n_live - sum(step[1] for step in summary)
        new, _ = self._maybe_compact(stepped(rows, fused.update, fused.live, n_live))
        return new
