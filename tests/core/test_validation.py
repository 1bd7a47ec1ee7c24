"""Bad input is rejected at the boundary with an error that names the argument, shows what
was received and says how to fix it."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import neuralode
from neuralode import RK4, ConstantStepSize, Dopri5, Euler, PIDController, StepTo, solve
from neuralode.compat import odeint

D = torch.float64


def decay(t, y):
    return -y


@pytest.fixture
def y0():
    return torch.tensor([1.0, 2.0], dtype=D)


@pytest.fixture
def ts():
    return torch.linspace(0.0, 1.0, 5, dtype=D)


# --- output times ----------------------------------------------------------------------


def test_integer_ts(y0):
    with pytest.raises(TypeError, match=r"ts must be floating point.*int64.*ts\.float\(\)"):
        solve(decay, y0, torch.arange(3))


@pytest.mark.parametrize("shape", [(1, 5), (5, 1)])
def test_two_dimensional_ts(y0, ts, shape):
    with pytest.raises(ValueError, match=rf"ts must be 1-D.*shape \({shape[0]}, {shape[1]}\)"):
        solve(decay, y0, ts.reshape(shape))


@pytest.mark.parametrize("bad", [torch.tensor(1.0, dtype=D), torch.tensor([], dtype=D)])
def test_zero_dim_or_empty_ts(y0, bad):
    with pytest.raises(ValueError, match=r"ts must be 1-D with at least one time"):
        solve(decay, y0, bad)


def test_non_monotone_ts(y0):
    ts = torch.tensor([0.0, 1.0, 0.5, 2.0], dtype=D)
    with pytest.raises(ValueError, match=r"strictly increasing or strictly decreasing.*ts\[1\]"):
        solve(decay, y0, ts)


def test_repeated_times(y0):
    ts = torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=D)
    with pytest.raises(ValueError, match=r"ts\[1\]=1\.0 and ts\[2\]=1\.0.*remove repeated"):
        solve(decay, y0, ts)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_ts(y0, bad):
    with pytest.raises(ValueError, match=r"ts must be finite.*(nan|inf)"):
        solve(decay, y0, torch.tensor([0.0, bad], dtype=D))


@pytest.mark.parametrize("bad", [[0.0, 1.0], (0.0, 1.0), np.linspace(0.0, 1.0, 3)])
def test_ts_not_a_tensor(y0, bad):
    with pytest.raises(TypeError, match=r"ts must be a 1-D floating torch\.Tensor.*got"):
        solve(decay, y0, bad)


# --- initial state ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_y0(ts, bad):
    with pytest.raises(ValueError, match=r"y0 contains NaN or inf.*\[\[1\]\]"):
        solve(decay, torch.tensor([1.0, bad], dtype=D), ts)


def test_non_finite_part_of_tuple_y0(ts):
    y0 = (torch.ones(2, dtype=D), torch.tensor([0.0, math.nan], dtype=D))
    with pytest.raises(ValueError, match=r"y0\[1\] contains NaN or inf"):
        solve(lambda t, y: (-y[0], -y[1]), y0, ts)


def test_integer_y0(ts):
    with pytest.raises(TypeError, match=r"y0 must be floating point.*int64.*\.float\(\)"):
        solve(decay, torch.tensor([1, 2]), ts)


@pytest.mark.parametrize("bad", [1.0, [1.0, 2.0], (), None])
def test_y0_not_a_tensor_or_tuple(ts, bad):
    with pytest.raises(TypeError, match=r"y0 must be a tensor or a non-empty tuple of tensors"):
        solve(decay, bad, ts)


def test_numpy_y0(ts):
    with pytest.raises(TypeError, match=r"y0 must be a tensor.*got ndarray"):
        solve(decay, np.ones(2), ts)


def test_tuple_y0_with_a_non_tensor_part(ts):
    with pytest.raises(TypeError, match=r"y0\[1\] must be a torch\.Tensor, got float"):
        solve(lambda t, y: y, (torch.ones(2, dtype=D), 1.0), ts)


def test_tuple_y0_with_mixed_dtypes(ts):
    y0 = (torch.ones(2, dtype=torch.float32), torch.ones(3, dtype=D))
    with pytest.raises(TypeError, match=r"share a dtype.*float32.*y0\[1\] is torch\.float64"):
        solve(lambda t, y: (-y[0], -y[1]), y0, ts)


# --- vector field ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("out_shape", "shown"),
    [
        ((3,), r"\(3,\)"),
        ((), r"\(\)"),  # would broadcast against y
        ((1,), r"\(1,\)"),  # would broadcast against y
        ((1, 2), r"\(1, 2\)"),  # y would broadcast against it
    ],
)
def test_vector_field_wrong_shape(y0, ts, out_shape, shown):
    def f(t, y):
        return torch.ones(out_shape, dtype=D)

    with pytest.raises(ValueError, match=rf"f\(t, y\) returned shape {shown}.*\(2,\).*broadcast"):
        solve(f, y0, ts)


def test_vector_field_wrong_shape_in_tuple_part(ts):
    y0 = (torch.ones(2, dtype=D), torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match=r"f\(t, y\)\[1\] returned shape \(1,\).*\(3,\)"):
        solve(lambda t, y: (-y[0], y[1][:1]), y0, ts)


def test_vector_field_wrong_dtype(y0, ts):
    with pytest.raises(TypeError, match=r"returned dtype torch\.float32.*torch\.float64.*cast"):
        solve(lambda t, y: (-y).float(), y0, ts)


@pytest.mark.parametrize("out", [1.0, [1.0, 2.0], None, np.ones(2)])
def test_vector_field_returns_non_tensor(y0, ts, out):
    with pytest.raises(TypeError, match=r"f\(t, y\) must return a tensor like y0, got"):
        solve(lambda t, y: out, y0, ts)


def test_tuple_vector_field_returns_wrong_arity(ts):
    y0 = (torch.ones(2, dtype=D), torch.ones(2, dtype=D))
    with pytest.raises(TypeError, match=r"must return a tuple of 2 tensors like y0, got tuple"):
        solve(lambda t, y: (-y[0],), y0, ts)


@pytest.mark.parametrize("f", [3, "f", None, torch.ones(2)])
def test_f_not_callable(y0, ts, f):
    with pytest.raises(TypeError, match=r"f must be callable as f\(t, y\), got"):
        solve(f, y0, ts)


# --- tolerances ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("bad", [0.0, -1e-6, math.nan, math.inf, 0])
def test_bad_float_tolerance(name, bad):
    with pytest.raises(ValueError, match=rf"{name} must be positive and finite, got .*{name}="):
        PIDController(**{name: bad})


@pytest.mark.parametrize(
    ("name", "kind"), [("rtol", "pure absolute error control"), ("atol", "pure relative")]
)
@pytest.mark.parametrize("zero", [0.0, 0, torch.tensor([1e-6, 0.0], dtype=D)])
def test_zero_tolerance_says_what_to_pass_instead(name, kind, zero):
    with pytest.raises(ValueError, match=rf"{name} must be positive .*; {kind} .* such as 1e-1"):
        PIDController(**{name: zero})


def test_negative_tolerance_gets_the_typical_values_not_the_zero_hint():
    with pytest.raises(ValueError, match=r"got -1e-06; typical values are rtol=1e-6"):
        PIDController(rtol=-1e-6)


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor(0.0, dtype=D),
        torch.tensor(-1e-6, dtype=D),
        torch.tensor(math.nan, dtype=D),
        torch.tensor([1e-6, 0.0], dtype=D),
    ],
)
def test_bad_tensor_tolerance(name, bad):
    with pytest.raises(ValueError, match=rf"{name} must be positive and finite, got a tensor"):
        PIDController(**{name: bad})


@pytest.mark.parametrize("name", ["rtol", "atol"])
def test_infinite_tensor_tolerance(name):
    with pytest.raises(ValueError, match=rf"{name} must be positive and finite"):
        PIDController(**{name: torch.tensor([1e-6, math.inf], dtype=D)})


@pytest.mark.parametrize("bad", ["1e-6", True, None, torch.tensor([1, 2])])
def test_tolerance_of_wrong_type(bad):
    with pytest.raises(TypeError, match=r"rtol must be"):
        PIDController(rtol=bad)


def test_tolerance_tensor_that_does_not_broadcast(y0, ts):
    controller = PIDController(rtol=torch.full((3,), 1e-6, dtype=D))
    with pytest.raises(ValueError, match=r"shape \(3,\) does not broadcast to the state shape"):
        solve(decay, y0, ts, controller=controller)


def test_compat_rejects_non_positive_tolerance(y0, ts):
    with pytest.raises(ValueError, match=r"atol must be positive"):
        odeint(decay, y0, ts, atol=0.0)


# --- solver and controller -------------------------------------------------------------


def test_adaptive_controller_with_fixed_step_solver(y0, ts):
    with pytest.raises(ValueError, match=r"PIDController.*Euler has none.*ConstantStepSize"):
        solve(decay, y0, ts, solver=Euler(), controller=PIDController())


@pytest.mark.parametrize("solver", [Euler(), RK4()])
def test_fixed_step_solver_without_controller(y0, ts, solver):
    name = type(solver).__name__
    with pytest.raises(ValueError, match=rf"{name} is a fixed-step solver.*ConstantStepSize\(dt="):
        solve(decay, y0, ts, solver=solver)


@pytest.mark.parametrize("dt", [0.0, -0.1, math.nan, math.inf])
def test_bad_constant_step_size(dt):
    with pytest.raises(ValueError, match=r"ConstantStepSize\(dt=\.\.\.\) must be a positive"):
        ConstantStepSize(dt)


@pytest.mark.parametrize("grid", [[0.0], [0.0, 1.0, 0.5]])
def test_bad_step_to_grid(grid):
    with pytest.raises(ValueError, match=r"StepTo\(ts=\.\.\.\)"):
        StepTo(grid)


def test_step_to_grid_not_covering_the_output_times(y0, ts):
    with pytest.raises(ValueError, match=r"StepTo grid \[0\.0, 0\.5\] does not cover"):
        solve(decay, y0, ts, solver=Euler(), controller=StepTo([0.0, 0.5]))


@pytest.mark.parametrize("max_steps", [0, -1, 1.5, 0.0, math.inf, math.nan, True, "10", None])
def test_bad_max_steps(y0, ts, max_steps):
    with pytest.raises(
        ValueError, match=re.escape(f"max_steps must be a positive integer, got {max_steps!r}")
    ):
        solve(decay, y0, ts, max_steps=max_steps)


def test_solver_class_instead_of_instance(y0, ts):
    with pytest.raises(TypeError, match=r"solver must be a neuralode solver instance.*Dopri5\(\)"):
        solve(decay, y0, ts, solver=Dopri5)


@pytest.mark.parametrize("solver", ["dopri5", object()])
def test_unknown_solver_object(y0, ts, solver):
    with pytest.raises(TypeError, match=r"solver must be a neuralode solver instance"):
        solve(decay, y0, ts, solver=solver)


@pytest.mark.parametrize("controller", [1e-6, "pid", PIDController])
def test_unknown_controller_object(y0, ts, controller):
    with pytest.raises(TypeError, match=r"controller must be a neuralode controller"):
        solve(decay, y0, ts, controller=controller)


def test_unknown_adjoint_object(y0, ts):
    with pytest.raises(TypeError, match=r"adjoint must be e\.g\. DirectAdjoint\(\)"):
        solve(decay, y0, ts, adjoint="direct")


# --- torchdiffeq compatibility layer ---------------------------------------------------


@pytest.mark.parametrize("method", ["rk45", "Dopri5", "DOPRI5", ""])
def test_compat_unknown_method(y0, ts, method):
    with pytest.raises(ValueError, match=rf"unknown method={method!r}; choose one of:.*dopri5"):
        odeint(decay, y0, ts, method=method)


@pytest.mark.parametrize(
    ("method", "options", "name"),
    [
        ("dopri5", {"step_size": 0.1}, "Dopri5"),
        ("dopri5", {"foo": 1}, "Dopri5"),
        ("rk4", {"first_step": 0.1}, "RK4"),
        ("rk4", {"rtol": 1e-3}, "RK4"),
    ],
)
def test_compat_unknown_option_warns_like_torchdiffeq(y0, ts, method, options, name):
    # Real code (FFJORD, RNODE) passes step_size/first_step to every method: torchdiffeq
    # warns and goes on, and so does compat.
    key = next(iter(options))
    with pytest.warns(UserWarning, match=rf"{name}: Unexpected arguments \{{'{key}'"):
        odeint(decay, y0, ts, method=method, options=options)


def test_compat_bad_interp(y0, ts):
    with pytest.raises(ValueError, match=r"options\['interp'\] must be 'linear' or 'cubic'"):
        odeint(decay, y0, ts, method="rk4", options={"interp": "quadratic"})


def test_compat_step_size_and_grid_constructor_together(y0, ts):
    options = {"step_size": 0.1, "grid_constructor": lambda f, y0, t: t}
    with pytest.raises(ValueError, match=r"step_size'\] or options\['grid_constructor'\], not"):
        odeint(decay, y0, ts, method="euler", options=options)


def test_compat_event_fn_needs_two_times(y0, ts):
    assert len(ts) > 2
    with pytest.raises(ValueError, match=r"We require len\(t\) == 2 when in event handling mode"):
        odeint(decay, y0, ts, event_fn=lambda t, y: y[0])


def test_compat_bad_max_num_steps(y0, ts):
    with pytest.raises(ValueError, match=r"options\['max_num_steps'\] must be a positive integer"):
        odeint(decay, y0, ts, options={"max_num_steps": 0})


def test_validation_happens_before_any_work(y0, ts):
    calls = []

    def f(t, y):
        calls.append(t)
        return -y

    with pytest.raises(ValueError):
        solve(f, y0, ts, max_steps=0)
    with pytest.raises(ValueError):
        solve(f, y0, torch.tensor([0.0, math.nan], dtype=D))
    assert calls == []


def test_valid_input_is_accepted(y0, ts):
    # The same calls as above with the argument fixed do solve: the checks are not blanket.
    sol = solve(decay, y0, ts, controller=PIDController(rtol=1e-8, atol=1e-10), max_steps=100)
    assert sol.status is neuralode.Status.SUCCESS
    torch.testing.assert_close(sol.ys[-1], y0 * math.exp(-1.0), rtol=1e-6, atol=0)
