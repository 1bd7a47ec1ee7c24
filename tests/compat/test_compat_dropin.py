"""neuralode.compat as a drop-in for torchdiffeq 0.2.5: leniency, and what real code uses.

Each test compares against the installed torchdiffeq 0.2.5 on the same call, within the
requested tolerance (or exactly where both compute the same thing).
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import warnings
from pathlib import Path

import pytest
import torch

import neuralode
from neuralode.compat import CompatSolverError, odeint, odeint_adjoint, odeint_dense

torchdiffeq = pytest.importorskip("torchdiffeq")
pytest.importorskip("scipy")

D = torch.float64
ROOT = Path(__file__).resolve().parents[2]


def decay(t, y):
    return -y


def oscillator(t, y):
    return torch.stack([y[1], -y[0] + 0.1 * torch.cos(t)])


Y0 = torch.tensor([1.0, 0.0], dtype=D)
TS = torch.linspace(0.0, 2.0, 5, dtype=D)


def close(a, b, tol):
    if isinstance(a, tuple):
        return all(close(x, y, tol) for x, y in zip(a, b, strict=True))
    return float((a - b).abs().max()) <= tol


class Linear(torch.nn.Module):
    def __init__(self, n: int = 2) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(0.3 * torch.randn(n, n, dtype=D, generator=g) - torch.eye(n))

    def forward(self, t, y):
        return y @ self.w.T


# --- leniency ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "options", "unexpected"),
    [
        # FFJORD puts step_size into every solver's options; RNODE first_step too.
        ("dopri5", {"step_size": 0.1}, {"step_size"}),
        ("dopri5", {"step_size": 0.1, "first_step": 0.01}, {"step_size"}),
        ("rk4", {"step_size": 0.1, "first_step": 0.01}, {"first_step"}),
    ],
)
def test_options_a_method_does_not_take_warn_like_torchdiffeq(method, options, unexpected):
    with pytest.warns(UserWarning, match="Unexpected arguments") as ours:
        got = odeint(oscillator, Y0, TS, method=method, options=options)
    with pytest.warns(UserWarning, match="Unexpected arguments") as theirs:
        want = torchdiffeq.odeint(oscillator, Y0, TS, method=method, options=options)
    for record in (ours, theirs):
        text = " ".join(str(w.message) for w in record)
        assert all(repr(k) in text for k in unexpected)
    assert close(got, want, 1e-6)


def test_native_solve_stays_strict():
    # The leniency is compat's only: the native API keeps its finite default budget and
    # raises a plain SolverError (not an AssertionError).
    assert inspect.signature(neuralode.solve).parameters["max_steps"].default == 10_000
    with pytest.raises(neuralode.SolverError) as info:
        neuralode.solve(decay, Y0, TS, max_steps=2)
    assert not isinstance(info.value, AssertionError)


def test_max_num_steps_failure_is_an_assertion_error_with_torchdiffeqs_message():
    with pytest.raises(AssertionError) as theirs:
        torchdiffeq.odeint(oscillator, Y0, TS, options={"max_num_steps": 2})
    with pytest.raises(AssertionError) as ours:
        odeint(oscillator, Y0, TS, options={"max_num_steps": 2})
    assert str(theirs.value).startswith("max_num_steps exceeded")
    assert str(ours.value).startswith("max_num_steps exceeded")
    assert isinstance(ours.value, neuralode.SolverError)
    assert isinstance(ours.value, CompatSolverError)
    assert ours.value.status is neuralode.Status.MAX_STEPS
    assert "step budget" in str(ours.value)  # and then our cause


def test_blow_up_failure_is_an_assertion_error_starting_with_underflow_in_dt():
    # y' = y², y(0) = 1 blows up at t = 1.
    def blow_up(t, y):
        return y**2

    y0 = torch.ones(1, dtype=D)
    ts = torch.tensor([0.0, 2.0], dtype=D)
    with pytest.raises(AssertionError) as theirs:
        torchdiffeq.odeint(blow_up, y0, ts)
    with pytest.raises(AssertionError) as ours:
        odeint(blow_up, y0, ts)
    assert str(theirs.value).startswith("underflow in dt")
    assert str(ours.value).startswith("underflow in dt")
    assert isinstance(ours.value, neuralode.SolverError)
    assert abs(ours.value.t - 1.0) < 1e-3


def van_der_pol(t, y):
    return torch.stack([y[1], 5.0 * (1.0 - y[0] ** 2) * y[1] - y[0]])


@pytest.mark.parametrize(
    ("field", "t_end", "tol"),
    [(oscillator, 2.0, 1e-4), (oscillator, 2.0, 1e-9), (van_der_pol, 10.0, 1e-6)],
)
def test_dopri5_takes_torchdiffeqs_steps(field, t_end, tol):
    # torchdiffeq's dopri5 estimates its error with its own embedded solution (2/3 of
    # Dormand and Prince's, native Dopri5's default) and never shrinks the step after an
    # accepted one: with native defaults this Van der Pol solve took 890 evaluations, and
    # torchdiffeq takes 866.
    def counted(log):
        def f(t, y):
            log.append(float(t))
            return field(t, y)

        return f

    ts = torch.linspace(0.0, t_end, 5, dtype=D)
    ours, theirs = [], []
    got = odeint(counted(ours), Y0, ts, rtol=tol, atol=tol)
    want = torchdiffeq.odeint(counted(theirs), Y0, ts, rtol=tol, atol=tol)
    assert len(ours) == len(theirs)
    # The same steps to rounding, up to the last one, which compat ends on ts[-1] and
    # torchdiffeq past it (interpolating back).
    assert ours[:-6] == pytest.approx(theirs[:-6], rel=1e-5)
    assert close(got, want, 10 * tol)


def test_per_interval_max_num_steps_as_torchdiffeq_counts_it():
    # torchdiffeq counts max_num_steps per output interval: 40 per interval finishes with
    # many outputs even though the whole solve takes more than 40 steps.
    ts = torch.linspace(0.0, 20.0, 41, dtype=D)
    want = torchdiffeq.odeint(oscillator, Y0, ts, options={"max_num_steps": 40})
    got = odeint(oscillator, Y0, ts, options={"max_num_steps": 40})
    assert close(got, want, 1e-5)


def test_default_budget_is_torchdiffeqs():
    from neuralode._compat_config import MAX_NUM_STEPS, configure

    names = {"method": "method", "options": "options", "rtol": "rtol", "atol": "atol"}
    config = configure(decay, Y0, TS, 1e-7, 1e-9, None, None, names=names)
    assert MAX_NUM_STEPS == 2**31 - 1
    assert config.max_steps == MAX_NUM_STEPS


@pytest.mark.slow
def test_stiff_problem_torchdiffeq_finishes_compat_finishes():
    # About 12,000 stability-limited dopri5 steps: above the native default of 10,000.
    def stiff(t, y):
        return -1e4 * (y - torch.cos(t))

    ts = torch.tensor([0.0, 4.0], dtype=D)
    y0 = torch.tensor([1.0], dtype=D)
    theirs = torchdiffeq.odeint(stiff, y0, ts, rtol=1e-6, atol=1e-6)
    ours = odeint(stiff, y0, ts, rtol=1e-6, atol=1e-6)
    assert abs(float(ours[-1, 0]) - float(theirs[-1, 0])) < 1e-4


# --- states, grids and dtypes ------------------------------------------------------------


def test_tuple_state_with_0d_parts():
    def f(t, y):
        a, b = y
        return -a, -b * a

    y0 = (torch.tensor(1.0, dtype=D), torch.tensor([1.0, 2.0], dtype=D))
    got = odeint(f, y0, TS)
    want = torchdiffeq.odeint(f, y0, TS)
    assert got[0].shape == want[0].shape == (5,)
    assert close(got, want, 1e-6)


def test_odeint_adjoint_on_a_scalar_state_matches_torchdiffeq():
    a = torch.tensor(-0.7, dtype=D, requires_grad=True)

    def grads(fn):
        y0 = torch.tensor(1.3, dtype=D, requires_grad=True)
        out = fn(lambda t, y: a * y, y0, TS, adjoint_params=(a,))
        return torch.autograd.grad(out.sum(), (y0, a))

    assert close(grads(odeint_adjoint)[0], grads(torchdiffeq.odeint_adjoint)[0], 1e-6)
    assert close(grads(odeint_adjoint)[1], grads(torchdiffeq.odeint_adjoint)[1], 1e-6)


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_one_output_time_returns_y0(method):
    t = torch.tensor([0.5], dtype=D)
    got = odeint(decay, Y0, t, method=method)
    want = torchdiffeq.odeint(decay, Y0, t, method=method)
    assert got.shape == want.shape == (1, 2)
    assert torch.equal(got, want)


def test_one_point_grid_returns_y0():
    t = torch.tensor([0.5], dtype=D)
    options = {"grid_constructor": lambda f, y0, t: t}
    got = odeint(decay, Y0, t, method="euler", options=options)
    assert torch.equal(got, Y0[None])


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_field_returning_a_wider_dtype_computes_in_it(method):
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float32)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float32)

    def f(t, y):
        return -y.double() * 1.5  # float64 out of a float32 state

    got = odeint(f, y0, ts, method=method, options={"step_size": 0.1} if method == "rk4" else {})
    options = {"step_size": 0.1} if method == "rk4" else {}
    want = torchdiffeq.odeint(f, y0, ts, method=method, options=options)
    assert got.dtype == want.dtype == torch.float32
    assert close(got, want, 1e-6)


def test_time_reaches_f_in_the_states_dtype():
    # torchdiffeq casts t to y's dtype; code like `2 * y / t` relies on it.
    seen = []

    def f(t, y):
        seen.append(t.dtype)
        return 2 * y / (t + 1)

    odeint(f, torch.ones(2), torch.tensor([0.0, 1.0], dtype=D))
    assert set(seen) == {torch.float32}


def test_options_dtype_is_accepted_and_checked():
    got = odeint(oscillator, Y0, TS, options={"dtype": torch.float64})
    want = torchdiffeq.odeint(oscillator, Y0, TS, options={"dtype": torch.float64})
    assert close(got, want, 1e-6)
    with pytest.raises(TypeError, match=r"options\['dtype'\] must be a floating torch.dtype"):
        odeint(oscillator, Y0, TS, options={"dtype": "float64"})


# --- callbacks ---------------------------------------------------------------------------


class Recording(torch.nn.Module):
    """A field with every torchdiffeq callback, recording (name, t0, dt)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(-0.5, dtype=D))
        self.calls: list[tuple[str, float, float]] = []
        for name in ("callback_step", "callback_accept_step", "callback_reject_step"):
            for suffix in ("", "_adjoint"):
                setattr(self, name + suffix, self._recorder(name + suffix))

    def _recorder(self, name):
        def record(t0, y0, dt):
            assert isinstance(t0, torch.Tensor) and isinstance(dt, torch.Tensor)
            self.calls.append((name, float(t0), float(dt), y0))

        return record

    def forward(self, t, y):
        return self.a * y * (1 + torch.sin(3 * t))


