"""The per-sample loop's state: rows of samples, what they leave behind, their outputs.

Shared by the loop (:mod:`neuralode._sample_loop`) and by the replay of recorded steps
(checkpointed gradients), so both evaluate a step's outputs with the same code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ._problem import Problem
from .interpolation import needs_f1
from .interpolation.local import interpolate_stacked
from .solvers._explicit_rk import AbstractSolver, StepResult


@dataclass
class Rows:
    """Loop state of the samples still in the batch, one row each (compacted together).

    Attributes:
        idx: Position of each row in the caller's batch, ``(A,)``.
        tau: Forward time reached, float64 ``(A,)``.
        dt: Next step to attempt (forward time, positive), float64 ``(A,)``.
        y: State at ``tau``, ``(A, N)``.
        f0: ``f(tau, y)``, ``(A, N)``.
        taus: Output times in forward time, float64 ``(A, T)``.
        tau_end: The last of them, ``taus[:, -1]`` (kept, not sliced at every step).
        tau_land: Where a step starts landing on ``tau_end``, ``landing(tau_end)`` (see
            :func:`neuralode._loop.landing`; kept, as it is the same at every step).
        n_out: Outputs written so far (those at or before ``tau``), ``(A,)``.
        streak: Non-finite rejections in a row, ``(A,)``.
        steps: Steps attempted, ``(A,)``.
        accepted: Steps accepted, ``(A,)``.
        live: Still stepping; ``False`` for finished rows not yet compacted away (frozen:
            they keep the clock, state and counts they ended with).
        code: Why a finished row stopped (0: success; see ``_sample_endings.ENDINGS``).
        cstate: The controller's state; its tensors with a leading dim are per-row.
        n_live: Number of live rows (host-side, from the step's one sync).
    """

    idx: torch.Tensor
    tau: torch.Tensor
    dt: torch.Tensor
    y: torch.Tensor
    f0: torch.Tensor
    taus: torch.Tensor
    tau_end: torch.Tensor
    tau_land: torch.Tensor
    n_out: torch.Tensor
    streak: torch.Tensor
    steps: torch.Tensor
    accepted: torch.Tensor
    live: torch.Tensor
    code: torch.Tensor
    cstate: Any = ()
    n_live: int = 0

    def take(self, keep: torch.Tensor, n_live: int) -> Rows:
        """The rows at positions ``keep`` (``n_live`` of them live)."""
        picked = {
            f.name: getattr(self, f.name).index_select(0, keep)
            for f in dataclasses.fields(self)
            if f.name not in ("cstate", "n_live")
        }
        cstate = tuple(_take(x, keep) for x in self.cstate)
        return Rows(**picked, cstate=cstate, n_live=n_live)


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
        total: ``sum(count)``.
    """

    idx: torch.Tensor
    tau0: torch.Tensor
    dt: torch.Tensor
    y0: torch.Tensor
    n_out: torch.Tensor
    count: torch.Tensor
    total: int


class Collector:
    """Scattered ``(position, value)`` rows assembled once at the end.

    Writes go to a list and are placed with one out-of-place ``index_put``, so autograd
    sees one op instead of an in-place write per step.
    """

    def __init__(self, size: int, fill: float) -> None:
        self.size, self.fill = size, fill
        self.pos: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def add(self, pos: torch.Tensor, values: torch.Tensor) -> None:
        # (Reshaped only when needed: a reshape is one more tensor op at every step.)
        self.pos.append(pos if pos.ndim == 1 else pos.reshape(-1))
        rows_first = values.ndim == 2 and values.shape[0] == pos.numel()
        self.values.append(values if rows_first else values.reshape(pos.numel(), -1))

    def assemble(self, like: torch.Tensor) -> torch.Tensor:
        values = torch.cat(self.values)
        shape = (self.size, values.shape[-1])
        base = torch.full(shape, self.fill, dtype=like.dtype, device=like.device)
        return base.index_put((torch.cat(self.pos),), values)


@dataclass
class Ended:
    """What each sample left behind when it left the batch, ``(B, ...)``.

    ``dt_last`` is the step a failed sample last attempted (caller's sign; 0 if none).
    """

    code: torch.Tensor
    t_last: torch.Tensor
    dt_last: torch.Tensor
    steps: torch.Tensor
    accepted: torch.Tensor
    y_last: Collector

    def add(self, rows: Rows, at: torch.Tensor | None, direction: float) -> None:
        """Record the finished rows at positions ``at`` of ``rows`` (``None``: all)."""
        idx, tau, y = rows.idx, rows.tau, rows.y
        code, steps, accepted = rows.code, rows.steps, rows.accepted
        if at is not None:
            idx, tau, y = idx.index_select(0, at), tau.index_select(0, at), y.index_select(0, at)
            code, steps = code.index_select(0, at), steps.index_select(0, at)
            accepted = accepted.index_select(0, at)
        self.code[idx] = code
        self.t_last[idx] = direction * tau
        self.steps[idx] = steps
        self.accepted[idx] = accepted
        self.y_last.add(idx, y)


@dataclass(frozen=True)
class Window:
    """Which outputs a batched step produced: ``count[a]`` from ``n_out[a]`` on, per row.

    Attributes:
        idx: Batch positions of the rows, ``(A,)``.
        taus: The output times (forward) of the whole batch, ``(B, T)``: row ``a``'s are
            ``taus[idx[a]]`` (indexed per output, rather than copied per row).
        n_out: First output index of each row's step, ``(A,)``.
        count: Outputs inside each row's step, ``(A,)``.
        total: ``sum(count)``.
    """

    idx: torch.Tensor
    taus: torch.Tensor
    n_out: torch.Tensor
    count: torch.Tensor
    total: int


def stack_step(y0: torch.Tensor, step: StepResult) -> torch.Tensor:
    """``y0``, the stages ``k`` and ``y1`` of a batched step as one ``(A, s + 2, N)`` tensor.

    What :func:`step_outputs` reads: one tensor to index instead of ``s + 2``.
    """
    return torch.stack([y0, *step.k, step.y1], dim=1)


def step_outputs(
    problem: Problem,
    solver: AbstractSolver,
    window: Window,
    tau0: torch.Tensor,
    dt: torch.Tensor,
    stacked: torch.Tensor,
    f1: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs the rows' steps produced: ``total`` of them, ``count[a]`` for row ``a``.

    ``stacked`` is the step's :func:`stack_step`; ``f1`` is needed for cubic Hermite.
    Returns values ``(total, N)`` and their flat positions in the ``(T, B)`` output grid.
    The work is proportional to the outputs produced: a slow sample that passes fifty
    output times in one step does not make every other row pad to fifty.
    """
    batch, device = problem.y0.shape[0], stacked.device
    count = window.count
    row = torch.repeat_interleave(count, output_size=window.total)  # a, count[a] times
    # The outputs of row a fill slots first[a] on of the flat list, first = cumsum - count,
    # and slot i holds output j = n_out[a] + i - first[a] = i - offset[a].
    offset = torch.cumsum(count, 0) - count - window.n_out
    j = torch.arange(window.total, device=device) - offset[row]
    t_out, t0, h = window.taus[window.idx[row], j], tau0[row], dt[row]
    theta = ((t_out - t0) / h).unsqueeze(-1)
    if needs_f1(solver):
        if f1 is None:
            raise ValueError("Hermite interpolation needs f(t1, y1)")
        # Hermite weighs f1 as one more stage, between the stages and y1.
        stacked = torch.cat([stacked[:, :-1], f1.unsqueeze(1), stacked[:, -1:]], dim=1)
    gathered = stacked[row]  # (total, s + 2, N): y0, the stages and y1 of each output's row
    h_signed = h if problem.direction == 1.0 else problem.direction * h
    values = interpolate_stacked(solver, gathered[:, :1], gathered[:, 1:-1], h_signed, theta)
    # Outputs exactly at the step end are y1 itself, as in the joint loop.
    at_end = (t_out >= t0 + h).unsqueeze(-1)
    values = torch.where(at_end, gathered[:, -1], values.squeeze(1))
    return values, j * batch + window.idx[row]


# Pending steps are interpolated once their stacks hold this many elements (and at the
# end): 32 MiB in float64, whatever the problem's size.
PENDING_ELEMENTS = 1 << 22


class PendingOutputs:
    """Steps whose outputs are not interpolated yet: kept whole, done many at a time.

    Interpolating each step's outputs as it is taken costs some 30 small tensor ops at
    nearly every step (in a batch, some sample passes an output time at most steps), a
    third of a compiled step's wall time on a batch of 1024 rotations. Instead a step's
    window and stack are kept as they are, without even selecting the rows that have
    outputs (that would be ops again), and :func:`step_outputs` runs on the concatenation
    once :data:`PENDING_ELEMENTS` are pending, and at the end: the same formula per
    output, on more rows at once. The rows without outputs cost memory until then, bounded
    by that budget, and nothing else (``step_outputs`` skips them).
    """

    def __init__(self, problem: Problem, solver: AbstractSolver, outputs: Collector) -> None:
        assert problem.sample_taus is not None  # a per-sample problem
        self.problem, self.solver, self.outputs = problem, solver, outputs
        self.taus = problem.sample_taus
        self.parts: list[tuple[torch.Tensor, ...]] = []
        self.f1: list[torch.Tensor] = []
        self.total = self.elements = 0

    def add(
        self,
        window: Window,
        tau0: torch.Tensor,
        dt: torch.Tensor,
        stacked: torch.Tensor,
        f1: torch.Tensor | None,
    ) -> None:
        """A step's outputs, as :func:`step_outputs` takes them (``f1`` if Hermite)."""
        self.parts.append((window.idx, window.n_out, window.count, tau0, dt, stacked))
        if f1 is not None:
            self.f1.append(f1)
        self.total += window.total
        self.elements += stacked.numel()
        if self.elements >= PENDING_ELEMENTS:
            self.flush()

    def flush(self) -> None:
        """Interpolate every pending output into the collector."""
        if self.total:
            idx, n_out, count, tau0, dt, stacked = (
                torch.cat(c) for c in zip(*self.parts, strict=True)
            )
            window = Window(idx, self.taus, n_out, count, self.total)
            f1 = torch.cat(self.f1) if self.f1 else None
            values, pos = step_outputs(self.problem, self.solver, window, tau0, dt, stacked, f1)
            self.outputs.add(pos, values)
        self.parts, self.f1 = [], []
        self.total = self.elements = 0


def record_rows(
    rows: Rows,
    accept: torch.Tensor,
    tau0: torch.Tensor,
    dt: torch.Tensor,
    count: torch.Tensor,
    total: int,
) -> RowsRecord:
    a = accept.nonzero().squeeze(-1)
    return RowsRecord(
        idx=rows.idx[a],
        tau0=tau0[a],
        dt=dt[a],
        y0=rows.y[a],
        n_out=rows.n_out[a],
        count=count[a],
        total=total,
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
    if not record.total:
        return step.y1, None, None
    f1 = step.f1
    if f1 is None and needs_f1(solver):
        f1 = f(d * (record.tau0 + record.dt), step.y1)
    taus = problem.sample_taus
    assert taus is not None
    window = Window(record.idx, taus, record.n_out, record.count, record.total)
    stacked = stack_step(y0, step)
    values, pos = step_outputs(problem, solver, window, record.tau0, record.dt, stacked, f1)
    return step.y1, values, pos
