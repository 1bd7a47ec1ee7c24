"""Records of accepted steps, to replay them exactly (checkpointed gradients).

Both drivers record what they accepted; a gradient method walks the records backwards
through one interface (:class:`AbstractRecord`), whatever the mode: :meth:`replay`
recomputes the step from its start with autograd, :meth:`~AbstractRecord.gather` and
:meth:`~AbstractRecord.scatter` move the state's cotangent in and out of the step, and
:meth:`~AbstractRecord.output_grads` reads the cotangents of the outputs it produced.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch

from .._problem import Problem
from ..solvers._explicit_rk import AbstractSolver, SolverState
from .outputs import Window, outputs_in_step, stack_step, step_outputs
from .rows import Rows


class Replayed:
    """A replayed step: ``y1``, the solver state after it and its outputs (``None`` if none).

    All are functions of the step's ``y0`` and solver state. ``where`` locates the
    outputs' cotangents for :meth:`AbstractRecord.output_grads`.
    """

    __slots__ = ("outputs", "state", "where", "y1")

    def __init__(
        self,
        y1: torch.Tensor,
        state: SolverState,
        outputs: torch.Tensor | None,
        where: Any = None,
    ) -> None:
        self.y1, self.state, self.outputs, self.where = y1, state, outputs, where


class AbstractRecord(abc.ABC):
    """One accepted step (joint) or the accepted rows of one batched step (per-sample)."""

    y0: torch.Tensor
    # The solver state the step started from (see AbstractSolver.initial_state).
    state0: SolverState

    @abc.abstractmethod
    def replay(
        self, problem: Problem, solver: AbstractSolver, y0: torch.Tensor, state0: SolverState
    ) -> Replayed:
        """Recompute the step from ``y0`` and solver state ``state0`` as the driver took it."""

    @abc.abstractmethod
    def gather(self, a: torch.Tensor) -> torch.Tensor:
        """This step's part of a cotangent of the whole state (or of a solver-state tensor).

        Solver-state tensors have a row per sample like the state, so the same
        selection serves both.
        """

    @abc.abstractmethod
    def scatter(self, a: torch.Tensor, grad_y0: torch.Tensor | None) -> torch.Tensor:
        """``a`` with this step's part replaced by the cotangent of its start.

        The start is ``y0``, or a solver-state tensor for a cotangent of one.
        """

    @abc.abstractmethod
    def output_grads(self, grad_ys: torch.Tensor, replayed: Replayed) -> torch.Tensor:
        """The cotangents of the outputs the replayed step produced, from all of them."""

    def blank(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """A zero cotangent for the whole of solver-state tensor ``x``.

        The step holds only its own rows of ``x``; the whole has as many rows as the
        state's cotangent ``a``.
        """
        return torch.zeros_like(x)


@dataclass(frozen=True)
class StepRecord(AbstractRecord):
    """An accepted joint step.

    Attributes:
        tau0: Start in forward time.
        dt: Step size in forward time (positive).
        y0: State at the start.
        t_f0: Time at which ``f0`` was evaluated (just past ``t0`` after a jump).
        t1_stage: Time of the end stages when the step ends on a jump, else ``None``.
        i0: First output index produced by this step.
        i1: One past the last output index produced by this step.
        state0: The solver state at the start.
    """

    tau0: float
    dt: float
    y0: torch.Tensor
    t_f0: float
    t1_stage: float | None
    i0: int
    i1: int
    state0: SolverState = ()

    def replay(
        self, problem: Problem, solver: AbstractSolver, y0: torch.Tensor, state0: SolverState
    ) -> Replayed:
        """The step and its outputs (``taus[i0:i1]``)."""
        f, d = problem.f, problem.direction
        f0 = f(self.t_f0, y0)
        step = solver.step(f, d * self.tau0, y0, f0, d * self.dt, self.t1_stage, state0)
        if self.i1 == self.i0:
            return Replayed(step.y1, step.state, None)
        f1 = step.f1
        tau1 = self.tau0 + self.dt
        if solver.needs_f1 and f1 is None and problem.taus[self.i0] < tau1:
            f1 = f(d * tau1, step.y1)
        outputs = outputs_in_step(
            solver, problem.taus, self.i0, self.i1, self.tau0, self.dt, d, y0, step, f1
        )
        return Replayed(step.y1, step.state, outputs)

    def gather(self, a: torch.Tensor) -> torch.Tensor:
        """The whole state is this step's."""
        return a

    def scatter(self, a: torch.Tensor, grad_y0: torch.Tensor | None) -> torch.Tensor:
        """The cotangent of ``y0`` (zero where ``y1`` did not depend on it)."""
        return grad_y0 if grad_y0 is not None else torch.zeros_like(a)

    def output_grads(self, grad_ys: torch.Tensor, replayed: Replayed) -> torch.Tensor:
        """``grad_ys[i0:i1]``."""
        return grad_ys[self.i0 : self.i1]


