"""The joint loop's cost per step, counted: tensor operations and Python calls.

On a CPU each eager tensor operation and each Python call in the loop costs about a
microsecond, and a small neural ODE's step is mostly made of them (issue: joint-mode
speed). Wall time on a shared machine is noise; these counts are deterministic, so a
change that adds work to every step shows here. The counts are per step, from the
difference of two solves of one problem over intervals of different lengths (the
set-up, the first step's choice and the outputs cancel).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import neuralode as no


class _Ops(TorchDispatchMode):
    """Counts the aten operations dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def _decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -y  # one tensor operation per evaluation


def _solve(solver: no.AbstractSolver, t1: float) -> Callable[[], no.Solution]:
    y0 = torch.linspace(1.0, 2.0, 32, dtype=torch.float64)
    ts = torch.tensor([0.0, t1], dtype=torch.float64)
    controller = no.PIDController(rtol=1e-7, atol=1e-9)
    return lambda: no.solve(_decay, y0, ts, solver=solver, controller=controller)


def _counts(run: Callable[[], no.Solution]) -> tuple[int, int, int]:
    """(tensor operations outside f, Python calls, steps) of one solve."""
    run()  # (first-call caches)
    with torch.no_grad(), _Ops() as ops:
        sol = run()
    calls = Counter()

    def profile(frame, event, arg):
        calls[event] += 1

    with torch.no_grad():
        sys.setprofile(profile)
        try:
            run()
        finally:
            sys.setprofile(None)
    return ops.n - sol.stats.nfe, calls["call"], sol.stats.steps


@pytest.mark.parametrize(
    ("solver", "ops_per_step"),
    # Dopri5: 21 ops for the stages' states (one fused add per non-zero tableau entry, y1
    # summed first), 5 time tensors (the last two stages share t1), 6 for the error
    # estimate, 6 for its norm (|y1|, max, +atol/rtol, ÷, 2-norm, host sync: |y0| is the
    # last step's |y1|, and the ÷rtol is on the host). Before: 41 (43 for Tsit5).
    [(no.Dopri5(), 38), (no.Tsit5(), 40)],
)
def test_joint_step_operations(solver, ops_per_step):
    short, long = _counts(_solve(solver, 1.0)), _counts(_solve(solver, 3.0))
    steps = long[2] - short[2]
    assert steps >= 5
    assert (long[0] - short[0]) / steps == ops_per_step


def test_joint_step_python_calls():
    # Measured 53 a step, 24 of them the six evaluations (the wrapper, its call and
    # version check, f itself); the generic step with a combine() call per stage, two
    # no_grad blocks, the per-call time() and (un)flatten methods and the landing point
    # recomputed every step made 89. The bound leaves room for a little bookkeeping.
    short, long = _counts(_solve(no.Dopri5(), 1.0)), _counts(_solve(no.Dopri5(), 3.0))
    assert (long[1] - short[1]) / (long[2] - short[2]) <= 60
