"""Inputs that used to give a silent wrong answer or a torch traceback now give a clear error
(or, for complex states, a correct solution).

Each test here failed on the code before these checks: an in-place vector field returned
SUCCESS with a wrong answer and changed the caller's y0; a float64 output at t > 0 turned
ys into float64; float16 with the default tolerances blamed the vector field; unstable PID
coefficients were accepted; NaN stop times were ignored; and so on.
"""

from __future__ import annotations

import functools
import linecache
import math
import os
import signal
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import neuralode as no
from neuralode import PIDController, solve
from neuralode.compat import odeint

D = torch.float64


def decay(t, y):
    return -y


@pytest.fixture
def ts():
    return torch.linspace(0.0, 1.0, 5, dtype=D)


# --- a vector field that writes into y -------------------------------------------------


def _inplace_mul(t, y):
    y *= 1.0001
    return -y


def _inplace_after_t0(t, y):
    if float(t.reshape(-1)[0]) > 0:
        y.add_(0.0)  # even a no-op write is a write: the solver cannot tell
    return -y


def _inplace_tuple_part(t, y):
    y[1][0] = 3.0
    return (-y[0], -y[1])


def _relu_inplace_module():
    return torch.nn.Sequential(torch.nn.ReLU(inplace=True)).double()


@pytest.mark.parametrize("adjoint", [no.DirectAdjoint(), no.CheckpointAdjoint()])
@pytest.mark.parametrize("f", [_inplace_mul, _inplace_after_t0])
def test_in_place_write_into_y_is_an_error_and_y0_is_untouched(ts, f, adjoint):
    y0 = torch.tensor([1.0, 2.0], dtype=D)
    with pytest.raises(ValueError, match=r"modified its input y in place.*y = y \* 2"):
        solve(f, y0, ts, adjoint=adjoint)
    assert y0.tolist() == [1.0, 2.0]


@pytest.mark.parametrize("needs_grad", ["y0", "ts", "tuple"])
def test_in_place_write_when_autograd_refuses_it_first(ts, needs_grad):
    # With y0 or ts needing grad, y reaches f as a view that autograd forbids writing into;
    # its "view ... modified inplace" RuntimeError is now the same clear error.
    y0 = torch.ones(2, dtype=D, requires_grad=needs_grad == "y0")
    f = _inplace_mul
    if needs_grad == "tuple":
        y0 = (torch.ones(2, dtype=D, requires_grad=True), torch.ones(2, dtype=D))
        f = _inplace_tuple_part
    ts = ts.clone().requires_grad_(needs_grad == "ts")
    with pytest.raises(ValueError, match=r"modified its input y in place"):
        solve(f, y0, ts)


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_in_place_write_under_inference_mode(ts, batch_dims):
    # Inference tensors keep no version counter: the first call compares with y0 instead.
    y0 = torch.ones(3, 2, dtype=D)
    with torch.inference_mode(), pytest.raises(ValueError, match=r"in place"):
        solve(_inplace_mul, y0, ts, batch_dims=batch_dims)
    assert bool((y0 == 1).all())
    with torch.inference_mode():
        assert solve(decay, y0, ts, batch_dims=batch_dims).success


def test_in_place_error_names_the_time(ts):
    with pytest.raises(ValueError, match=r"in place \(at t=0\.\d+"):
        solve(_inplace_after_t0, torch.ones(2, dtype=D), ts)


def test_in_place_write_into_a_tuple_part(ts):
    y0 = (torch.ones(2, dtype=D), torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match=r"modified its input y in place"):
        solve(_inplace_tuple_part, y0, ts)
    assert y0[1].tolist() == [1.0, 1.0, 1.0]


def test_in_place_activation_module(ts):
    y0 = torch.tensor([1.0, -2.0], dtype=D)
    with pytest.raises(ValueError, match=r"in place.*nn\.ReLU\(inplace=True\)"):
        solve(lambda t, y: _relu_inplace_module()(y), y0, ts)
    assert y0.tolist() == [1.0, -2.0]


@pytest.mark.parametrize("shape", [(4, 2), (4, 2, 3)])
@pytest.mark.parametrize("f", [_inplace_mul, _inplace_after_t0])
def test_in_place_write_per_sample(ts, f, shape):
    y0 = torch.ones(shape, dtype=D)
    with pytest.raises(ValueError, match=r"modified its input y in place"):
        solve(f, y0, ts, batch_dims=1)
    assert bool((y0 == 1).all())


def test_in_place_write_through_compat(ts):
    y0 = torch.ones(3, dtype=D)
    with pytest.raises(ValueError, match=r"modified its input y in place"):
        odeint(_inplace_mul, y0, ts)
    assert bool((y0 == 1).all())


def test_a_field_that_writes_only_its_own_tensors_is_fine(ts):
    def f(t, y):
        out = torch.empty_like(y)
        out.copy_(y).mul_(-1)  # in place, but not on y
        return out

    sol = solve(f, torch.ones(2, dtype=D), ts)
    assert torch.allclose(sol.ys[-1], torch.full((2,), math.exp(-1), dtype=D), rtol=1e-6)


# --- the vector field's output at t > t0 -----------------------------------------------


def _late(kind):
    calls = []

    def f(t, y):
        calls.append(t)
        if len(calls) < 3:
            return (-y[0], -y[1]) if isinstance(y, tuple) else -y
        if kind == "dtype":
            return (-y).double()
        if kind == "shape":
            return (-y)[..., :1]  # broadcasts against y
        return (-y[0], (-y[1]).double())

    return f


