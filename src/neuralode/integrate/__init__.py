"""THE step loop, written once: :func:`integrate` and the two drivers it picks from.

The joint driver (:mod:`.joint`) steps the whole state with one step size on a Python
float clock; the per-sample driver (:mod:`.per_sample`) steps every sample of a batch on
its own clock. They share the clock's rules (:mod:`.clock`), the failure table
(:mod:`.endings`), the output collection (:mod:`.outputs`) and the records that replay
accepted steps (:mod:`.records`).
"""

from __future__ import annotations

from .._problem import Problem
from .._solution import RawSolution
from ..controllers import AbstractController
from ..solvers._explicit_rk import AbstractSolver
from .events import Watcher
from .hooks import OnAccept
from .joint import integrate_joint
from .one_row import integrate_one_row, unsupported
from .per_sample import integrate_samples
from .records import AbstractRecord, Replayed, RowsRecord, StepRecord

__all__ = [
    "AbstractRecord",
    "OnAccept",
    "Replayed",
    "RowsRecord",
    "StepRecord",
    "Watcher",
    "integrate",
]


def integrate(
    problem: Problem,
    solver: AbstractSolver,
    controller: AbstractController,
    *,
    max_steps: int,
    dense: bool = False,
    records: list[AbstractRecord] | None = None,
    on_accept: OnAccept | None = None,
    watcher: Watcher | None = None,
) -> RawSolution:
    """Solve ``problem`` and return the outputs at its output times.

    Args:
        problem: The validated problem, joint or per-sample (``problem.batched``).
        solver: The method.
        controller: Step-size control.
        max_steps: Budget of attempted steps (per sample in per-sample mode).
        dense: Also build a dense interpolant (joint mode only).
        records: When a list, every accepted step is appended to it, as a record that
            replays it (:class:`~neuralode.integrate.records.AbstractRecord`).
        on_accept: Called after every accepted step (see :class:`OnAccept`).
        watcher: Events to look for (:class:`~neuralode.integrate.events.Watcher`): they
            cut steps, jump and stop samples; the ones met are in ``RawSolution.events``.
            Not with ``records`` (they would replay the uncut steps).
    """
    if watcher is not None and records is not None:
        raise ValueError("events cannot be combined with step records")
    if not problem.batched and problem.tuning.joint_as_row:
        why = unsupported(problem, controller, dense, records is not None, watcher is not None)
        if why or on_accept is not None:
            option = "compile_step=True" if problem.tuning.compile else "sync_every > 1"
            raise ValueError(
                f"{option} in joint mode (batch_dims=0) does not support "
                f"{why or 'regularizers or step hooks'} yet: solve without it"
            )
        return integrate_one_row(problem, solver, controller, max_steps=max_steps)
    if not problem.batched:
        raw = integrate_joint(
            problem, solver, controller, max_steps=max_steps, dense=dense,
            records=records, on_accept=on_accept, watcher=watcher,  # type: ignore[arg-type]
        )  # fmt: skip
        if watcher is not None:
            raw.events = watcher.result(problem.y0.device)
        return raw
    if dense:
        raise ValueError(
            "dense=True is not available in per-sample mode (batch_dims=1): each sample "
            "has its own steps; pass the times you need in ts (shape (B, T)) instead"
        )
    raw = integrate_samples(
        problem, solver, controller, max_steps=max_steps, records=records,  # type: ignore[arg-type]
        on_accept=on_accept, watcher=watcher,
    )  # fmt: skip
    if watcher is not None:
        raw.events = watcher.result(problem.y0.device)
    return raw
