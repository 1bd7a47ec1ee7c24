"""Hypothesis properties of solve(): reversibility, output-time independence, state
structure independence, and agreement with the matrix exponential."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neuralode import (
    RK4,
    AdaptiveHeun,
    Bosh3,
    ConstantStepSize,
    Dopri5,
    Dopri8,
    Fehlberg2,
    PIDController,
    Tsit5,
    solve,
)

D = torch.float64
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

dims = st.integers(min_value=2, max_value=3)
coefficients = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, allow_subnormal=False)
initial_values = st.floats(min_value=-2.0, max_value=2.0, allow_nan=False, allow_subnormal=False)
horizons = st.floats(min_value=0.1, max_value=3.0)


@st.composite
def linear_problems(draw):
    """``(A, y0, T)``: a random ``n × n`` matrix with entries in [-1, 1], ``y0``, ``T``."""
    n = draw(dims)
    a = draw(arrays(np.float64, (n, n), elements=coefficients))
    y0 = draw(arrays(np.float64, (n,), elements=initial_values))
    return torch.tensor(a, dtype=D), torch.tensor(y0, dtype=D), draw(horizons)


def field(a: torch.Tensor, nonlinear: bool):
    def f(t, y):
        out = a @ y
        return out + 0.3 * torch.sin(y) if nonlinear else out

    return f


def scale(*ys: torch.Tensor) -> float:
    return max(1.0, *(float(y.abs().max()) for y in ys))


@PROPERTY
@given(problem=linear_problems(), nonlinear=st.booleans())
def test_forward_then_backward_returns_to_y0(problem, nonlinear):
    a, y0, horizon = problem
    f = field(a, nonlinear)
    tol = 1e-10
    controller = PIDController(rtol=tol, atol=tol)
    forward = solve(f, y0, torch.tensor([0.0, horizon], dtype=D), controller=controller)
    back = solve(f, forward.ys[-1], torch.tensor([horizon, 0.0], dtype=D), controller=controller)
    assert forward.success and back.success
    error = float((back.ys[-1] - y0).abs().max())
    assert error <= 200 * tol * scale(y0, forward.ys[-1])


SOLVERS = [Dopri5(), Tsit5(), Dopri8(), Bosh3(), Fehlberg2(), AdaptiveHeun()]


@PROPERTY
@given(
    problem=linear_problems(),
    solver_index=st.integers(min_value=0, max_value=len(SOLVERS)),
    extra=st.lists(st.floats(min_value=0.01, max_value=0.99), min_size=1, max_size=8),
)
def test_extra_output_times_change_nothing_else(problem, solver_index, extra):
    a, y0, horizon = problem
    f = field(a, nonlinear=True)
    if solver_index == len(SOLVERS):  # a fixed-step solver on a constant grid
        kwargs = {"solver": RK4(), "controller": ConstantStepSize(horizon / 7)}
    else:
        kwargs = {"solver": SOLVERS[solver_index], "controller": PIDController(1e-6, 1e-8)}
    ts = torch.linspace(0.0, horizon, 4, dtype=D)
    original = set(ts.tolist())
    extra_ts = {horizon * x for x in extra} - original
    merged = torch.tensor(sorted(original | extra_ts), dtype=D)
    at_original = torch.tensor([t in original for t in merged.tolist()])

    base = solve(f, y0, ts, **kwargs)
    more = solve(f, y0, merged, **kwargs)
    assert more.ys.shape == (len(merged), len(y0))
    torch.testing.assert_close(
        more.ys[at_original], base.ys, rtol=0, atol=1e-9 * scale(base.ys), equal_nan=False
    )
    assert more.stats.accepted == base.stats.accepted
    assert more.stats.steps == base.stats.steps
    # Hermite interpolation inside the final step costs its f(t1, y1), which a solve with
    # no output inside that step skips: at most one evaluation more.
    assert base.stats.nfe <= more.stats.nfe <= base.stats.nfe + 1


@PROPERTY
@given(problem=linear_problems(), split=st.integers(min_value=1, max_value=2), dense=st.booleans())
def test_tuple_state_equals_concatenated_state(problem, split, dense):
    a, y0, horizon = problem
    split = min(split, len(y0) - 1)
    f = field(a, nonlinear=True)

    def f_tuple(t, y):
        out = f(t, torch.cat([y[0], y[1].reshape(-1)]))
        return out[:split], out[split:].reshape(y[1].shape)

    ts = torch.linspace(0.0, horizon, 5, dtype=D)
    y_tuple = (y0[:split].clone(), y0[split:].reshape(1, -1).clone())
    flat = solve(f, y0, ts, dense=dense)
    parts = solve(f_tuple, y_tuple, ts, dense=dense)
    assert isinstance(parts.ys, tuple) and len(parts.ys) == 2
    assert parts.ys[1].shape == (len(ts), 1, len(y0) - split)
    joined = torch.cat([parts.ys[0], parts.ys[1].reshape(len(ts), -1)], dim=1)
    torch.testing.assert_close(joined, flat.ys, rtol=1e-12, atol=1e-12)
    assert parts.stats == flat.stats


@PROPERTY
@given(problem=linear_problems(), reverse=st.booleans())
def test_linear_system_matches_matrix_exponential(problem, reverse):
    a, y0, horizon = problem
    sign = -1.0 if reverse else 1.0
    ts = torch.linspace(0.0, sign * horizon, 5, dtype=D)
    tol = 1e-10
    sol = solve(field(a, nonlinear=False), y0, ts, controller=PIDController(rtol=tol, atol=tol))
    exact = torch.stack([torch.linalg.matrix_exp(a * t) @ y0 for t in ts])
    error = float((sol.ys - exact).abs().max())
    assert error <= 100 * tol * scale(exact)


@PROPERTY
@given(problem=linear_problems())
def test_reverse_time_solve_is_the_mirrored_forward_solve(problem):
    a, y0, horizon = problem
    f = field(a, nonlinear=True)

    def f_time_dependent(t, y):
        return f(t, y) * torch.cos(t)

    def mirrored(s, z):
        return -f_time_dependent(-s, z)

    backward = solve(f_time_dependent, y0, torch.linspace(0.0, -horizon, 4, dtype=D))
    forward = solve(mirrored, y0, torch.linspace(0.0, horizon, 4, dtype=D))
    torch.testing.assert_close(backward.ys, forward.ys, rtol=1e-12, atol=1e-12)
    assert backward.stats == forward.stats
