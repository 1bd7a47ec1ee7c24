"""Failure injection: a NaN inside a solve is a rejected step; if it persists the solve
stops with a SolverError naming the cause, t, dt and the step count. Never a hang."""

from __future__ import annotations

import math
import time

import pytest
import torch

from neuralode import (
    RK4,
    ConstantStepSize,
    Dopri5,
    Euler,
    PIDController,
    SolverError,
    Status,
    Tsit5,
    solve,
)

D = torch.float64


def nonfinite_after(t_bad: float, value: float = math.nan):
    """``-y`` until ``t_bad``, then ``value`` everywhere."""

    def f(t, y):
        return torch.full_like(y, value) if t > t_bad else -y

    return f


def solve_error(*args, **kwargs) -> SolverError:
    with pytest.raises(SolverError) as info:
        solve(*args, **kwargs)
    return info.value


# --- persistent non-finite values ------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("solver", [Dopri5(), Tsit5()])
def test_nonfinite_field_after_half(value, solver):
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    ts = torch.linspace(0.0, 1.0, 11, dtype=D)
    err = solve_error(nonfinite_after(0.5, value), y0, ts, solver=solver)
    assert err.status is Status.NONFINITE
    assert err.t == pytest.approx(0.5, abs=1e-9)
    assert abs(err.dt) < 1e-9  # it shrank the step before giving up
    assert 0 < err.steps < 300  # and gave up quickly
    assert "non-finite" in str(err)


def test_nonfinite_field_in_reverse_time():
    y0 = torch.tensor([1.0], dtype=D)
    ts = torch.tensor([1.0, 0.0], dtype=D)

    def f(t, y):
        return torch.full_like(y, math.nan) if t < 0.5 else -y

    err = solve_error(f, y0, ts)
    assert err.status is Status.NONFINITE
    assert err.t == pytest.approx(0.5, abs=1e-9)
    assert err.dt <= 0  # signed like the caller's time


def test_nonfinite_field_in_float32():
    y0 = torch.tensor([1.0, 0.5])
    ts = torch.linspace(0.0, 1.0, 11)
    err = solve_error(nonfinite_after(0.5), y0, ts)
    assert err.status is Status.NONFINITE
    assert err.t == pytest.approx(0.5, abs=1e-5)


def test_field_nonfinite_at_the_initial_point_fails_at_once():
    y0 = torch.tensor([1.0], dtype=D)
    err = solve_error(lambda t, y: y * math.nan, y0, torch.tensor([0.0, 1.0], dtype=D))
    assert err.status is Status.NONFINITE
    assert err.t == 0.0
    assert err.steps <= 1
    assert "itself is not finite" in str(err)


def test_field_nonfinite_at_the_initial_point_reports_a_finite_dt():
    y0 = torch.tensor([1.0], dtype=D)
    err = solve_error(lambda t, y: y * math.nan, y0, torch.tensor([0.0, 1.0], dtype=D))
    assert math.isfinite(err.dt)


def test_field_nonfinite_everywhere_but_t0_does_not_hang():
    y0 = torch.tensor([1.0], dtype=D)

    def f(t, y):
        return -y if t == 0 else y * math.nan

    start = time.perf_counter()
    err = solve_error(f, y0, torch.tensor([0.0, 1.0], dtype=D))
    assert time.perf_counter() - start < 5.0
    assert err.status is Status.NONFINITE
    assert err.t == 0.0
    assert err.steps <= 60


# --- transient non-finite values -------------------------------------------------------


def test_nan_avoided_by_shrinking_the_step():
    # f is NaN for y < 0. The true solution e^{-10t} stays positive, but a first step of
    # 1.0 overshoots (its stages go negative): those steps are rejected, not fatal.
    nan_seen = []

    def f(t, y):
        out = torch.where(y < 0, torch.full_like(y, math.nan), -10 * y)
        nan_seen.append(bool(torch.isnan(out).any()))
        return out

    y0 = torch.tensor([1.0], dtype=D)
    ts = torch.tensor([0.0, 1.0], dtype=D)
    controller = PIDController(rtol=1e-8, atol=1e-10, dt0=1.0)
    sol = solve(f, y0, ts, controller=controller)
    assert any(nan_seen)
    assert sol.status is Status.SUCCESS
    assert sol.stats.rejected >= 1
    assert sol.ys[-1].item() == pytest.approx(math.exp(-10.0), rel=1e-6)


# --- finite-time blow-up, stiffness, step budget ---------------------------------------


