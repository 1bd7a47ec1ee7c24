"""neuralode.compat.odeint against torchdiffeq.odeint (0.2.5) on the same problems."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import neuralode
from neuralode.compat import METHODS, odeint

torchdiffeq = pytest.importorskip("torchdiffeq")
solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp

D = torch.float64
ADAPTIVE = [name for name, cls in METHODS.items() if cls.tableau.adaptive]
# torchdiffeq 0.2.5 has no tsit5 and none of the implicit methods (its development
# version's names; tested in tests/solvers/test_implicit_compat.py).
IMPLICIT = {
    "implicit_euler", "implicit_midpoint", "trapezoid", "sdirk2", "trbdf2", "radauIIA3",
    "radauIIA5", "gl4", "gl6",
}  # fmt: skip
FIXED = [n for n, cls in METHODS.items() if not cls.tableau.adaptive and n not in IMPLICIT]
NOT_IN_TORCHDIFFEQ = {"tsit5"}


def pendulum(t, y):
    """A smooth nonlinear 2-D problem: a weakly forced pendulum."""
    return torch.stack([y[1], -torch.sin(y[0]) + 0.1 * torch.cos(t)])


def pendulum_tuple(t, y):
    angle, velocity = y
    return velocity, -torch.sin(angle) + 0.1 * torch.cos(t)


Y0 = torch.tensor([1.0, 0.0], dtype=D)


def reference(ts: torch.Tensor, y0: torch.Tensor = Y0) -> torch.Tensor:
    """A tight independent solution (scipy DOP853 at rtol 1e-13)."""

    def f(t, y):
        return [y[1], -np.sin(y[0]) + 0.1 * np.cos(t)]

    t = ts.numpy()
    sol = solve_ivp(f, (t[0], t[-1]), y0.numpy(), "DOP853", t_eval=t, rtol=1e-13, atol=1e-14)
    assert sol.success
    return torch.tensor(sol.y.T, dtype=D)


def count_calls(f):
    """``f`` wrapped to record the times it is called at."""
    times: list[float] = []

    def wrapped(t, y):
        times.append(float(t))
        return f(t, y)

    wrapped.times = times
    return wrapped


def test_method_table_is_the_expected_one():
    assert set(METHODS) == {
        "dopri8",
        "dopri5",
        "tsit5",
        "bosh3",
        "fehlberg2",
        "adaptive_heun",
        "euler",
        "midpoint",
        "heun2",
        "heun3",
        "rk4",
        *IMPLICIT,
    }
    assert set(ADAPTIVE) == {"dopri8", "dopri5", "tsit5", "bosh3", "fehlberg2", "adaptive_heun"}


# --- adaptive methods ------------------------------------------------------------------

# Global error in units of the requested tolerance. fehlberg2 is a 1(2) pair whose global
# error is far above its local tolerance in torchdiffeq too (about 300x on this problem).
ERROR_BOUND = {"fehlberg2": 600.0}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_method_accuracy_and_agreement(method, reverse):
    tol = 1e-5 if method in ("fehlberg2", "adaptive_heun") else 1e-6
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    y0 = Y0
    if reverse:
        ts = ts.flip(0)
        y0 = reference(torch.tensor([0.0, 2.0], dtype=D))[-1]
    exact = reference(ts, y0)
    ours = odeint(pendulum, y0, ts, rtol=tol, atol=tol, method=method)
    assert ours.shape == (5, 2)
    err_ours = float((ours - exact).abs().max())
    assert err_ours <= ERROR_BOUND.get(method, 20.0) * tol
    if method not in NOT_IN_TORCHDIFFEQ:
        # Compared through the reference: torchdiffeq's own dopri8/bosh3 outputs are tens to
        # hundreds of tolerances off here, so neuralode must merely be no worse.
        theirs = torchdiffeq.odeint(pendulum, y0, ts, rtol=tol, atol=tol, method=method)
        err_theirs = float((theirs - exact).abs().max())
        assert err_ours <= 2.0 * err_theirs + tol


def test_default_method_is_dopri5():
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    default = odeint(pendulum, Y0, ts, rtol=1e-6, atol=1e-6)
    dopri5 = odeint(pendulum, Y0, ts, rtol=1e-6, atol=1e-6, method="dopri5")
    tsit5 = odeint(pendulum, Y0, ts, rtol=1e-6, atol=1e-6, method="tsit5")
    assert torch.equal(default, dopri5)
    assert not torch.equal(default, tsit5)


def test_default_tolerances_are_torchdiffeqs():
    # torchdiffeq: rtol=1e-7, atol=1e-9.
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    default = odeint(pendulum, Y0, ts)
    explicit = odeint(pendulum, Y0, ts, rtol=1e-7, atol=1e-9)
    looser = odeint(pendulum, Y0, ts, rtol=1e-6, atol=1e-9)
    assert torch.equal(default, explicit)
    assert not torch.equal(default, looser)
    assert float((default - reference(ts)).abs().max()) < 20 * 1e-7


# --- fixed-step methods ----------------------------------------------------------------


def _grid(func, y0, t):
    # Written in terms of the t it is given, so it serves reverse solves as well.
    return torch.linspace(float(t[0]), float(t[-1]), 23, dtype=t.dtype)


FIXED_OPTIONS = {
    "default-grid": None,
    "step_size": {"step_size": 0.1},
    "step_size-off-grid": {"step_size": 0.07},
    "step_size-cubic": {"step_size": 0.07, "interp": "cubic"},
    "grid_constructor": {"grid_constructor": _grid},
    "grid_constructor-cubic": {"grid_constructor": _grid, "interp": "cubic"},
}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("options", FIXED_OPTIONS.values(), ids=FIXED_OPTIONS.keys())
@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_method_matches_torchdiffeq(method, options, reverse):
    ts = torch.linspace(0.0, 3.0, 7, dtype=D)
    if reverse:
        ts = ts.flip(0)
    ours = odeint(pendulum, Y0, ts, method=method, options=options)
    theirs = torchdiffeq.odeint(pendulum, Y0, ts, method=method, options=options)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_fixed_step_interp_actually_differs():
    # Guard for the test above: 'cubic' and 'linear' are distinguishable on this problem.
    ts = torch.linspace(0.0, 3.0, 7, dtype=D)
    linear = odeint(pendulum, Y0, ts, method="rk4", options={"step_size": 0.07})
    cubic = odeint(pendulum, Y0, ts, method="rk4", options={"step_size": 0.07, "interp": "cubic"})
    assert float((linear - cubic).abs().max()) > 1e-8


def test_fixed_step_grid_constructor_receives_func_y0_t():
    seen = []

    def grid(func, y0, t):
        seen.append((func(t[0], y0), y0, t))
        return torch.linspace(float(t[0]), float(t[-1]), 11, dtype=D)

    ts = torch.linspace(0.0, 1.0, 3, dtype=D)
    odeint(pendulum, Y0, ts, method="euler", options={"grid_constructor": grid})
    (f0, y0, t), *_ = seen
    torch.testing.assert_close(f0, pendulum(ts[0], Y0))
    assert torch.equal(y0, Y0) and torch.equal(t, ts)


# --- tuple states ----------------------------------------------------------------------


def test_tuple_state_adaptive():
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    y0 = (Y0[:1].clone(), Y0[1:].clone())
    tol = 1e-7
    ours = odeint(pendulum_tuple, y0, ts, rtol=tol, atol=tol)
    theirs = torchdiffeq.odeint(pendulum_tuple, y0, ts, rtol=tol, atol=tol)
    assert isinstance(ours, tuple) and len(ours) == 2
    assert ours[0].shape == theirs[0].shape == (5, 1)
    exact = reference(ts)
    for part, cols in zip(ours, (slice(0, 1), slice(1, 2)), strict=True):
        assert float((part - exact[:, cols]).abs().max()) <= 20 * tol
    for a, b in zip(ours, theirs, strict=True):
        assert float((a - b).abs().max()) <= 20 * tol


@pytest.mark.parametrize("method", ["euler", "rk4"])
def test_tuple_state_fixed_step(method):
    ts = torch.linspace(0.0, 3.0, 7, dtype=D)
    y0 = (Y0[:1].clone(), Y0[1:].clone())
    options = {"step_size": 0.07}
    ours = odeint(pendulum_tuple, y0, ts, method=method, options=options)
    theirs = torchdiffeq.odeint(pendulum_tuple, y0, ts, method=method, options=options)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


# --- options ---------------------------------------------------------------------------


@pytest.mark.parametrize("first_step", [1e-3, 0.5])
def test_first_step(first_step):
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    ours_f, theirs_f = count_calls(pendulum), count_calls(pendulum)
    ours = odeint(ours_f, Y0, ts, options={"first_step": first_step})
    theirs = torchdiffeq.odeint(theirs_f, Y0, ts, options={"first_step": first_step})
    # dopri5's second stage is at c2 = 1/5 of the first step.
    assert 0.2 * first_step in ours_f.times[:3]
    assert ours_f.times[:7] == pytest.approx(theirs_f.times[:7], abs=1e-15)
    assert float((ours - reference(ts)).abs().max()) <= 20 * 1e-7
    assert float((ours - theirs).abs().max()) <= 20 * 1e-7


def test_step_t_is_stepped_to_exactly():
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    stop = 1.2345678
    with_stop, without = count_calls(pendulum), count_calls(pendulum)
    ours = odeint(with_stop, Y0, ts, options={"step_t": torch.tensor([stop], dtype=D)})
    odeint(without, Y0, ts)
    assert stop in with_stop.times
    assert stop not in without.times
    assert float((ours - reference(ts)).abs().max()) <= 20 * 1e-7


def _jump_field(left_closed: bool):
    """``y' = -y`` before t = 0.5 and ``y' = 2 - y`` after; the value at 0.5 itself is the
    left branch when ``left_closed`` (``t <= 0.5``) and the right one otherwise."""

    def f(t, y):
        before = bool(t <= 0.5) if left_closed else bool(t < 0.5)
        return -y if before else 2.0 - y

    return f


def _jump_exact(t: float) -> float:
    if t <= 0.5:
        return math.exp(-t)
    return 2.0 + (math.exp(-0.5) - 2.0) * math.exp(-(t - 0.5))


JUMP_CONVENTIONS = [
    # The branch that owns t = 0.5 is the one *behind* the solve: no stage sees the far side.
    pytest.param(True, False, id="left-closed-forward"),
    pytest.param(False, True, id="right-closed-reverse"),
    # The branch that owns t = 0.5 is the one *ahead*: the step landing on the jump
    # evaluates its last stage exactly at 0.5, on the far side.
    pytest.param(
        False,
        False,
        id="right-closed-forward",
    ),
    pytest.param(
        True,
        True,
        id="left-closed-reverse",
    ),
]


@pytest.mark.parametrize(("left_closed", "reverse"), JUMP_CONVENTIONS)
def test_jump_t_solves_a_discontinuous_field_accurately(left_closed, reverse):
    ts = torch.linspace(0.0, 1.5, 7, dtype=D)
    if reverse:
        ts = ts.flip(0)
    y0 = torch.tensor([_jump_exact(float(ts[0]))], dtype=D)
    exact = torch.tensor([[_jump_exact(t)] for t in ts.tolist()], dtype=D)
    tol = 1e-7
    with_jump, without = (
        count_calls(_jump_field(left_closed)),
        count_calls(_jump_field(left_closed)),
    )
    jump_t = torch.tensor([0.5], dtype=D)
    ours = odeint(with_jump, y0, ts, rtol=tol, atol=tol, options={"jump_t": jump_t})
    plain = odeint(without, y0, ts, rtol=tol, atol=tol)
    theirs = torchdiffeq.odeint(
        _jump_field(left_closed), y0, ts, rtol=tol, atol=tol, options={"jump_t": jump_t}
    )
    err_ours = float((ours - exact).abs().max())
    err_plain = float((plain - exact).abs().max())
    assert err_plain > 20 * tol  # the discontinuity does hurt without jump_t
    assert float((theirs - exact).abs().max()) <= 2 * tol  # and torchdiffeq handles it
    assert err_ours <= 2 * tol
    assert len(with_jump.times) < len(without.times) / 2


def test_norm_option_is_called_on_the_state_and_used():
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    shapes = []

    def strict_norm(x):
        shapes.append(tuple(x.shape))
        return 100.0 * x.abs().max()

    plain_f, strict_f = count_calls(pendulum), count_calls(pendulum)
    plain = odeint(plain_f, Y0, ts, rtol=1e-6, atol=1e-6)
    strict = odeint(strict_f, Y0, ts, rtol=1e-6, atol=1e-6, options={"norm": strict_norm})
    exact = reference(ts)
    assert shapes and set(shapes) == {(2,)}
    assert len(strict_f.times) > len(plain_f.times)
    assert float((strict - exact).abs().max()) < float((plain - exact).abs().max())


def test_norm_option_receives_a_tuple_for_a_tuple_state():
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    y0 = (Y0[:1].clone(), Y0[1:].clone())
    ours_seen, theirs_seen = [], []

    def norm_for(seen):
        def norm(x):
            seen.append(tuple(tuple(p.shape) for p in x))
            return max(p.abs().max() for p in x)

        return norm

    ours = odeint(pendulum_tuple, y0, ts, options={"norm": norm_for(ours_seen)})
    theirs = torchdiffeq.odeint(pendulum_tuple, y0, ts, options={"norm": norm_for(theirs_seen)})
    assert set(ours_seen) == set(theirs_seen) == {((1,), (1,))}
    for a, b in zip(ours, theirs, strict=True):
        assert float((a - b).abs().max()) <= 20 * 1e-7


def test_max_num_steps():
    # torchdiffeq counts max_num_steps per output interval: 4 intervals give 12 in all.
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    with pytest.raises(neuralode.SolverError) as info:
        odeint(pendulum, Y0, ts, options={"max_num_steps": 3})
    assert info.value.status is neuralode.Status.MAX_STEPS
    assert info.value.steps == 12
    with pytest.raises(AssertionError, match="max_num_steps"):  # torchdiffeq fails too
        torchdiffeq.odeint(pendulum, Y0, ts, options={"max_num_steps": 3})
    enough = odeint(pendulum, Y0, ts, options={"max_num_steps": 1000})
    assert float((enough - reference(ts)).abs().max()) <= 20 * 1e-7


def test_max_num_steps_applies_to_fixed_step_methods():
    ts = torch.tensor([0.0, 1.0], dtype=D)
    with pytest.raises(neuralode.SolverError, match="max_num_steps exceeded"):
        odeint(pendulum, Y0, ts, method="rk4", options={"step_size": 0.01, "max_num_steps": 50})
    odeint(pendulum, Y0, ts, method="rk4", options={"step_size": 0.01, "max_num_steps": 100})


def test_min_step_accepts_steps_at_min_step_like_torchdiffeq():
    def forcing(t, y):
        return 50.0 * torch.cos(50.0 * t) + 0.0 * y

    ts = torch.tensor([0.0, 2.0], dtype=D)
    y0 = torch.zeros(1, dtype=D)
    options = {"min_step": 0.05}
    theirs = torchdiffeq.odeint(forcing, y0, ts, rtol=1e-10, atol=1e-10, options=options)
    ours = odeint(forcing, y0, ts, rtol=1e-10, atol=1e-10, options=options)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-2)


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_step", 0.01), ("safety", 0.5), ("ifactor", 1.5)],
)
def test_step_control_options_are_accepted_and_change_the_steps(option, value):
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    plain_f, tuned_f = count_calls(pendulum), count_calls(pendulum)
    odeint(plain_f, Y0, ts, rtol=1e-6, atol=1e-6)
    tuned = odeint(tuned_f, Y0, ts, rtol=1e-6, atol=1e-6, options={option: value})
    assert tuned_f.times != plain_f.times
    assert float((tuned - reference(ts)).abs().max()) <= 20 * 1e-6


def test_max_step_bounds_every_step():
    ts = torch.tensor([0.0, 1.0], dtype=D)
    f = count_calls(pendulum)
    odeint(f, Y0, ts, method="dopri5", options={"max_step": 0.01})
    # dopri5's stages are at most one step ahead of the step start: 100+ steps of <= 0.01.
    assert len(f.times) >= 6 * 100


@pytest.mark.parametrize("dfactor", [0.2, 0.5])
def test_dfactor_bounds_the_shrink_after_a_rejection(dfactor):
    # A first step of 1.0 at rtol 1e-10 is rejected with a huge error ratio, so the retry
    # is exactly dfactor times as long; dopri5's second stage sits at 1/5 of each attempt.
    ts = torch.tensor([0.0, 2.0], dtype=D)
    ours_f, theirs_f = count_calls(pendulum), count_calls(pendulum)
    options = {"first_step": 1.0, "dfactor": dfactor}
    odeint(ours_f, Y0, ts, rtol=1e-10, atol=1e-10, options=options)
    torchdiffeq.odeint(theirs_f, Y0, ts, rtol=1e-10, atol=1e-10, options=options)
    assert 0.2 in ours_f.times[:3]
    assert 0.2 * dfactor in ours_f.times
    assert 0.2 * dfactor in theirs_f.times