def test_late_wrong_dtype_is_an_error_not_a_float64_solution():
    ts = torch.linspace(0.0, 1.0, 5)
    with pytest.raises(TypeError, match=r"returned dtype torch\.float64.*float32 \(at t=0\.\d+"):
        solve(_late("dtype"), torch.ones(3), ts)


def test_late_broadcastable_shape_is_an_error_not_an_internal_one(ts):
    with pytest.raises(ValueError, match=r"returned shape \(1,\) but .* \(3,\) \(at t=0\.\d+"):
        solve(_late("shape"), torch.ones(3, dtype=D), ts)


def test_late_wrong_dtype_in_a_tuple_part(ts):
    y0 = (torch.ones(2), torch.ones(2))
    with pytest.raises(TypeError, match=r"f\(t, y\)\[1\] returned dtype torch\.float64"):
        solve(_late("tuple"), y0, ts.float())


def test_late_wrong_shape_per_sample(ts):
    with pytest.raises(ValueError, match=r"returned shape \(4, 1\) but .* \(4, 3\) \(at t=\["):
        solve(_late("shape"), torch.ones(4, 3, dtype=D), ts, batch_dims=1)


def test_output_on_another_device_is_named():
    y0 = torch.ones(2, dtype=D)
    with pytest.raises(TypeError, match=r"returned a tensor on meta"):
        solve(lambda t, y: torch.empty(2, dtype=D, device="meta"), y0, torch.tensor([0.0, 1.0]))


# --- tolerances the dtype cannot resolve, error norms, PID coefficients -----------------


def test_float16_with_default_tolerances_names_atol_not_the_field():
    y0, ts = torch.ones(3, dtype=torch.float16), torch.linspace(0, 1, 5, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"atol=1e-08 is below the smallest normal float16"):
        solve(decay, y0, ts)


def test_bfloat16_with_default_tolerances_names_rtol():
    # Before: accepted, and with rtol=1e-7 the state stopped moving (error 3 on y0 = 3).
    y0 = torch.full((3,), 3.0, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"rtol=1e-0[67] is below what bfloat16 can resolve"):
        solve(decay, y0, torch.linspace(0, 5, 5), controller=PIDController(rtol=1e-7, atol=1e-9))


def test_float16_with_tolerances_it_resolves_works():
    y0, ts = torch.ones(3, dtype=torch.float16), torch.linspace(0, 1, 5, dtype=torch.float16)
    sol = solve(decay, y0, ts, controller=PIDController(rtol=1e-3, atol=1e-4))
    assert abs(float(sol.ys[-1, 0]) - math.exp(-1)) < 2e-3


def test_float32_keeps_torchdiffeq_default_tolerances():
    ys = odeint(decay, torch.ones(2), torch.linspace(0, 1, 3))  # rtol 1e-7 < float32 eps
    assert abs(float(ys[-1, 0]) - math.exp(-1)) < 1e-6


def test_a_tensor_atol_below_the_dtype_resolution():
    y0, ts = torch.ones(2, dtype=torch.float16), torch.tensor([0.0, 1.0], dtype=torch.float16)
    atol = torch.tensor([1e-3, 1e-6])
    with pytest.raises(ValueError, match=r"atol=1e-06 is below the smallest normal float16"):
        solve(decay, y0, ts, controller=PIDController(rtol=1e-3, atol=atol))


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_an_error_norm_that_returns_nan_is_named(ts, batch_dims):
    controller = PIDController(norm=lambda x: x.abs().max() * math.nan)
    with pytest.raises(ValueError, match=r"the error norm returned \[nan"):
        solve(decay, torch.ones(2, 2, dtype=D), ts, controller=controller, batch_dims=batch_dims)


def test_an_error_norm_that_is_not_a_scalar(ts):
    with pytest.raises(TypeError, match=r"error norm must return one number.*shape \(2,\)"):
        solve(decay, torch.ones(2, dtype=D), ts, controller=PIDController(norm=torch.abs))


def test_a_per_sample_error_norm_that_vmap_cannot_map(ts):
    controller = PIDController(norm=lambda x: torch.tensor(x.abs().max().item()))
    with pytest.raises(TypeError, match=r"mappable by torch\.vmap with batch_dims=1"):
        solve(decay, torch.ones(3, 2, dtype=D), ts, controller=controller, batch_dims=1)


def test_a_norm_that_is_not_callable():
    with pytest.raises(TypeError, match=r"norm must be a function"):
        PIDController(norm="rms")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(pcoeff=math.nan), r"pcoeff must be a finite number, got nan"),
        (dict(icoeff=math.inf), r"icoeff must be a finite number, got inf"),
        (dict(dcoeff="0.1"), r"dcoeff must be a finite number"),
        (dict(icoeff=-1.0), r"icoeff=-1\.0.*unstable.*icoeff must be > 0"),
        (dict(icoeff=0.0), r"icoeff=0\.0.*unstable"),
        (dict(icoeff=2.5), r"icoeff=2\.5.*unstable"),
        (dict(pcoeff=1.0, icoeff=0.3), r"pcoeff=1\.0.*unstable"),
        (dict(dcoeff=1.0), r"dcoeff=1\.0.*unstable"),
        (dict(safety=math.nan), r"safety must be a finite number"),
        (dict(dt_max=math.nan), r"dt_max must be a finite number"),
    ],
)
def test_pid_coefficients_are_checked_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PIDController(**kwargs)