@dataclass(frozen=True)
class RowsRecord(AbstractRecord):
    """The accepted rows of one batched step.

    Attributes:
        idx: Batch positions of the accepted rows, ``(a,)``.
        tau0: Their start times (forward), ``(a,)``.
        dt: Their step sizes (forward), ``(a,)``.
        y0: Their states at the start, ``(a, N)``.
        n_out: Index of the first output each produced, ``(a,)``.
        count: Number of outputs each produced, ``(a,)``.
        total: ``sum(count)``.
        state0: Their solver state at the start (rows of each tensor).
    """

    idx: torch.Tensor
    tau0: torch.Tensor
    dt: torch.Tensor
    y0: torch.Tensor
    n_out: torch.Tensor
    count: torch.Tensor
    total: int
    state0: SolverState = ()

    @staticmethod
    def of(
        rows: Rows,
        accept: torch.Tensor,
        tau0: torch.Tensor,
        dt: torch.Tensor,
        count: torch.Tensor,
        total: int,
        keep_state: bool = True,
    ) -> RowsRecord:
        """The ``accept``-ed rows of a step from ``tau0`` by ``dt`` (``count`` outputs each).

        ``keep_state``: record their solver state (see
        :attr:`~neuralode.solvers.AbstractSolver.replay_needs_state`).
        """
        a = accept.nonzero().squeeze(-1)
        return RowsRecord(
            idx=rows.idx[a],
            tau0=tau0[a],
            dt=dt[a],
            y0=rows.y[a],
            n_out=rows.n_out[a],
            count=count[a],
            total=total,
            state0=tuple(x[a] for x in rows.sstate) if keep_state else (),
        )

    def replay(
        self, problem: Problem, solver: AbstractSolver, y0: torch.Tensor, state0: SolverState
    ) -> Replayed:
        """The rows' steps and their outputs, with the outputs' flat positions as ``where``."""
        f, d = problem.f.restrict(self.idx), problem.direction
        f0 = f(d * self.tau0, y0)
        step = solver.step(f, d * self.tau0, y0, f0, d * self.dt, None, state0)
        if not self.total:
            return Replayed(step.y1, step.state, None)
        f1 = step.f1
        if f1 is None and solver.needs_f1:
            f1 = f(d * (self.tau0 + self.dt), step.y1)
        taus = problem.sample_taus
        assert taus is not None
        window = Window(self.idx, taus, self.n_out, self.count, self.total)
        stacked = stack_step(y0, step)
        values, pos = step_outputs(problem, solver, window, self.tau0, self.dt, stacked, f1)
        return Replayed(step.y1, step.state, values, pos)

    def blank(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Zeros with a row per sample (``a``'s rows) and ``x``'s shape per row."""
        return x.new_zeros((a.shape[0], *x.shape[1:]))

    def gather(self, a: torch.Tensor) -> torch.Tensor:
        """The rows of ``a`` that this step moved."""
        return a.index_select(0, self.idx)

    def scatter(self, a: torch.Tensor, grad_y0: torch.Tensor | None) -> torch.Tensor:
        """``a`` with this step's rows replaced (the other samples' wait for their steps)."""
        return a if grad_y0 is None else a.index_copy(0, self.idx, grad_y0)

    def output_grads(self, grad_ys: torch.Tensor, replayed: Replayed) -> torch.Tensor:
        """The outputs' cotangents by their flat ``(T, B)`` positions."""
        return grad_ys.reshape(-1, grad_ys.shape[-1])[replayed.where]