def _pattern(calls):
    return [name for name, *_ in calls]


@pytest.mark.parametrize("reverse", [False, True])
def test_adaptive_callbacks_are_called_as_torchdiffeq_calls_them(reverse):
    ts = torch.tensor([0.0, 2.0], dtype=D).flip(0) if reverse else torch.tensor([0.0, 2.0], dtype=D)
    ours, theirs = Recording(), Recording()
    odeint(ours, Y0, ts)
    torchdiffeq.odeint(theirs, Y0, ts)
    for rec in (ours, theirs):
        names = _pattern(rec.calls)
        # Every attempt announced, then judged.
        assert names[0::2] == ["callback_step"] * (len(names) // 2)
        assert set(names[1::2]) <= {"callback_accept_step", "callback_reject_step"}
    # The first call is the same: t0 in the caller's time, the state, dt > 0.
    (_, t0_o, dt_o, y_o), (_, t0_t, dt_t, y_t) = ours.calls[0], theirs.calls[0]
    assert t0_o == t0_t and dt_o > 0 and dt_t > 0
    assert torch.equal(y_o, y_t)
    accepted = [c for c in ours.calls if c[0] == "callback_accept_step"]
    assert abs(sum(c[2] for c in accepted) - 2.0) < 1e-9  # the accepted steps tile [0, 2]


def test_fixed_step_callbacks_match_torchdiffeq_exactly():
    ts = torch.tensor([0.0, 1.0], dtype=D)
    ours, theirs = Recording(), Recording()
    with pytest.warns(UserWarning, match="does not support callbacks"):
        odeint(ours, Y0, ts, method="rk4", options={"step_size": 0.25})
    with pytest.warns(UserWarning, match="does not support callbacks"):
        torchdiffeq.odeint(theirs, Y0, ts, method="rk4", options={"step_size": 0.25})
    assert [c[:3] for c in ours.calls] == [c[:3] for c in theirs.calls]
    for a, b in zip(ours.calls, theirs.calls, strict=True):
        assert close(a[3], b[3], 1e-12)


def test_adjoint_callbacks_are_called_in_the_backward_solve():
    ours, theirs = Recording(), Recording()
    for rec, fn in ((ours, odeint_adjoint), (theirs, torchdiffeq.odeint_adjoint)):
        out = fn(rec, Y0.clone().requires_grad_(True), torch.tensor([0.0, 1.0], dtype=D))
        rec.calls.clear()
        out.sum().backward()
    for rec in (ours, theirs):
        names = _pattern(rec.calls)
        assert names and names[0] == "callback_step_adjoint"
        assert set(names) <= {
            "callback_step_adjoint",
            "callback_accept_step_adjoint",
            "callback_reject_step_adjoint",
        }
        assert rec.calls[0][1] == 1.0  # the backward solve starts at the last time
    # Both receive torchdiffeq's tuple (t, y, adj_y, *adj_params).
    assert [tuple(p.shape) for p in ours.calls[0][3]] == [
        tuple(p.shape) for p in theirs.calls[0][3]
    ]


# --- perturb, norms, tolerances ----------------------------------------------------------


def _jump(t, x):
    return -x if t < 0.5 else x**2 * 0.1


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "heun3"])
@pytest.mark.parametrize("reverse", [False, True])
def test_perturb_evaluates_limits_inside_each_step_like_torchdiffeq(method, reverse):
    ts = torch.tensor([0.0, 1.0], dtype=D)
    ts = ts.flip(0) if reverse else ts
    seen = []

    def f(t, x):
        seen.append(float(t))
        return _jump(t, x)

    options = {"step_size": 0.5, "perturb": True}
    got = odeint(f, Y0, ts, method=method, options=options)
    want = torchdiffeq.odeint(_jump, Y0, ts, method=method, options=options)
    assert not {0.0, 0.5, 1.0} & set(seen)
    assert close(got, want, 1e-12)
    if method == "rk4" and not reverse:
        # Its last stage sits on the jump at 0.5: the left limit differs from the value.
        plain = odeint(_jump, Y0, ts, method=method, options={"step_size": 0.5})
        assert not close(got, plain, 1e-3)