@pytest.mark.parametrize(
    "coefficients",
    [(0.0, 1.0, 0.0), (0.4, 0.3, 0.0), (1 / 6, 1 / 6, 0.0), (1 / 18, 1 / 9, 1 / 18), (0, 1.9, 0)],
)
def test_stable_pid_coefficients_are_accepted_and_solve(ts, coefficients):
    p, i, d = coefficients
    controller = PIDController(rtol=1e-8, atol=1e-10, pcoeff=p, icoeff=i, dcoeff=d)
    sol = solve(decay, torch.ones(2, dtype=D), ts, controller=controller)
    assert abs(float(sol.ys[-1, 0]) - math.exp(-1)) < 1e-6


# --- step budgets and stop times ---------------------------------------------------------


def test_compat_refuses_a_fractional_max_num_steps_and_names_it(ts):
    with pytest.raises(ValueError, match=r"options\['max_num_steps'\] must be a positive integer"):
        odeint(decay, torch.ones(2, dtype=D), ts, options=dict(max_num_steps=2.7))


def test_integral_float_budgets_are_the_same_in_solve_and_compat(ts):
    y0 = torch.ones(2, dtype=D)
    with pytest.raises(no.SolverError, match=r"after 3 steps"):
        solve(decay, y0, ts, max_steps=3.0)
    # compat counts a budget per output interval, as torchdiffeq does: 1 step per interval
    # cannot finish the first interval at these tolerances.
    with pytest.raises(no.SolverError, match=r"max_num_steps exceeded"):
        odeint(decay, y0, ts, rtol=1e-10, atol=1e-10, options=dict(max_num_steps=1.0))
    assert solve(decay, y0, ts, max_steps=1e4).success


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["jump_ts", "step_ts"])
def test_non_finite_stop_times_are_refused(name, bad):
    with pytest.raises(ValueError, match=rf"{name} must be finite times"):
        PIDController(**{name: [0.5, bad]})


def test_compat_nan_jump_t_is_refused(ts):
    with pytest.raises(ValueError, match=r"jump_ts must be finite times"):
        odeint(decay, torch.ones(2, dtype=D), ts, options=dict(jump_t=torch.tensor([math.nan])))


@pytest.mark.parametrize("name", ["jump_ts", "step_ts"])
def test_stop_times_outside_the_interval_are_refused(ts, name):
    controller = PIDController(**{name: [0.5, 3.0]})
    with pytest.raises(ValueError, match=rf"{name}=\[3\.0\] lie outside .*\[0, 1\]"):
        solve(decay, torch.ones(2, dtype=D), ts, controller=controller)


def test_stop_times_at_the_ends_are_fine(ts):
    assert solve(
        decay, torch.ones(2, dtype=D), ts, controller=PIDController(jump_ts=[0, 1])
    ).success


def test_compat_ignores_stop_times_outside_the_interval_like_torchdiffeq(ts):
    y0 = torch.ones(2, dtype=D)
    plain = odeint(decay, y0, ts)
    outside = odeint(decay, y0, ts, options=dict(jump_t=torch.tensor([-1.0, 5.0])))
    assert torch.equal(plain, outside)


@pytest.mark.parametrize("name", ["jump_ts", "step_ts"])
def test_stop_times_must_be_one_dimensional(name):
    with pytest.raises(ValueError, match=rf"{name} must be 1-D"):
        PIDController(**{name: torch.ones(2, 2)})
    with pytest.raises(TypeError, match=rf"{name} must be a flat sequence"):
        PIDController(**{name: [[0.1, 0.2]]})
    with pytest.raises(TypeError, match=rf"{name} must be a sequence"):
        PIDController(**{name: 0.5})


def test_compat_stop_times_must_be_one_dimensional(ts):
    with pytest.raises(ValueError, match=r"options\['jump_t'\] must be 1-D"):
        odeint(decay, torch.ones(2, dtype=D), ts, options=dict(jump_t=torch.ones(1, 1) / 2))


# --- unsupported inputs get a message ------------------------------------------------------


def test_meta_tensors(ts):
    with pytest.raises(TypeError, match=r"y0 is a meta tensor .*real device"):
        solve(decay, torch.ones(2, device="meta"), ts)
    with pytest.raises(TypeError, match=r"ts is a meta tensor"):
        solve(decay, torch.ones(2, dtype=D), ts.to("meta"))
    with pytest.raises(TypeError, match=r"ts is a meta tensor"):
        solve(decay, torch.ones(2, 2, dtype=D), ts.to("meta"), batch_dims=1)


def test_vmap_over_solve_points_to_the_per_sample_mode(ts):
    with pytest.raises(TypeError, match=r"vmap over solve is not supported.*batch_dims=1"):
        torch.func.vmap(lambda y0: solve(decay, y0, ts).ys)(torch.ones(4, 2, dtype=D))


def test_vmap_over_the_parameters_of_f_points_to_the_per_sample_mode(ts):
    y0 = torch.ones(2, dtype=D)
    with pytest.raises(TypeError, match=r"vmap-batched tensor.*batch_dims=1"):
        torch.func.vmap(lambda w: solve(lambda t, y: -w * y, y0, ts).ys)(torch.ones(3, dtype=D))


def test_jacrev_over_solve_works(ts):
    y0 = torch.ones(2, dtype=D)
    jac = torch.func.jacrev(lambda y: solve(decay, y, ts).ys[-1])(y0)
    assert torch.allclose(jac, math.exp(-1) * torch.eye(2, dtype=D), rtol=1e-6)


