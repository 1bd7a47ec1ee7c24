"""The per-sample driver's state: rows of samples, what they leave behind, and the step.

:func:`attempt` is the tensor-only part of a per-sample step, which ``torch.compile``
captures as one graph (:mod:`neuralode.integrate.compiled`); the host driver
(:mod:`neuralode.integrate.per_sample`) reads one summary of it per step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from .._vector_field import VectorField
from ..controllers import AbstractController
from ..solvers._explicit_rk import AbstractSolver, SolverState, StepResult
from .clock import step_to
from .hooks import OnAccept
from .outputs import Collector, stack_step


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
            :func:`neuralode.integrate.clock.landing`; kept, as it is the same at every step).
        n_out: Outputs written so far (those at or before ``tau``), ``(A,)``.
        streak: Non-finite rejections in a row, ``(A,)``.
        steps: Steps attempted, ``(A,)``.
        accepted: Steps accepted, ``(A,)``.
        live: Still stepping; ``False`` for finished rows not yet compacted away (frozen:
            they keep the clock, state and counts they ended with).
        code: Why a finished row stopped (a :class:`~neuralode.integrate.endings.Failure`).
        cstate: The controller's state; its tensors with a leading dim are per-row.
        sstate: The solver's state (:meth:`AbstractSolver.initial_state`), per-row tensors.
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
    sstate: SolverState = ()
    n_live: int = 0

    def take(self, keep: torch.Tensor, n_live: int) -> Rows:
        """The rows at positions ``keep`` (``n_live`` of them live)."""
        picked = {
            f.name: getattr(self, f.name).index_select(0, keep)
            for f in dataclasses.fields(self)
            if f.name not in ("cstate", "sstate", "n_live")
        }
        cstate = tuple(_take(x, keep) for x in self.cstate)
        sstate = tuple(x.index_select(0, keep) for x in self.sstate)
        return Rows(**picked, cstate=cstate, sstate=sstate, n_live=n_live)


def _take(x: Any, keep: torch.Tensor) -> Any:
    return x.index_select(0, keep) if isinstance(x, torch.Tensor) and x.ndim else x


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


class RowUpdate(NamedTuple):
    """The rows' next state after a step attempt: :class:`Rows`' fields of the same names."""

    tau: torch.Tensor
    dt: torch.Tensor
    y: torch.Tensor
    f0: torch.Tensor
    n_out: torch.Tensor
    streak: torch.Tensor
    steps: torch.Tensor
    accepted: torch.Tensor
    cstate: Any
    sstate: SolverState


class Attempt(NamedTuple):
    """One batched step attempt, before the host looks at it (see :func:`attempt`).

    As few tensors as the host needs: each output of a compiled step costs wrapper time
    at every call, so the step comes as one :func:`stack_step` tensor (what the outputs
    read), and ``f1`` only when it is not the last stage (FSAL: ``f1_is_last``).

    ``update``: the rows' next state (``f0`` updated only when the solver returns ``f1``);
    ``summary``: ``[outputs, leaving, accepted, trouble]`` row counts, the step's one sync.
    """

    update: RowUpdate
    dt: torch.Tensor
    accept: torch.Tensor
    n_outputs: torch.Tensor
    leaving: torch.Tensor
    stacked: torch.Tensor
    f1: torch.Tensor | None
    f1_is_last: bool
    summary: torch.Tensor
    newton: torch.Tensor | None = None  # implicit solvers: rows whose Newton failed

    def step_f1(self) -> torch.Tensor | None:
        """The step's ``f(t1, y1)`` if the solver returned it, else ``None``."""
        return self.stacked[:, -2] if self.f1_is_last else self.f1


def attempt(
    f: VectorField,
    solver: AbstractSolver,
    controller: AbstractController,
    rows: Rows,
    max_steps: int,
    direction: float,
    on_accept: OnAccept | None = None,
) -> Attempt:
    """Every live row attempts its own step and is judged alone: tensors only, no sync.

    This is the part of a step that ``torch.compile`` captures as one graph (vector
    field and the rows' update included) when the solve asks for it. Why a row stopped
    is worked out on the host, and only at steps where one may have failed
    (:func:`neuralode.integrate.endings.failures`): the common step computes no failure code.
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
    step = solver.step(f, t0, y, rows.f0, h, None, rows.sstate)
    decision = controller.decide(tau, dt, y, step, rows.cstate)
    accept = decision.accept & go
    if on_accept is not None:
        on_accept(tau, dt, y, step, accept)
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
    update = RowUpdate(
        tau=tau_new,
        dt=decision.dt_next,
        y=torch.where(accepted, step.y1, y),
        f0=f0,
        n_out=n_next,
        streak=(rows.streak + 1) * nonfinite,  # the streak of non-finite retries (of go rows)
        steps=rows.steps + go,
        accepted=rows.accepted + accept,
        cstate=decision.state,
        sstate=_next_state(step, rows.sstate, accept),
    )
    f1_is_last = step.f1 is step.k[-1]
    f1 = None if f1_is_last else step.f1
    stacked = stack_step(y, step)
    newton = None if step.newton_failed is None else step.newton_failed & go
    return Attempt(update, dt, accept, count, leaving, stacked, f1, f1_is_last, summary, newton)


def stepped(rows: Rows, update: RowUpdate, live: torch.Tensor, n_live: int) -> Rows:
    """``rows`` after a step: its ``update`` (see :class:`Attempt`), ``live`` and ``n_live``."""
    return Rows(
        idx=rows.idx, tau=update.tau, dt=update.dt, y=update.y, f0=update.f0, taus=rows.taus,
        tau_end=rows.tau_end, tau_land=rows.tau_land, n_out=update.n_out, streak=update.streak,
        steps=update.steps, accepted=update.accepted, live=live, code=rows.code,
        cstate=update.cstate, sstate=update.sstate, n_live=n_live,
    )  # fmt: skip


def _next_state(step: StepResult, state: SolverState, accept: torch.Tensor) -> SolverState:
    """Each row's solver state after the attempt: the step's if accepted, else the retry's."""
    retry = state if step.retry_state is None else step.retry_state
    return tuple(
        torch.where(accept.reshape(-1, *(1,) * (new.ndim - 1)), new, old)
        for new, old in zip(step.state, retry, strict=True)
    )