def test_perturb_in_the_adjoint_backward_solve():
    seen = []

    def f(t, x):
        seen.append(float(t))
        return -x

    x0 = Y0.clone().requires_grad_(True)
    ts = torch.tensor([0.0, 1.0], dtype=D)
    out = odeint_adjoint(f, x0, ts, method="rk4", options={"step_size": 0.5, "perturb": True},
                         adjoint_params=())  # fmt: skip
    seen.clear()
    out.sum().backward()
    assert seen and not {0.5, 1.0} & set(seen)
    assert close(x0.grad, torch.full((2,), 1 + math.exp(-1.0), dtype=D), 1e-3)  # y(0) + y(1)


def test_callable_adjoint_norm_gets_torchdiffeqs_tuple():
    params = (
        torch.rand(7, dtype=D, requires_grad=True),
        torch.rand((), dtype=D, requires_grad=True),
    )
    shapes = []

    def adjoint_norm(state):
        shapes.append(tuple(tuple(s.shape) for s in state))
        return max(s.abs().max() for s in state if s.numel())

    def f(t, x):
        return -x * params[1] + params[0].sum() * 0.01

    x0 = (torch.tensor(1.0, dtype=D), torch.full((2, 2), 0.5, dtype=D))

    def tuple_f(t, x):
        return f(t, x[0]), f(t, x[1])

    out = odeint_adjoint(tuple_f, x0, torch.tensor([0.0, 1.0], dtype=D), adjoint_params=params,
                         adjoint_options={"norm": adjoint_norm})  # fmt: skip
    grads = torch.autograd.grad(out[0].sum() + out[1].sum(), params)
    assert shapes and set(shapes) == {((), (), (2, 2), (), (2, 2), (7,), ())}
    want_out = torchdiffeq.odeint(tuple_f, x0, torch.tensor([0.0, 1.0], dtype=D))
    want = torch.autograd.grad(want_out[0].sum() + want_out[1].sum(), params)
    assert close(grads, want, 1e-5)