def test_empty_per_sample_batch_does_not_suggest_unsqueeze(ts):
    with pytest.raises(ValueError, match=r"y0 is empty \(shape \(0, 3\)\).*batch is empty") as info:
        solve(decay, torch.ones(0, 3, dtype=D), ts, batch_dims=1)
    assert "unsqueeze" not in str(info.value)


@pytest.mark.parametrize("norm", [no.max_norm, no.rms_norm])
@pytest.mark.parametrize("y0", [torch.ones(0, 2, dtype=D), (torch.ones(0), torch.ones(2, 0))])
def test_an_empty_state_is_refused_not_an_internal_error(ts, y0, norm):
    # Before: max_norm on the empty state raised inside torch ("cannot compute the inf norm").
    with pytest.raises(ValueError, match=r"y0 is empty .*nothing to solve"):
        solve(decay, y0, ts, controller=PIDController(norm=norm))


def test_a_tuple_state_with_a_zero_dim_part(ts):
    # Before: restoring a 0-d part called reshape() with no shape (a TypeError from torch).
    y0 = (torch.tensor(1.0, dtype=D), torch.ones(2, dtype=D))
    sol = solve(
        lambda t, y: (-y[0], -y[1]), y0, ts, solver=no.RK4(), controller=no.ConstantStepSize(0.01)
    )
    assert sol.ys[0].shape == (5,)
    assert abs(float(sol.ys[0][-1]) - math.exp(-1)) < 1e-8


def test_complex_per_sample_says_what_to_do(ts):
    y0 = torch.ones(2, 2, dtype=torch.complex128)
    with pytest.raises(TypeError, match=r"complex.*batch_dims=1.*view_as_real"):
        solve(decay, y0, ts, batch_dims=1)


# --- complex states (joint mode) ------------------------------------------------------------


def _rotation(w, y0, ts):
    """``y' = i w y``: ``y(t) = y0 exp(i w t)``."""
    return y0 * torch.exp(1j * w * ts)[:, None]


@pytest.mark.parametrize(
    ("solver", "controller", "tol"),
    [
        (no.Dopri5(), PIDController(rtol=1e-10, atol=1e-10), 1e-8),
        (no.Tsit5(), PIDController(rtol=1e-10, atol=1e-10), 1e-8),
        (no.RK4(), no.ConstantStepSize(0.005), 1e-8),
    ],
)
@pytest.mark.parametrize("adjoint", [no.DirectAdjoint(), no.CheckpointAdjoint()])
def test_complex_state_matches_the_closed_form_with_gradients(solver, controller, tol, adjoint):
    ts = torch.linspace(0.0, 3.0, 7, dtype=D)
    w = torch.tensor(2.0, dtype=D, requires_grad=True)
    y0 = torch.tensor([1.0 + 0.5j, -0.3 + 2.0j], dtype=torch.complex128, requires_grad=True)
    sol = solve(
        lambda t, y: 1j * w * y,
        y0,
        ts,
        solver=solver,
        controller=controller,
        adjoint=adjoint,
        params=[w],
    )
    exact = _rotation(w, y0, ts)
    assert sol.ys.dtype == torch.complex128
    assert float((sol.ys - exact).detach().abs().max()) < tol

    def loss(ys):
        return (0.3 * ys.real**2 + ys.imag).sum()

    ours = torch.autograd.grad(loss(sol.ys), (w, y0))
    theirs = torch.autograd.grad(loss(exact), (w, y0))
    for a, b in zip(ours, theirs, strict=True):
        assert float((a - b).abs().max()) < 100 * tol


def test_complex_tuple_state_dense_output_and_compat():
    ts = torch.linspace(0.0, 3.0, 4, dtype=D)
    y0 = torch.tensor([1.0 + 0.5j, -0.3 + 2.0j], dtype=torch.complex128)
    tight = PIDController(rtol=1e-10, atol=1e-12)
    sol = solve(lambda t, y: (1j * y[0], -y[1]), (y0, y0), ts, controller=tight, dense=True)
    assert float((sol.ys[0] - _rotation(1.0, y0, ts)).abs().max()) < 1e-8
    assert float((sol.ys[1][-1] - y0 * math.exp(-3)).abs().max()) < 1e-8
    at = torch.tensor(1.3, dtype=D)
    assert float((sol.dense(at)[0] - y0 * torch.exp(1j * at)).abs().max()) < 1e-8
    ys = odeint(lambda t, y: 1j * y, y0, ts, rtol=1e-10, atol=1e-12)
    assert float((ys - _rotation(1.0, y0, ts)).abs().max()) < 1e-8


def test_complex_with_a_per_component_tolerance():
    y0 = torch.ones(2, dtype=torch.complex128)
    rtol = torch.tensor([1e-10, 1e-8], dtype=D)
    sol = solve(
        lambda t, y: 1j * y,
        y0,
        torch.tensor([0.0, 1.0], dtype=D),
        controller=PIDController(rtol=rtol, atol=1e-12),
    )
    assert float((sol.ys[-1] - torch.exp(torch.tensor(1j))).abs().max()) < 1e-7


def test_complex_with_backsolve_says_what_to_use():
    y0 = torch.ones(2, dtype=torch.complex128)
    with pytest.raises(
        TypeError, match=r"BacksolveAdjoint does not support complex.*DirectAdjoint"
    ):
        solve(
            lambda t, y: 1j * y,
            y0,
            torch.tensor([0.0, 1.0], dtype=D),
            adjoint=no.BacksolveAdjoint(),
        )


