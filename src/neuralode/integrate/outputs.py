"""Outputs at the requested times, for both drivers.

A step's outputs are its interpolant at the output times inside it (and ``y1`` itself
at its end). The joint driver evaluates them step by step (:func:`outputs_in_step`); the
per-sample driver keeps steps pending and evaluates many rows' outputs at once
(:class:`PendingOutputs`), scattering them into a :class:`Collector`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._problem import Problem
from ..interpolation import interpolate_stacked, interpolate_step
from ..solvers._explicit_rk import AbstractSolver, StepResult


def outputs_in_step(
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


def assemble(outputs: list[torch.Tensor], n: int) -> torch.Tensor:
    """Joint outputs ``(n, N)`` from the steps' blocks; NaN for the outputs not reached."""
    ys = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
    missing = n - ys.shape[0]
    if missing:
        # Never uninitialised memory: outputs the solve did not reach are NaN.
        nan = torch.full((missing, *ys.shape[1:]), math.nan, dtype=ys.dtype, device=ys.device)
        ys = torch.cat([ys, nan])
    return ys


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
        """Place ``values`` (one row per position) at the flat positions ``pos``."""
        # (Reshaped only when needed: a reshape is one more tensor op at every step.)
        self.pos.append(pos if pos.ndim == 1 else pos.reshape(-1))
        rows_first = values.ndim == 2 and values.shape[0] == pos.numel()
        self.values.append(values if rows_first else values.reshape(pos.numel(), -1))

    def assemble(self, like: torch.Tensor) -> torch.Tensor:
        """The ``(size, N)`` tensor (``like``'s dtype): the rows placed, ``fill`` elsewhere."""
        values = torch.cat(self.values)
        shape = (self.size, values.shape[-1])
        base = torch.full(shape, self.fill, dtype=like.dtype, device=like.device)
        return base.index_put((torch.cat(self.pos),), values)


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
    if solver.needs_f1:
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


class PendingOutputs:
    """Steps whose outputs are not interpolated yet: kept whole, done many at a time.

    Interpolating each step's outputs as it is taken costs some 30 small tensor ops at
    nearly every step (in a batch, some sample passes an output time at most steps), a
    third of a compiled step's wall time on a batch of 1024 rotations. Instead a step's
    window and stack are kept as they are, without even selecting the rows that have
    outputs (that would be ops again), and :func:`step_outputs` runs on the concatenation
    once the tuning's ``pending_elements`` are pending, and at the end: the same formula per
    output, on more rows at once. The rows without outputs cost memory until then, bounded
    by that budget, and nothing else (``step_outputs`` skips them).
    """

    def __init__(self, problem: Problem, solver: AbstractSolver, outputs: Collector) -> None:
        assert problem.sample_taus is not None  # a per-sample problem
        self.problem, self.solver, self.outputs = problem, solver, outputs
        self.budget = problem.tuning.pending_elements
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
        if self.elements >= self.budget:
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