def test_finite_time_blow_up_stops_near_the_singularity():
    y0 = torch.tensor([1.0], dtype=D)  # y = 1 / (1 - t): singular at t = 1
    start = time.perf_counter()
    err = solve_error(lambda t, y: y * y, y0, torch.tensor([0.0, 2.0], dtype=D))
    assert time.perf_counter() - start < 5.0
    assert err.status in (Status.DT_MIN, Status.MAX_STEPS)
    assert err.t == pytest.approx(1.0, abs=1e-3)


def test_dt_min_ends_the_solve_with_dt_min():
    y0 = torch.tensor([1.0], dtype=D)
    controller = PIDController(dt_min=1e-3)
    sol = solve(
        lambda t, y: y * y,
        y0,
        torch.tensor([0.0, 2.0], dtype=D),
        controller=controller,
        max_steps=1000,
        throw=False,
    )
    assert sol.status is Status.DT_MIN
    assert sol.stats.steps < 1000  # not retried at dt_min until the budget runs out
    assert 0.9 < sol.t_last < 1.0


def test_stiff_problem_with_explicit_solver_runs_out_of_steps_quickly():
    y0 = torch.tensor([0.0], dtype=D)
    ts = torch.tensor([0.0, 10.0], dtype=D)
    start = time.perf_counter()
    err = solve_error(lambda t, y: -1e6 * (y - torch.cos(t)), y0, ts, max_steps=300)
    assert time.perf_counter() - start < 3.0
    assert err.status is Status.MAX_STEPS
    assert err.steps == 300
    assert 0.0 < err.t < 0.1
    assert "max_steps" in str(err)


def oscillator(t, y):
    return torch.stack([y[1], -y[0]])


def test_max_steps_is_a_total_budget_not_per_output_interval():
    y0 = torch.tensor([1.0, 0.0], dtype=D)
    ts = torch.linspace(0.0, 20.0, 201, dtype=D)
    controller = PIDController(rtol=1e-10, atol=1e-10)
    one_interval = solve(oscillator, y0, ts[:2], controller=controller)
    whole = solve(oscillator, y0, ts, controller=controller)
    budget = 100
    assert one_interval.stats.steps < budget / 10 < budget < whole.stats.steps

    err = solve_error(oscillator, y0, ts, controller=controller, max_steps=budget)
    assert err.status is Status.MAX_STEPS
    assert err.steps == budget
    assert err.t < 20.0


# --- throw=False -----------------------------------------------------------------------


def _exact_decay(t: float) -> torch.Tensor:
    return torch.tensor([1.0, 0.5], dtype=D) * math.exp(-t)


def _exact_decay_at(ts: torch.Tensor) -> torch.Tensor:
    return torch.stack([_exact_decay(float(t)) for t in ts])


@pytest.mark.parametrize(
    ("case", "status"),
    [("nan", Status.NONFINITE), ("budget", Status.MAX_STEPS), ("blowup", Status.DT_MIN)],
)
def test_throw_false_marks_exactly_the_unreached_outputs(case, status):
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    ts = torch.linspace(0.0, 1.7, 18, dtype=D)  # 0.1 apart, never exactly on t_last
    kwargs = {}
    if case == "nan":
        f = nonfinite_after(0.55)
    elif case == "budget":
        f, kwargs = (lambda t, y: -y), {"max_steps": 30, "controller": PIDController(1e-12, 1e-12)}
    else:
        f = lambda t, y: y * y  # noqa: E731 -- y0 = (1, 0.5) blows up at t = 1
    sol = solve(f, y0, ts, throw=False, **kwargs)

    assert sol.status is status
    assert not sol.success
    assert 0.0 < sol.t_last < 1.7
    reached = ts <= sol.t_last
    assert 0 < int(reached.sum()) < len(ts)
    assert torch.isfinite(sol.ys[reached]).all()
    assert torch.isnan(sol.ys[~reached]).all()
    assert torch.isfinite(sol.y_last).all()
    if case == "nan":
        assert sol.t_last == pytest.approx(0.55, abs=1e-9)
        torch.testing.assert_close(sol.y_last, _exact_decay(0.55), rtol=1e-5, atol=0)
    if case == "blowup":
        assert sol.t_last == pytest.approx(1.0, abs=1e-3)


def test_throw_false_agrees_with_the_error():
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    ts = torch.linspace(0.0, 1.0, 11, dtype=D)
    f = nonfinite_after(0.55)
    sol = solve(f, y0, ts, throw=False)
    err = solve_error(f, y0, ts)
    assert sol.status is err.status is Status.NONFINITE
    assert sol.t_last == err.t
    assert sol.stats.steps == err.steps
    torch.testing.assert_close(sol.ys[:6], _exact_decay_at(ts[:6]), rtol=1e-5, atol=0)
    assert torch.isnan(sol.ys[6:]).all()