# --- fuzzing solve's and compat.odeint's inputs ----------------------------------------------
#
# Oracle: a call either succeeds with finite outputs of the documented shape, or raises one
# of the library's typed errors (ValueError/TypeError raised by neuralode's own code, or a
# SolverError), never an error from inside torch or Python (IndexError, AttributeError, a
# RuntimeError from an operator, ...), never a warning (one found a silently wrong complex
# gradient), and never hangs (small step budgets, and an alarm).

NAN, INF = math.nan, math.inf


def _pick(draw, good, bad, mutate):
    """A value from ``good``, or from ``good + bad`` where this argument is mutated."""
    return draw(st.sampled_from(good + bad if mutate else good))


def _tensor(draw, shape, dtype, values):
    n = math.prod(shape)
    data = [draw(st.sampled_from(values)) for _ in range(min(n, 4))] + [0.5] * max(n - 4, 0)
    return torch.tensor(data, dtype=torch.float64).reshape(shape).to(dtype)


_GOOD_SHAPES = [(3,), (2, 3), (1,), (4, 1, 2)]
_BAD_SHAPES = [(), (0,), (0, 2)]
_GOOD_DTYPES = [torch.float64, torch.float32, torch.complex128]
_BAD_DTYPES = [torch.float16, torch.bfloat16, torch.int64, torch.bool]
_GOOD_VALUES = [0.0, 1.0, -2.5, 0.5, 1e-3]
_BAD_VALUES = [1e30, NAN, INF, -INF]


def _state(draw, mutate):
    kind = _pick(draw, ["tensor", "tensor", "tuple"], ["junk"], mutate)
    if kind == "junk":
        return draw(st.sampled_from([None, 1.0, [1.0, 2.0], "y0", (), (1.0,)]))
    n = draw(st.sampled_from([1, 2])) if kind == "tuple" else 1
    dtype = _pick(draw, _GOOD_DTYPES, _BAD_DTYPES, mutate)
    parts = []
    for _ in range(n):
        shape = _pick(draw, _GOOD_SHAPES, _BAD_SHAPES, mutate)
        part_dtype = _pick(draw, [dtype], [torch.float32], mutate and n > 1)
        parts.append(
            _tensor(draw, shape, part_dtype, _GOOD_VALUES + (_BAD_VALUES if mutate else []))
        )
    return parts[0] if kind == "tensor" else tuple(parts)


def _times(draw, mutate):
    kind = _pick(draw, ["increasing", "decreasing"], ["any", "junk", "2-D"], mutate)
    if kind == "junk":
        return draw(st.sampled_from([None, [0.0, 1.0], 1.0, torch.tensor(1.0)]))
    n = _pick(draw, [2, 3, 4], [0, 1], mutate)
    if kind == "any":
        values = [draw(st.sampled_from([0.0, 0.5, 1.0, -1.0, NAN, INF, 0.5])) for _ in range(n)]
    else:
        steps = [draw(st.sampled_from([0.25, 0.5, 1.0, 3.0])) for _ in range(n)]
        values = [sum(steps[:i]) * (1 if kind != "decreasing" else -1) for i in range(n)]
    dtype = _pick(draw, [torch.float64, torch.float32], [torch.int64, torch.float16], mutate)
    ts = torch.tensor(values, dtype=torch.float64).to(dtype)
    return ts.expand(2, -1) if kind == "2-D" else ts


def _each(y, fn):
    return tuple(fn(p) for p in y) if isinstance(y, tuple) else fn(y)


def _field(kind):
    calls = []

    def f(t, y, *args):
        calls.append(t)
        late = len(calls) > 2
        if kind == "decay":
            return _each(y, lambda p: -p)
        if kind == "rotate":
            return _each(y, lambda p: (p.roll(1, -1) if p.ndim else p) - 0.1 * p)
        if kind == "grow":
            return _each(y, lambda p: p * p + 1)  # blows up in finite time
        if kind == "stiff":
            # Stiff enough that Dopri5 needs thousands of steps over the longest interval
            # drawn (9): with compat's budget (torchdiffeq's 2**31 steps) a rate of 1e5 took
            # ~30 s on a loaded CI machine, past the 20 s a fuzz case may take.
            return _each(y, lambda p: -1e4 * p)
        if kind == "nan":
            return _each(y, lambda p: p * NAN)
        if kind == "nan_late":
            return _each(y, lambda p: p * NAN if late else -p)
        if kind == "shape":
            return _each(y, lambda p: p.unsqueeze(-1))
        if kind == "shape_late":
            return _each(y, lambda p: p.sum() if late else -p)
        if kind == "dtype_late":
            return _each(y, lambda p: p.to(torch.complex64) if late else -p)
        if kind == "inplace":
            return _each(y, lambda p: p.mul_(1.0))
        if kind == "inplace_late":
            return _each(y, lambda p: p.mul_(1.0) if late else -p)
        if kind == "tuple_for_tensor":
            return (y, y)
        return None

    return f


_GOOD_FIELDS = ["decay", "rotate", "grow", "stiff"]
_BAD_FIELDS = ["nan", "nan_late", "shape", "shape_late", "dtype_late", "inplace", "inplace_late"]
_BAD_FIELDS += ["tuple_for_tensor", "none"]
_GOOD_TOLS = [1e-3, 1e-6, 1e-9, torch.tensor(1e-4)]
_BAD_TOLS = [0.0, -1.0, NAN, INF, 1e-30, torch.tensor([1e-4, 0.0]), "1e-3", [1e-3, 1e-3]]