def test_rnode_tolerance_lists_with_odeint_adjoint():
    # RNODE: a tuple state (z, logp, *reg_states) with atol=[atol, atol] + [1e20] *
    # len(reg_states): no error control on the regularisation integrals. torchdiffeq 0.2.5
    # fails in backward here; compat solves and its gradients match odeint's.
    model = Linear(2)

    def f(t, state):
        z = state[0]
        dz = model(t, z)
        return dz, -dz.sum().reshape(1), (dz**2).sum().reshape(1)

    def state0():
        return (Y0.clone().requires_grad_(True), torch.zeros(1, dtype=D), torch.zeros(1, dtype=D))

    ts = torch.tensor([0.0, 1.0], dtype=D)
    y0 = state0()
    params = tuple(model.parameters())
    out = odeint_adjoint(f, y0, ts, rtol=1e-8, atol=[1e-9, 1e-9, 1e20], adjoint_params=params)
    loss = out[0][-1].sum() + out[1][-1].sum() + out[2][-1].sum()
    got = torch.autograd.grad(loss, (y0[0], model.w))
    y0d = state0()
    outd = odeint(f, y0d, ts, rtol=1e-10, atol=1e-12)
    lossd = outd[0][-1].sum() + outd[1][-1].sum() + outd[2][-1].sum()
    want = torch.autograd.grad(lossd, (y0d[0], model.w))
    assert close(out[0], outd[0], 1e-6)
    assert close(got, want, 1e-5)


