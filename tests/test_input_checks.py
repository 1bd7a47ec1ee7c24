"""Inputs that used to give a silent wrong answer or a torch traceback now give a clear error
(or, for complex states, a correct solution).

Each test here failed on the code before these checks: an in-place vector field returned
SUCCESS with a wrong answer and changed the caller's y0; a float64 output at t > 0 turned
ys into float64; float16 with the default tolerances blamed the vector field; unstable PID
coefficients were accepted; NaN stop times were ignored; and so on.
"""

from __future__ import annotations

import math

import pytest
import torch

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
    with pytest.raises(no.SolverError, match=r"after 3 steps"):
        odeint(decay, y0, ts, options=dict(max_num_steps=3.0))
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
    with pytest.raises(ValueError, match=r"empty batch \(shape \(0, 3\)\)") as info:
        solve(decay, torch.ones(0, 3, dtype=D), ts, batch_dims=1)
    assert "unsqueeze" not in str(info.value)


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
