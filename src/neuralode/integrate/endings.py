"""Why a solve (or a sample) stops: ONE failure table for both drivers.

A :class:`Failure` names the cause; :func:`ending` turns it into the :class:`Status` the
caller sees and the words that explain it. The joint driver finds its failure on the
host as it goes (:func:`hopeless`); the per-sample driver works the codes out as tensors,
and only at steps where a row may have failed (:func:`failures`).
"""

from __future__ import annotations

import enum
import math

import torch

from .._problem import Problem
from .._solution import RawSolution, Stats, Status
from .._vector_field import Counts
from .clock import coarse_clock
from .outputs import Collector
from .rows import Ended, Rows

# Non-finite rejections in a row before giving up even if dt has not underflowed: each one
# shrinks dt by factor_min (0.2 by default), so 40 of them cover 28 orders of magnitude.
MAX_NONFINITE_STREAK = 40


class Failure(enum.IntEnum):
    """Why a solve or a sample stopped early (``NONE``: it did not).

    Integers, so that the per-sample driver keeps one code per row in a tensor.
    """

    NONE = 0
    MAX_STEPS = 1
    DT_MIN = 2
    NONFINITE_UNDERFLOW = 3
    NONFINITE_AT_T0 = 4
    NONFINITE_STREAK = 5
    NONFINITE_AT_STEP = 6
    CLOCK = 7
    FIXED_STEP_NONFINITE = 8
    NEWTON_STREAK = 9
    NEWTON_FIXED_STEP = 10


_TABLE: dict[Failure, tuple[Status, str]] = {
    Failure.NONE: (Status.SUCCESS, ""),
    Failure.MAX_STEPS: (Status.MAX_STEPS, ""),
    Failure.DT_MIN: (Status.DT_MIN, ""),
    Failure.NONFINITE_UNDERFLOW: (
        Status.NONFINITE,
        "the step size underflowed while retrying non-finite steps",
    ),
    Failure.NONFINITE_AT_T0: (Status.NONFINITE, "f(t0, y0) itself is not finite"),
    Failure.NONFINITE_STREAK: (
        Status.NONFINITE,
        f"{MAX_NONFINITE_STREAK} shrunken retries in a row were non-finite",
    ),
    Failure.NONFINITE_AT_STEP: (
        Status.NONFINITE,
        "f(t, y) itself is not finite at the start of the step",
    ),
    # Below the resolution of t rather than dt_min: the words depend on t (see ending()).
    Failure.CLOCK: (Status.DT_MIN, ""),
    Failure.FIXED_STEP_NONFINITE: (
        Status.NONFINITE,
        "a fixed step produced NaN/inf; the step is likely too large for the problem "
        "(or f is not finite there): reduce dt or use an adaptive solver",
    ),
    Failure.NEWTON_STREAK: (
        Status.NEWTON,
        f"{MAX_NONFINITE_STREAK} shrunken retries in a row did not converge",
    ),
    Failure.NEWTON_FIXED_STEP: (
        Status.NEWTON,
        "a fixed step's Newton iteration did not converge: reduce dt, or use an adaptive "
        "implicit solver (Kvaerno5())",
    ),
}

# A failure of non-finite steps whose last rejection was a Newton iteration that did not
# converge (an implicit solver marks such a step non-finite) is that failure instead.
NEWTON_FAILURES = {
    Failure.NONFINITE_STREAK: Failure.NEWTON_STREAK,
    Failure.FIXED_STEP_NONFINITE: Failure.NEWTON_FIXED_STEP,
}


def linear_algebra(counts: Counts) -> dict[str, int]:
    """An implicit solver's Jacobians, factorisations and linear solves, for :class:`Stats`."""
    return {"njev": counts.njev, "nlu": counts.nlu, "nsolve": counts.nsolve}


def ending(failure: Failure, t: float, t_dtype: torch.dtype) -> tuple[Status, str]:
    """The status and the explanation of ``failure`` at time ``t`` (the clock's dtype)."""
    if failure is Failure.CLOCK:
        return Status.DT_MIN, coarse_clock(t, t_dtype)
    return _TABLE[failure]


def hopeless(nonfinite: bool, adaptive: bool, streak: int, f0: torch.Tensor) -> Failure:
    """Joint driver: whether retrying a rejected step with a smaller dt cannot help.

    Only a non-finite step can be hopeless: with a fixed step size (nothing to shrink),
    after :data:`MAX_NONFINITE_STREAK` shrunken retries in a row, or when ``f`` itself
    was not finite at the start of the step (``streak`` counts this step too).
    """
    if not nonfinite:
        return Failure.NONE
    if not adaptive:
        return Failure.FIXED_STEP_NONFINITE
    if streak >= MAX_NONFINITE_STREAK:
        return Failure.NONFINITE_STREAK
    if streak == 1 and not bool(torch.isfinite(f0).all()):
        return Failure.NONFINITE_AT_STEP
    return Failure.NONE


def failures(
    rows: Rows,
    underflow: torch.Tensor,
    clock: torch.Tensor,
    streak: torch.Tensor,
    leaving: torch.Tensor,
    max_steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample driver: the rows that leave at a step where some may have failed, and why.

    ``rows`` as they were before the step; ``underflow``, the rows that did not step (a
    live row with steps left that did not step had its step underflow), ``clock``, the
    rows whose proposal respected ``dt_min`` (so their underflow is the clock's); the new
    ``streak`` of non-finite retries and the ``leaving`` candidates from the step. A row
    stops when it could not step (out of steps, step underflow) or when a non-finite step
    is not worth retrying: ``f`` itself was not finite at the start, or the retries ran
    out. The same rules as :func:`hopeless` and the joint driver's, one code per row.
    """
    nonfinite = streak > 0  # the streak counts the step's non-finite rows, only them
    step_lost = torch.where(clock, Failure.CLOCK, Failure.DT_MIN)
    lost = torch.where(rows.streak > 0, Failure.NONFINITE_UNDERFLOW, step_lost)
    code = torch.where(underflow, lost, Failure.NONE)
    code = torch.where(rows.live, torch.where(rows.steps >= max_steps, Failure.MAX_STEPS, code), 0)
    f0_bad = ~torch.isfinite(rows.f0).all(dim=-1)
    code = torch.where(nonfinite & (streak == 1) & f0_bad, Failure.NONFINITE_AT_STEP, code)
    code = torch.where(nonfinite & (streak >= MAX_NONFINITE_STREAK), Failure.NONFINITE_STREAK, code)
    return leaving & ((code != 0) | ~nonfinite), code


def sample_result(problem: Problem, outputs: Collector, ended: Ended) -> RawSolution:
    """The solution: outputs, per-sample statuses and statistics from the finished rows."""
    batch, n_times = problem.sample_taus.shape  # type: ignore[union-attr]
    codes = [Failure(c) for c in ended.code.tolist()]
    sample_status = tuple(_TABLE[c][0] for c in codes)
    failed = [i for i, c in enumerate(codes) if c]
    status, detail = Status.SUCCESS, ""
    if failed:
        first = failed[0]
        status, detail = ending(codes[first], float(ended.t_last[first]), problem.ts.dtype)
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
        **linear_algebra(problem.f.counts),
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
        dt_last=float(ended.dt_last[failed[0]]) if failed else math.nan,
        detail=detail,
        sample_status=sample_status,
    )