def test_tolerance_list_of_wrong_length_names_compat_argument():
    y0 = (Y0, Y0)
    with pytest.raises(ValueError, match=r"atol has 3 entries but the tuple y0 has 2 parts"):
        odeint(lambda t, y: (-y[0], -y[1]), y0, TS, atol=[1e-6, 1e-6, 1e-6])
    with pytest.raises(ValueError, match=r"adjoint_rtol has 1 entries"):
        odeint_adjoint(lambda t, y: (-y[0], -y[1]), y0, TS, adjoint_rtol=[1e-6],
                       adjoint_params=())  # fmt: skip
    for bad in (0, 2.5, "100"):
        with pytest.raises(ValueError, match=r"options\['max_num_steps'\] must be a positive"):
            odeint(decay, Y0, TS, options={"max_num_steps": bad})


def test_zero_tolerance_names_the_argument_and_what_to_pass():
    # torchdiffeq accepts rtol=0 (pure absolute control) and atol=0; compat refuses them
    # at the call and says which small positive value gives the same control.
    with pytest.raises(ValueError, match=r"rtol must be .* got 0\.0; pure absolute .* 1e-10"):
        odeint(decay, Y0, TS, rtol=0.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"atol must be .* got 0; pure relative .* 1e-12"):
        odeint(decay, Y0, TS, rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match=r"adjoint_atol must be .* got 0\.0; pure relative"):
        odeint_adjoint(decay, Y0, TS, adjoint_atol=0.0, adjoint_params=())
    odeint(decay, Y0, TS, options={"max_num_steps": 1e5})  # an integral float is fine