def _controller(draw, mutate):
    kind = _pick(draw, ["none", "pid", "pid", "constant", "stepto"], ["junk"], mutate)
    if kind == "none":
        return None
    if kind == "junk":
        return draw(st.sampled_from(["pid", 0.1, no.PIDController]))
    if kind == "constant":
        dt = _pick(draw, [0.1, 0.3], [0.0, -1.0, NAN, 1e-9, "0.1"], mutate)
        return functools.partial(no.ConstantStepSize, dt)
    if kind == "stepto":
        good = [[0.0, 0.5, 1.0, 2.0, 4.0, 8.0], [8.0, 2.0, 0.0, -2.0, -8.0]]
        grid = _pick(draw, good, [[0.0], [1.0, 0.0, 2.0], [0.0, NAN], [0, 10]], mutate)
        return functools.partial(no.StepTo, grid)
    kwargs = {}
    pools = {
        "rtol": (_GOOD_TOLS, _BAD_TOLS),
        "atol": (_GOOD_TOLS, _BAD_TOLS),
        "pcoeff": ([0.0, 0.4], [-1.0, NAN]),
        "icoeff": ([1.0, 0.3], [0.0, 3.0]),
        "dt0": ([None, 0.1], [0.0, NAN, 1e-300]),
        "dt_min": ([0.0, 1e-6], [0.1, -1.0]),
        "dt_max": ([INF, 0.5], [0.0]),
        "norm": ([no.max_norm, lambda x: x.abs().sum()], [lambda x: x * NAN, torch.abs]),
        "jump_ts": ([(), [0.5]], [[NAN], [10.0], torch.tensor([[0.5]])]),
        "step_ts": ([(), [0.25]], [[-INF]]),
        "force_dt_min": ([False, True], ["yes"]),
    }
    for key, (good, bad) in pools.items():
        if draw(st.integers(0, 3)) == 0:
            kwargs[key] = _pick(draw, good, bad, mutate)
    return functools.partial(no.PIDController, **kwargs)


@st.composite
def _solve_calls(draw):
    # Mostly valid calls with a few arguments mutated, so the search reaches the solve
    # itself as well as each boundary check.
    mutate = set(draw(st.lists(st.sampled_from(["y0", "ts", "f", "ctrl", "other"]), max_size=2)))
    kwargs = {}
    if draw(st.integers(0, 3)) == 0:
        solvers = [no.Dopri5(), no.Tsit5(), no.Bosh3(), no.RK4(), no.Euler()]
        kwargs["solver"] = _pick(draw, solvers, [1, no.Dopri5], "other" in mutate)
    controller = _controller(draw, "ctrl" in mutate)
    if controller is not None:
        kwargs["controller"] = controller
    other = "other" in mutate
    kwargs["max_steps"] = _pick(draw, [50, 300, 300, 3.0], [1.5, 0, "10", True], other)
    pools = {
        "batch_dims": ([0, 1, 1], [2, True]),
        "dense": ([False, True], []),
        "throw": ([True, False], []),
        "adjoint": ([no.DirectAdjoint(), no.CheckpointAdjoint()], [no.BacksolveAdjoint(), "x"]),
        "args": ([()], [(torch.ones(2),), 1.0]),
    }
    for key, (good, bad) in pools.items():
        if draw(st.integers(0, 2)) == 0:
            kwargs[key] = _pick(draw, good, bad, other)
    y0 = _state(draw, "y0" in mutate)
    ts = _times(draw, "ts" in mutate)
    per_sample = kwargs.get("batch_dims") == 1 and isinstance(y0, torch.Tensor) and y0.ndim
    if per_sample and isinstance(ts, torch.Tensor) and ts.ndim == 1 and draw(st.booleans()):
        # Per-sample output times, one row per sample, each shifted by its own offset.
        shift = torch.arange(y0.shape[0], dtype=ts.dtype).unsqueeze(-1) * 0.5
        ts = ts + (shift if ts.is_floating_point() else shift.long())
    # Differentiate a successful solve (w.r.t. y0, and ts when it asks for it).
    grad = draw(st.sampled_from([False, False, "y0", "ts"]))
    return y0, ts, _pick(draw, _GOOD_FIELDS, _BAD_FIELDS, "f" in mutate), kwargs, grad


_GOOD_OPTIONS = {
    "first_step": [0.1, None],
    "max_num_steps": [50, 300, 3.0],
    "step_t": [[0.5], torch.tensor([0.25])],
    "jump_t": [torch.tensor([0.5]), [10.0]],
    # compat passes a norm the state's own structure (torchdiffeq's convention).
    "norm": [lambda y: max(p.abs().max() for p in (y if isinstance(y, tuple) else (y,)))],
    "min_step": [1e-6],
    "max_step": [0.5],
    "safety": [0.8],
    "ifactor": [5.0],
    "dfactor": [0.3],
    "step_size": [0.1, 0.25],
    "grid_constructor": [lambda f, y0, t: torch.linspace(float(t[0]), float(t[-1]), 9)],
    "perturb": [False],
    "interp": ["linear", "cubic"],
}
_BAD_OPTION_VALUES = [0, -1, NAN, INF, 2.7, "x", torch.tensor([NAN]), torch.ones(2, 2), True]


