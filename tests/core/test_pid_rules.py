"""PIDController rules: shrink_after_accept (torchdiffeq's, in both modes) and the error ratio."""

from __future__ import annotations

import pytest
import torch

import neuralode as no
from neuralode.solvers._explicit_rk import StepResult

D = torch.float64
ATOL = 1e-6


def _next_dt(controller: no.PIDController, ratio: float, rows: bool) -> tuple[bool, float]:
    """The verdict on a step of size 0.1 whose error ratio is ``ratio`` (y = 0: ε = |e|/atol)."""
    y = torch.zeros(1, 1, dtype=D) if rows else torch.zeros(1, dtype=D)
    step = StepResult(y1=y.clone(), y_error=torch.full_like(y, ratio * ATOL), f1=None, k=())
    if rows:
        ones = torch.ones(1, dtype=D)
        state: tuple = (5, 1e-6, ATOL, ones, ones.clone())
        decision = controller.decide(torch.zeros(1, dtype=D), torch.full((1,), 0.1, dtype=D),
                                     y, step, state)  # fmt: skip
        return bool(decision.accept), float(decision.dt_next)
    decision = controller.decide(0.0, 0.1, y, step, (5, 1e-6, ATOL, 1.0, 1.0, (None, None)))
    return bool(decision.accept), float(decision.dt_next)


@pytest.mark.parametrize("rows", [False, True], ids=["joint", "per-sample"])
def test_an_accepted_step_never_shrinks_the_next_one(rows):
    default = no.PIDController(rtol=1e-6, atol=ATOL)
    torchdiffeqs = no.PIDController(rtol=1e-6, atol=ATOL, shrink_after_accept=False)
    # ε = 0.9: accepted, and safety · ε^(−1/5) = 0.919 < 1.
    assert _next_dt(default, 0.9, rows) == (True, pytest.approx(0.1 * 0.9 * 0.9**-0.2))
    assert _next_dt(torchdiffeqs, 0.9, rows) == (True, pytest.approx(0.1))
    # Growth and rejections are the same rule in both.
    for ratio in (1e-3, 0.3, 2.0, 50.0):
        assert _next_dt(torchdiffeqs, ratio, rows) == _next_dt(default, ratio, rows)


def test_it_solves_to_the_tolerance():
    ts = torch.linspace(0.0, 5.0, 6, dtype=D)
    controller = no.PIDController(rtol=1e-8, atol=1e-10, shrink_after_accept=False)
    sol = no.solve(lambda t, y: -y, torch.ones(2, dtype=D), ts, controller=controller)
    torch.testing.assert_close(sol.ys[:, 0], torch.exp(-ts), rtol=1e-6, atol=0)


def test_it_must_be_a_bool():
    with pytest.raises(TypeError, match=r"shrink_after_accept must be True or False, got 0"):
        no.PIDController(shrink_after_accept=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_error_ratio_holds_atol_over_rtol_beyond_the_16_bit_range(dtype):
    # 2.0 / 2e-5 = 1e5 overflows float16: the ratio must still be |e| / (atol + rtol·|y|).
    controller = no.PIDController(rtol=2e-5, atol=2.0)
    zero = torch.zeros(1, dtype=dtype)
    ratio = controller.error_ratio(zero, zero, torch.ones(1, dtype=dtype), 2e-5, 2.0)
    assert ratio == pytest.approx(0.5, rel=1e-2)