# --- odeint_dense, __version__, scipy ----------------------------------------------------


def test_odeint_dense_matches_torchdiffeq():
    t0, t1 = torch.tensor(0.0, dtype=D), torch.tensor(2.0, dtype=D)
    ours = odeint_dense(oscillator, Y0, t0, t1)
    theirs = torchdiffeq.odeint_dense(oscillator, Y0, t0, t1)
    t = torch.linspace(0.1, 1.9, 7, dtype=D)
    assert ours(t).shape == (7, 2)
    # torchdiffeq's dense function takes one time at a time.
    want = torch.stack([theirs(s) for s in t])
    assert close(ours(t), want, 1e-6)
    assert close(ours(t[3]), want[3], 1e-6)
    # A state with more than one dimension keeps its shape.
    y0 = torch.ones(3, 2, dtype=D)
    dense = odeint_dense(decay, y0, t0, t1)
    assert dense(t).shape == (7, 3, 2) and dense(t[0]).shape == (3, 2)
    assert close(dense(t[0]), torchdiffeq.odeint_dense(decay, y0, t0, t1)(t[0]), 1e-6)


def test_version_is_the_torchdiffeq_release_reproduced():
    assert neuralode.compat.__version__ == torchdiffeq.__version__ == "0.2.5"


@pytest.mark.parametrize("solver", ["RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA"])
def test_scipy_solver_matches_torchdiffeq(solver):
    options = {"solver": solver}
    got = odeint(oscillator, Y0, TS, method="scipy_solver", options=options)
    want = torchdiffeq.odeint(oscillator, Y0, TS, method="scipy_solver", options=options)
    assert close(got, want, 1e-8)  # rtol is 1e-7; LSODA differs from it by 2e-10
    rev = odeint(oscillator, Y0, TS.flip(0), method="scipy_solver", options=options)
    assert close(rev[-1], odeint(oscillator, Y0, TS.flip(0))[-1], 1e-4)


def test_scipy_solver_gradients_through_odeint_adjoint_match_torchdiffeq():
    def grads(fn):
        model = Linear(2)
        y0 = Y0.clone().requires_grad_(True)
        out = fn(model, y0, TS, method="scipy_solver", options={"solver": "DOP853"},
                 rtol=1e-10, atol=1e-10)  # fmt: skip
        return torch.autograd.grad(out.pow(2).sum(), (y0, model.w))

    ours, theirs = grads(odeint_adjoint), grads(torchdiffeq.odeint_adjoint)
    assert close(ours, theirs, 1e-6)


def test_scipy_solver_with_a_field_returning_a_wider_dtype():
    y0 = torch.ones(2, dtype=torch.float32)
    got = odeint(lambda t, y: -y.double(), y0, TS.float(), method="scipy_solver")
    want = torchdiffeq.odeint(lambda t, y: -y.double(), y0, TS.float(), method="scipy_solver")
    assert got.dtype == torch.float32 and close(got, want, 1e-6)