def test_throw_false_tuple_state():
    y0 = (torch.tensor([1.0], dtype=D), torch.tensor([[0.5, 2.0]], dtype=D))
    ts = torch.linspace(0.0, 1.0, 11, dtype=D)

    def f(t, y):
        if t > 0.55:
            return (y[0] * math.nan, y[1])
        return (-y[0], -y[1])

    sol = solve(f, y0, ts, throw=False)
    assert sol.status is Status.NONFINITE
    assert isinstance(sol.ys, tuple) and isinstance(sol.y_last, tuple)
    assert sol.ys[0].shape == (11, 1) and sol.ys[1].shape == (11, 1, 2)
    for part in sol.ys:
        assert torch.isfinite(part[:6]).all()
        assert torch.isnan(part[6:]).all()
    assert all(torch.isfinite(part).all() for part in sol.y_last)


def test_throw_false_on_success_has_no_nan():
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    ts = torch.linspace(0.0, 1.0, 11, dtype=D)
    sol = solve(lambda t, y: -y, y0, ts, throw=False)
    assert sol.success
    assert sol.t_last == 1.0
    assert torch.isfinite(sol.ys).all()


# --- fixed-step solvers ----------------------------------------------------------------


@pytest.mark.parametrize("solver", [Euler(), RK4()])
def test_fixed_step_solver_blowing_up_raises_nonfinite(solver):
    # y' = -10 y with dt = 1 is far outside the stability region: |y| overflows to inf.
    y0 = torch.tensor([1.0], dtype=D)
    ts = torch.tensor([0.0, 1000.0], dtype=D)
    err = solve_error(lambda t, y: -10 * y, y0, ts, solver=solver, controller=ConstantStepSize(1.0))
    assert err.status is Status.NONFINITE
    assert err.dt == 1.0  # a fixed step is never shrunk
    assert 10.0 < err.t < 1000.0
    assert err.steps == round(err.t) + 1  # every step accepted but the failing one


def test_fixed_step_nan_is_reported_at_once_not_retried():
    y0 = torch.tensor([1.0], dtype=D)
    ts = torch.tensor([0.0, 1.0], dtype=D)
    sol = solve(
        nonfinite_after(0.45),
        y0,
        ts,
        solver=RK4(),
        controller=ConstantStepSize(0.1),
        throw=False,
    )
    assert sol.status is Status.NONFINITE
    assert sol.t_last == pytest.approx(0.4)
    assert sol.stats.rejected == 1


# --- the error itself ------------------------------------------------------------------


def test_solver_error_message_names_t_dt_and_steps():
    y0 = torch.tensor([1.0], dtype=D)
    err = solve_error(lambda t, y: -y, y0, torch.tensor([0.0, 5.0], dtype=D), max_steps=3)
    text = str(err)
    assert isinstance(err, RuntimeError)
    assert err.status is Status.MAX_STEPS
    assert f"t={err.t:.6g}" in text
    assert f"dt={err.dt:.3g}" in text
    assert "after 3 steps" in text
    assert err.status.message in text


class _PoisonedAfterForward(torch.nn.Module):
    """``-θ y`` in the forward solve; NaN for the flagged samples once ``poisoned`` is set,
    which the test does between the forward solve and ``backward()``."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(1.0, dtype=D))
        self.poisoned = False

    def forward(self, t, y, flag=None):
        out = -self.theta * y
        if not self.poisoned:
            return out
        bad = torch.ones_like(y, dtype=torch.bool) if flag is None else flag[:, None].expand_as(y)
        return torch.where(bad, torch.full_like(y, math.nan), out)


@pytest.mark.parametrize("per_sample", [False, True], ids=["joint", "per-sample"])
def test_a_failed_backward_solve_raises_instead_of_returning_nan_gradients(per_sample):
    from neuralode import BacksolveAdjoint

    f = _PoisonedAfterForward()
    y0 = torch.ones(3, 2, dtype=D, requires_grad=True)
    ts = torch.linspace(0.0, 1.0, 3, dtype=D)
    kwargs = {"batch_dims": 1, "args": torch.tensor([False, True, False])} if per_sample else {}
    sol = solve(f, y0, ts, adjoint=BacksolveAdjoint(), **kwargs)
    f.poisoned = True
    with pytest.raises(SolverError) as info:
        sol.ys[-1].sum().backward()
    error = info.value
    assert error.status is Status.NONFINITE
    assert "BacksolveAdjoint's backward solve" in str(error)
    assert error.samples == ([1] if per_sample else None)
    assert 0.0 <= error.t <= 1.0