@st.composite
def _odeint_calls(draw):
    mutate = set(draw(st.lists(st.sampled_from(["y0", "t", "f", "options", "other"]), max_size=2)))
    method = _pick(
        draw, [None, "dopri5", "rk4", "euler", "bosh3", "dopri8"], ["adams", 3], "other" in mutate
    )
    options = {"max_num_steps": 300}
    for key in draw(st.lists(st.sampled_from(sorted(_GOOD_OPTIONS) + ["bogus"]), max_size=2)):
        good = _GOOD_OPTIONS.get(key, [None])
        options[key] = _pick(draw, good, _BAD_OPTION_VALUES, "options" in mutate)
    kwargs = dict(
        rtol=_pick(draw, _GOOD_TOLS, _BAD_TOLS, "other" in mutate),
        atol=_pick(draw, _GOOD_TOLS, _BAD_TOLS, "other" in mutate),
        method=method,
        options=_pick(draw, [options], [None, "opts"], "other" in mutate),
    )
    y0 = _state(draw, "y0" in mutate)
    t = _times(draw, "t" in mutate)
    return y0, t, _pick(draw, _GOOD_FIELDS, _BAD_FIELDS, "f" in mutate), kwargs


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("a fuzz case ran for more than 20 s")


def _ours(err: BaseException) -> bool:
    """Whether ``err`` comes from a ``raise`` statement in neuralode's own code.

    Not from inside torch or Python, nor from a builtin failing inside neuralode (a
    ``float(x)`` that raises "could not convert string to float" is no message of ours).
    """
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    filename = tb.tb_frame.f_code.co_filename
    line = linecache.getline(filename, tb.tb_lineno).strip()
    return f"neuralode{os.sep}" in filename and line.startswith("raise ")


def _run_case(call):
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(20)
    try:
        result = call()
    except no.SolverError:
        return None
    except (ValueError, TypeError) as err:
        assert _ours(err), f"{type(err).__name__} from outside neuralode: {err}"
        assert len(str(err)) > 20, f"an unhelpful message: {err!r}"
        return None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return result


def _check_success(ys, y0, ts):
    parts = ys if isinstance(ys, tuple) else (ys,)
    y0_parts = y0 if isinstance(y0, tuple) else (y0,)
    for part, p0 in zip(parts, y0_parts, strict=True):
        assert part.shape == (ts.shape[-1], *p0.shape)
        assert part.dtype == p0.dtype
        assert torch.equal(part[0], p0), "the output at t0 is not y0"


def _fuzz_solve(case):
    y0, ts, kind, kwargs, grad = case
    kwargs = dict(kwargs)
    if (
        grad == "y0"
        and isinstance(y0, torch.Tensor)
        and (y0.is_floating_point() or y0.is_complex())
    ):
        y0 = y0.clone().requires_grad_()
    if grad == "ts" and isinstance(ts, torch.Tensor) and ts.is_floating_point():
        ts = ts.clone().requires_grad_()
    if callable(kwargs.get("controller")) and not isinstance(kwargs["controller"], type):
        make = kwargs["controller"]
        try:
            kwargs["controller"] = make()
        except (ValueError, TypeError) as err:
            assert _ours(err), f"{type(err).__name__} from outside neuralode: {err}"
            return
    sol = _run_case(lambda: solve(_field(kind), y0, ts, **kwargs))
    if sol is None:
        return
    _check_success(sol.ys, y0, ts)
    if sol.success:
        parts = sol.ys if isinstance(sol.ys, tuple) else (sol.ys,)
        assert all(bool(torch.isfinite(p).all()) for p in parts), "success with non-finite ys"
        # These misbehave at the first call (at t0); an empty state leaves nothing to
        # misbehave, and a single output time needs no step (its output is y0 itself).
        trivial = sum(p.numel() for p in parts) == 0 or ts.shape[-1] == 1
        assert trivial or kind not in ("nan", "shape", "inplace", "tuple_for_tensor", "none")
        assert kind != "dtype_late" or sol.ys[-1].dtype == y0.dtype
        inputs = [x for x in (y0, ts) if isinstance(x, torch.Tensor) and x.requires_grad]
        if inputs and grad:
            loss = sum(p.abs().sum() for p in parts)
            _run_case(lambda: torch.autograd.grad(loss, inputs, allow_unused=True))


def _fuzz_odeint(case):
    y0, ts, kind, kwargs = case
    with warnings.catch_warnings():
        # compat warns on options a method does not take, as torchdiffeq does (by design).
        warnings.filterwarnings("ignore", ".*: Unexpected arguments", UserWarning)
        ys = _run_case(lambda: odeint(_field(kind), y0, ts, **kwargs))
    if ys is not None:
        _check_success(ys, y0, ts)


@pytest.mark.filterwarnings("error")
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(_solve_calls())
def test_fuzz_solve_inputs(case):
    _fuzz_solve(case)


@pytest.mark.filterwarnings("error")
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(_odeint_calls())
def test_fuzz_odeint_inputs(case):
    _fuzz_odeint(case)


@pytest.mark.slow
@pytest.mark.filterwarnings("error")
@settings(max_examples=6000, deadline=None, suppress_health_check=list(HealthCheck))
@given(_solve_calls())
def test_fuzz_solve_inputs_long(case):
    _fuzz_solve(case)


@pytest.mark.slow
@pytest.mark.filterwarnings("error")
@settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
@given(_odeint_calls())
def test_fuzz_odeint_inputs_long(case):
    _fuzz_odeint(case)


# --- findings of the fuzz campaign -------------------------------------------------------------


