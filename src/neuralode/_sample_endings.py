"""Why samples stop in per-sample mode, and the solution they leave behind.

The per-sample loop (:mod:`neuralode._sample_loop`) works out a failure code only at
steps where a row may have failed; these are the codes, the rules that give them, and
the assembly of the final :class:`~neuralode._loop.RawSolution` from the finished rows.
"""

from __future__ import annotations

import math

import torch

from ._loop import _MAX_NONFINITE_STREAK, RawSolution, coarse_clock
from ._problem import Problem
from ._sample_rows import Collector, Ended, Rows
from ._solution import Stats, Status

# Why a sample stopped: 0 = still running or succeeded.
ENDINGS: dict[int, tuple[Status, str]] = {
    1: (Status.MAX_STEPS, ""),
    2: (Status.DT_MIN, ""),
    3: (Status.NONFINITE, "the step size underflowed while retrying non-finite steps"),
    4: (Status.NONFINITE, "f(t0, y0) itself is not finite"),
    5: (Status.NONFINITE, f"{_MAX_NONFINITE_STREAK} shrunken retries in a row were non-finite"),
    6: (Status.NONFINITE, "f(t, y) itself is not finite at the start of the step"),
    7: (Status.DT_MIN, ""),  # below the resolution of t, not dt_min: see coarse_clock()
}


def failures(
    rows: Rows,
    underflow: torch.Tensor,
    clock: torch.Tensor,
    streak: torch.Tensor,
    leaving: torch.Tensor,
    max_steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows that leave at a step where some may have failed, and why (``ENDINGS``).

    ``rows`` as they were before the step; ``underflow``, the rows that did not step (a
    live row with steps left that did not step had its step underflow), ``clock``, the
    rows whose proposal respected ``dt_min`` (so their underflow is the clock's); the new
    ``streak`` of non-finite retries and the ``leaving`` candidates from the step. A row
    stops when it could not step (out of steps, step underflow) or when a non-finite step
    is not worth retrying: ``f`` itself was not finite at the start, or the retries ran out.
    """
    nonfinite = streak > 0  # the streak counts the step's non-finite rows, only them
    code = torch.where(underflow, torch.where(rows.streak > 0, 3, torch.where(clock, 7, 2)), 0)
    code = torch.where(rows.live, torch.where(rows.steps >= max_steps, 1, code), 0)
    f0_bad = ~torch.isfinite(rows.f0).all(dim=-1)
    code = torch.where(nonfinite & (streak == 1) & f0_bad, 6, code)
    code = torch.where(nonfinite & (streak >= _MAX_NONFINITE_STREAK), 5, code)
    return leaving & ((code != 0) | ~nonfinite), code


def sample_result(problem: Problem, outputs: Collector, ended: Ended) -> RawSolution:
    """The solution: outputs, per-sample statuses and statistics from the finished rows."""
    batch, n_times = problem.sample_taus.shape  # type: ignore[union-attr]
    codes = ended.code.tolist()
    sample_status = tuple(ENDINGS[c][0] if c else Status.SUCCESS for c in codes)
    failed = [i for i, c in enumerate(codes) if c]
    status, detail = Status.SUCCESS, ""
    if failed:
        status, detail = ENDINGS[codes[failed[0]]]
        if codes[failed[0]] == 7:
            detail = coarse_clock(float(ended.t_last[failed[0]]), problem.ts.dtype)
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
        dt_last=float(ended.dt_last[failed[0]]) if failed else math.nan,
        detail=detail,
        sample_status=sample_status,
    )