def test_scipy_solver_on_a_tuple_state():
    y0 = (torch.tensor(1.0, dtype=D), torch.ones(2, dtype=D))
    got = odeint(lambda t, y: (-y[0], -y[1]), y0, TS, method="scipy_solver")
    assert got[0].shape == (5,) and got[1].shape == (5, 2)
    assert close(got[0], torch.exp(-TS), 1e-5)


# --- the shim ----------------------------------------------------------------------------


def test_shim_package_is_neuralode_compat_under_torchdiffeqs_name():
    path = ROOT / "benchmarks" / "compat_shim" / "torchdiffeq" / "__init__.py"
    spec = importlib.util.spec_from_file_location("torchdiffeq_shim", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.odeint is odeint and module.odeint_adjoint is odeint_adjoint
    assert module.__version__ == "0.2.5"
    public = {name for name in dir(torchdiffeq) if not name.startswith("_")}
    missing = public - set(dir(module)) - {"odeint_event"}  # events: a later issue
    assert not missing


def test_no_warning_for_options_a_method_takes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(oscillator, Y0, TS, options={"first_step": 0.01, "dtype": D})
        odeint(oscillator, Y0, TS, method="rk4",
               options={"step_size": 0.1, "perturb": False, "interp": "cubic"})  # fmt: skip


@pytest.mark.slow
def test_adaptive_steps_may_shrink_to_torchdiffeqs_float64_time_resolution():
    # torchdiffeq keeps time in float64 (options['dtype']) whatever t's dtype: with float32
    # t, stepping across this discontinuity needs steps below float32's resolution at 0.5.
    def f(t, x):
        return -0.5 * x if t < 0.5 else x**2

    def grads(fn):
        x0 = torch.tensor([1.0, 2.0], dtype=D, requires_grad=True)
        t = torch.tensor([0.0, 1.0])  # float32
        out = fn(f, x0, t, atol=1e-6, method="adaptive_heun", adjoint_params=())
        return torch.autograd.grad(out.sum(), x0)

    assert close(grads(odeint_adjoint), grads(torchdiffeq.odeint_adjoint), 1e-4)


@pytest.mark.parametrize("seminorm", [False, True])
def test_adjoint_options_on_grad_fn_hold_torchdiffeqs_norm(seminorm):
    # torchdiffeq exposes the backward norm as xs.grad_fn.adjoint_options['norm'] (its own
    # tests spy on it there); compat's is the same function of the same tuple.
    params = (torch.rand(7, requires_grad=True), torch.rand((), requires_grad=True))
    kwargs = {"adjoint_options": {"norm": "seminorm"}} if seminorm else {}
    xs = odeint_adjoint(lambda t, x: x, torch.ones(2, 2), torch.tensor([0.0, 1.0]),
                        adjoint_params=params, **kwargs)  # fmt: skip
    default = xs.grad_fn.adjoint_options["norm"]
    calls = []

    def spy(state):
        t, y, adj_y, p1, p2 = state
        assert y.shape == adj_y.shape == (2, 2) and p1.shape == (7,) and p2.shape == ()
        want = max(t.abs(), y.pow(2).mean().sqrt(), adj_y.pow(2).mean().sqrt())
        if not seminorm:
            want = max(want, p1.pow(2).mean().sqrt(), p2.abs())
        got = default(state)
        assert float((got - want).abs()) < 1e-6
        calls.append(1)
        return got

    xs.grad_fn.adjoint_options["norm"] = spy
    xs.sum().backward()
    assert calls


def test_scipy_failure_is_a_compat_solver_error():
    def blow_up(t, y):
        return y**2

    with pytest.raises(AssertionError, match=r"^underflow in dt .*scipy RK45 stopped") as info:
        odeint(blow_up, torch.ones(1, dtype=D), torch.tensor([0.0, 2.0], dtype=D),
               method="scipy_solver", options={"solver": "RK45"})  # fmt: skip
    assert isinstance(info.value, neuralode.SolverError)