def test_an_rtol_whose_rounding_noise_forces_millions_of_steps_is_refused_by_name():
    # Found by fuzzing compat: rtol = atol = 1e-30 in float64 (above eps² = 4.9e-32, so
    # accepted before) makes the error estimate's rounding set the step size, ~1e-14 of the
    # time scale; with compat's step budget (2^31 - 1 per interval) the solve never ended.
    y0 = torch.tensor([0.0, 0.0, 1.0], dtype=D)
    ts = torch.tensor([0.0, 0.25], dtype=D)
    for tol in (1e-30, 1e-23):
        with pytest.raises(ValueError, match=r"rtol=1e-\d+ is below what float64 can resolve"):
            odeint(decay, y0, ts, rtol=tol, atol=tol)
        with pytest.raises(ValueError, match=r"at least 2.22e-22 for float64"):
            solve(decay, y0, ts, controller=PIDController(rtol=tol, atol=tol))
    # Above the floor the solve is long but finite (521 steps at 1e-20).
    sol = solve(decay, y0, ts, controller=PIDController(rtol=1e-20, atol=1e-20))
    assert sol.success and sol.stats.steps < 2000
    with pytest.raises(ValueError, match=r"rtol=1e-14 is below what float32 can resolve"):
        solve(decay, y0.float(), ts, controller=PIDController(rtol=1e-14, atol=1e-14))


def test_a_success_never_returns_non_finite_outputs():
    # Found by fuzzing: a fixed step through the singularity of y' = y² + 1 ends on a finite
    # y1 whose f(t1, y1) overflows; Dopri5's interpolant uses that stage, so the outputs
    # inside the step were -inf while the solve reported SUCCESS.
    y0 = torch.tensor([0.0, -2.5])
    ts = torch.tensor([0.0, -0.25, -0.75, -1.75], dtype=D)
    grid = no.StepTo([8.0, 2.0, 0.0, -2.0, -8.0])
    with pytest.raises(no.SolverError, match=r"output inside the last step is not finite"):
        solve(lambda t, y: y * y + 1, y0, ts, controller=grid)
    sol = solve(lambda t, y: y * y + 1, y0, ts, controller=grid, throw=False)
    assert sol.status is no.Status.NONFINITE


def test_a_per_sample_success_with_non_finite_outputs_fails_that_sample():
    from neuralode._solution import RawSolution
    from neuralode._solve import _fail_nonfinite_outputs

    ys = torch.zeros(3, 4, 2)
    ys[1, 2, 0] = math.inf
    raw = RawSolution(
        ys=ys,
        stats=no.Stats(),
        status=no.Status.SUCCESS,
        t_last=torch.ones(4),
        y_last=ys[-1],
        dt_last=0.1,
        sample_status=(no.Status.SUCCESS,) * 4,
    )
    _fail_nonfinite_outputs(None, raw)
    assert raw.status is no.Status.NONFINITE
    assert [s is no.Status.SUCCESS for s in raw.sample_status] == [True, True, False, True]


def test_a_huge_float32_state_is_a_solver_error_not_a_zero_division():
    # Found by fuzzing: |f0|/atol overflowed float32, the first-step guess became 0 and a
    # Python float division by it raised ZeroDivisionError.
    y0 = torch.tensor([0.0, 1e30, 1e-3])
    with pytest.raises(no.SolverError, match=r"step size fell below"):
        solve(lambda t, y: y.roll(1, -1) - 0.1 * y, y0, torch.tensor([0.0, 1.0]))


def test_args_of_the_wrong_type(ts):
    with pytest.raises(TypeError, match=r"args must be a tensor or a tuple of tensors"):
        solve(decay, torch.ones(2, 2, dtype=D), ts, batch_dims=1, args=1.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(safety="x"), r"options\['safety'\] must be a number, got 'x'"),
        (dict(dfactor=torch.ones(2)), r"options\['dfactor'\] must be a number"),
        (dict(norm="rms"), r"options\['norm'\] must be a callable"),
        (dict(dfactor=2.0), r"factor_min.*dfactor → factor_min"),
        (dict(min_step=math.nan), r"dt_min must be a finite number.*min_step → dt_min"),
    ],
)
def test_compat_adaptive_options_of_the_wrong_type(ts, options, message):
    with pytest.raises((TypeError, ValueError), match=message):
        odeint(decay, torch.ones(2, dtype=D), ts, options=options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(step_size="0.1"), r"options\['step_size'\] must be a number"),
        (dict(grid_constructor=3), r"options\['grid_constructor'\] must be a function"),
        (dict(perturb=torch.ones(2)), r"options\['perturb'\] must be True or False"),
    ],
)
def test_compat_fixed_step_options_of_the_wrong_type(ts, options, message):
    with pytest.raises(TypeError, match=message):
        odeint(decay, torch.ones(2, dtype=D), ts, method="rk4", options=options)


def test_compat_treats_none_options_as_absent(ts):
    y0 = torch.ones(2, dtype=D)
    options = dict(safety=None, first_step=None, min_step=None, max_step=None)
    assert torch.equal(odeint(decay, y0, ts, options=options), odeint(decay, y0, ts))


def test_complex_state_with_ts_needing_grad_is_refused_not_a_wrong_gradient():
    # Found by fuzzing (a "complex to real" warning): the output-time gradient dropped the
    # conjugate, so dL/dts was silently wrong for a complex state.
    ts = torch.tensor([0.0, 1.0, 2.0], dtype=D, requires_grad=True)
    y0 = torch.tensor([1.0 + 0.5j], dtype=torch.complex128)
    with pytest.raises(TypeError, match=r"gradients with respect to ts .* complex.*detach"):
        solve(lambda t, y: 2j * y, y0, ts)
