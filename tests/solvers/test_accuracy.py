"""Accuracy of the adaptive solvers against exact solutions and a tight scipy reference.

The error is measured as ``max |y - y_ref| / (tol (1 + |y_ref|))`` over every output time
and component, with ``rtol = atol = tol``: a global error of a few units means the solver
delivers what was asked for. Fehlberg2 is allowed ~1e4: its embedded first-order formula
nearly satisfies the second-order condition (h² error coefficient 1/512), so the error
estimate is tiny next to the error of the propagated second-order solution and the global
error is ~1e3 x tol (torchdiffeq's fehlberg2 behaves the same).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm
from scipy.special import ellipj

import neuralode as no

F64 = torch.float64

ADAPTIVE = (no.AdaptiveHeun, no.Fehlberg2, no.Bosh3, no.Dopri5, no.Tsit5, no.Dopri8)
HIGH_ORDER = (no.Dopri5, no.Tsit5, no.Dopri8)

# Tolerances each solver is held to, and the allowed multiple of the tolerance.
TOLS = {
    "AdaptiveHeun": (1e-3, 1e-4),
    "Fehlberg2": (1e-4, 1e-5),
    "Bosh3": (1e-4, 1e-6),
    "Dopri5": (1e-6, 1e-8),
    "Tsit5": (1e-6, 1e-8),
    "Dopri8": (1e-6, 1e-8),
}
BOUND = {
    "AdaptiveHeun": 50,
    "Fehlberg2": 1e4,
    "Bosh3": 100,
    "Dopri5": 50,
    "Tsit5": 50,
    "Dopri8": 50,
}

A3 = np.array([[-0.1, -1.0, 0.2], [1.0, -0.1, 0.0], [0.3, 0.0, -0.5]])
A3_T = torch.tensor(A3, dtype=F64)
_A3_EIGVALS, _A3_EIGVECS = np.linalg.eig(A3)


def linear3_exact(t: np.ndarray, y0=(1.0, 0.0, 0.5)) -> np.ndarray:
    """``expm(A t) y0`` through the eigendecomposition (scipy's expm per time is slow)."""
    coeffs = np.linalg.solve(_A3_EIGVECS, np.asarray(y0, dtype=np.complex128))
    return ((np.exp(np.outer(t, _A3_EIGVALS)) * coeffs) @ _A3_EIGVECS.T).real


@dataclass(frozen=True)
class Problem:
    name: str
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    y0: tuple[float, ...]
    t_end: float
    exact: Callable[[np.ndarray], np.ndarray] | None = None  # from (t0=0, y0)


def _van_der_pol(mu: float):
    def f(t, y):
        return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    return f


PROBLEMS = {
    p.name: p
    for p in [
        Problem(
            "linear3",
            lambda t, y: A3_T @ y,
            (1.0, 0.0, 0.5),
            10.0,
            linear3_exact,
        ),
        Problem("van_der_pol_2", _van_der_pol(2.0), (2.0, 0.0), 10.0),
        Problem(
            "lotka_volterra",
            lambda t, y: torch.stack([1.5 * y[0] - y[0] * y[1], -3 * y[1] + y[0] * y[1]]),
            (1.0, 1.0),
            10.0,
        ),
        # DETEST A2, A3 and B5 (Hull, Enright, Fellen & Sedgwick 1972).
        Problem("detest_a2", lambda t, y: -(y**3) / 2, (1.0,), 20.0, lambda t: 1 / np.sqrt(1 + t)),
        Problem(
            "detest_a3",
            lambda t, y: y * torch.cos(t),
            (1.0,),
            20.0,
            lambda t: np.exp(np.sin(t))[:, None],
        ),
        Problem(
            "detest_b5",
            lambda t, y: torch.stack([y[1] * y[2], -y[0] * y[2], -0.51 * y[0] * y[1]]),
            (0.0, 1.0, 1.0),
            20.0,
            lambda t: np.stack(ellipj(t, 0.51)[:3], axis=-1),
        ),
        Problem("van_der_pol_10", _van_der_pol(10.0), (2.0, 0.0), 20.0),
    ]
}
FAST_PROBLEMS = [name for name in PROBLEMS if name != "van_der_pol_10"]


@functools.cache
def _scipy(name: str, y0: tuple[float, ...], ts: tuple[float, ...]) -> np.ndarray:
    f = PROBLEMS[name].f

    def fun(t, y):
        return f(torch.tensor(t, dtype=F64), torch.from_numpy(y)).numpy()

    sol = solve_ivp(fun, (ts[0], ts[-1]), y0, method="DOP853", rtol=1e-12, atol=1e-12, t_eval=ts)
    assert sol.success
    return sol.y.T


def reference(problem: Problem, ts: np.ndarray) -> np.ndarray:
    """The exact solution where known, else scipy's DOP853 at rtol = atol = 1e-12."""
    if problem.exact is not None:
        return problem.exact(ts).reshape(len(ts), -1)
    return _scipy(problem.name, problem.y0, tuple(ts.tolist()))


def scaled_error(ys: torch.Tensor, ref: np.ndarray, tol: float) -> float:
    ys = ys.reshape(ref.shape).numpy()
    return float((np.abs(ys - ref) / (tol * (1 + np.abs(ref)))).max())


def run(problem: Problem, ts, solver, tol, **kwargs):
    return no.solve(
        problem.f,
        torch.tensor(problem.y0, dtype=F64),
        torch.as_tensor(ts, dtype=F64),
        solver=solver,
        controller=no.PIDController(rtol=tol, atol=tol),
        **kwargs,
    )


def _cases(problems):
    for cls in ADAPTIVE:
        for tol in TOLS[cls.__name__]:
            for name in problems:
                yield pytest.param(cls, tol, name, id=f"{cls.__name__}-{tol:g}-{name}")


@pytest.mark.parametrize(("solver_cls", "tol", "name"), list(_cases(FAST_PROBLEMS)))
def test_error_is_a_small_multiple_of_the_tolerance(solver_cls, tol, name):
    problem = PROBLEMS[name]
    ts = np.linspace(0.0, problem.t_end, 21)
    sol = run(problem, ts, solver_cls(), tol, max_steps=20_000)
    err = scaled_error(sol.ys, reference(problem, ts), tol)
    assert err <= BOUND[solver_cls.__name__], f"error is {err:.1f} x tol"


@pytest.mark.slow
@pytest.mark.parametrize(("solver_cls", "tol", "name"), list(_cases(["van_der_pol_10"])))
def test_error_is_a_small_multiple_of_the_tolerance_van_der_pol_10(solver_cls, tol, name):
    test_error_is_a_small_multiple_of_the_tolerance(solver_cls, tol, name)


def test_references_agree_where_both_exist():
    # The references themselves are trustworthy: they agree with each other to ~1e-10.
    np.testing.assert_allclose(
        linear3_exact(np.array([2.5])), [expm(2.5 * A3) @ [1.0, 0.0, 0.5]], rtol=1e-13
    )
    for name in ("linear3", "detest_a3", "detest_b5"):
        problem = PROBLEMS[name]
        ts = np.linspace(0.0, problem.t_end, 21)
        scipy_ref = _scipy(name, problem.y0, tuple(ts.tolist()))
        np.testing.assert_allclose(scipy_ref, reference(problem, ts), rtol=0, atol=1e-9)


PROPORTIONALITY_TOLS = {
    "AdaptiveHeun": (1e-2, 3e-3, 1e-3, 3e-4),
    "Fehlberg2": (1e-3, 1e-4, 1e-5, 1e-6),
    "Bosh3": (1e-3, 1e-4, 1e-5, 1e-6),
    "Dopri5": (1e-5, 1e-6, 1e-7, 1e-8),
    "Tsit5": (1e-5, 1e-6, 1e-7, 1e-8),
    "Dopri8": (1e-6, 1e-7, 1e-8, 1e-9),
}


@pytest.mark.parametrize(
    ("solver_cls", "name"),
    [(cls, name) for cls in ADAPTIVE for name in ("linear3", "van_der_pol_2")]
    + [(cls, "lotka_volterra") for cls in HIGH_ORDER],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_error_falls_in_proportion_to_the_tolerance(solver_cls, name):
    problem = PROBLEMS[name]
    ts = np.linspace(0.0, problem.t_end, 11)
    ref = reference(problem, ts)
    tols = np.array(PROPORTIONALITY_TOLS[solver_cls.__name__])
    errors = [
        np.abs(run(problem, ts, solver_cls(), tol, max_steps=20_000).ys.numpy() - ref).max()
        for tol in tols
    ]
    slope = np.polyfit(np.log(tols), np.log(errors), 1)[0]
    assert 0.6 <= slope <= 1.3, f"error ~ tol^{slope:.2f}; errors {errors}"


# ---------------------------------------------------------------------------------------
# Tuple states
# ---------------------------------------------------------------------------------------


def _split(y):
    """``(3,)`` -> parts of shapes ``(2,)`` and ``(1, 1)``; works on a leading time axis too."""
    return y[..., :2], y[..., 2:].reshape(*y.shape[:-1], 1, 1)


def _join(a, b):
    return torch.cat([a, b.reshape(*b.shape[:-2], 1)], dim=-1)


def _mixed(t, y):
    return torch.cos(t) * (A3_T @ y) + torch.stack([y[1] * y[2], -y[0] * y[2], y[0] ** 2])


@pytest.mark.parametrize("solver_cls", ADAPTIVE, ids=lambda c: c.__name__)
def test_tuple_state_equals_concatenated_state(solver_cls):
    y0 = torch.tensor([1.0, 0.0, 0.5], dtype=F64)
    ts = torch.linspace(0.0, 3.0, 17, dtype=F64)
    tol = TOLS[solver_cls.__name__][0]

    def solve(f, y):
        return no.solve(
            f, y, ts, solver=solver_cls(), controller=no.PIDController(tol, tol), dense=True
        )

    flat = solve(_mixed, y0)
    tup = solve(lambda t, state: _split(_mixed(t, _join(*state))), _split(y0))
    assert isinstance(tup.ys, tuple)
    assert tup.ys[0].shape == (17, 2) and tup.ys[1].shape == (17, 1, 1)
    assert (tup.stats.accepted, tup.stats.rejected) == (flat.stats.accepted, flat.stats.rejected)
    torch.testing.assert_close(_join(*tup.ys), flat.ys, rtol=1e-14, atol=1e-15)
    t_dense = torch.tensor([0.3, 1.7, 2.9], dtype=F64)
    torch.testing.assert_close(
        _join(*tup.dense(t_dense)), flat.dense(t_dense), rtol=1e-14, atol=1e-15
    )


# ---------------------------------------------------------------------------------------
# Reverse time
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver_cls", ADAPTIVE, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", ["linear3", "detest_a3", "lotka_volterra", "detest_b5"])
def test_reverse_time_solve(solver_cls, name):
    problem = PROBLEMS[name]
    tol = TOLS[solver_cls.__name__][-1]
    t_end = min(problem.t_end, 5.0)
    fwd = np.linspace(0.0, t_end, 11)
    back = fwd[::-1].copy()
    y_end = tuple(reference(problem, fwd)[-1].tolist())
    # From y(t_end) back to t = 0 must retrace the forward solution.
    sol = no.solve(
        problem.f,
        torch.tensor(y_end, dtype=F64),
        torch.tensor(back, dtype=F64),
        solver=solver_cls(),
        controller=no.PIDController(rtol=tol, atol=tol),
        max_steps=20_000,
    )
    assert sol.t_last == 0.0
    err = scaled_error(sol.ys, reference(problem, fwd)[::-1], tol)
    assert err <= BOUND[solver_cls.__name__], f"error is {err:.1f} x tol"


def test_reverse_time_matches_scipy_from_an_arbitrary_state():
    problem = PROBLEMS["lotka_volterra"]
    ts = np.linspace(3.0, -2.0, 26)
    y0 = (2.0, 0.5)
    ref = _scipy(problem.name, y0, tuple(ts.tolist()))
    sol = no.solve(
        problem.f,
        torch.tensor(y0, dtype=F64),
        torch.tensor(ts, dtype=F64),
        controller=no.PIDController(rtol=1e-8, atol=1e-8),
    )
    assert scaled_error(sol.ys, ref, 1e-8) <= 50


# ---------------------------------------------------------------------------------------
# Output times
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver_cls", ADAPTIVE, ids=lambda c: c.__name__)
def test_many_output_times_match_scipy(solver_cls):
    problem = PROBLEMS["van_der_pol_2"]
    tol = TOLS[solver_cls.__name__][-1]
    # 200 times, unevenly spaced, most of them strictly inside steps.
    ts = problem.t_end * np.linspace(0.0, 1.0, 200) ** 1.5
    sol = run(problem, ts, solver_cls(), tol, max_steps=20_000)
    err = scaled_error(sol.ys, reference(problem, ts), tol)
    assert err <= BOUND[solver_cls.__name__], f"error is {err:.1f} x tol"


# ---------------------------------------------------------------------------------------
# Per-component tolerances
# ---------------------------------------------------------------------------------------

# Powers of two, so scaling the problem is exact in floating point.
SCALE = torch.tensor([1.0, 2.0**-20, 2.0**20], dtype=F64)


@pytest.mark.parametrize("solver_cls", HIGH_ORDER + (no.Bosh3,), ids=lambda c: c.__name__)
def test_componentwise_tolerance_is_scale_invariant(solver_cls):
    # z = S y solves z' = S A S^-1 z. With atol_i = S_i atol, the scaled error ratio is
    # the same as for y with a scalar atol: identical steps, and z = S y to rounding.
    # A scalar atol on z would let the tiny component go uncontrolled and change the steps.
    a_scaled = SCALE[:, None] * A3_T / SCALE[None, :]
    y0 = torch.tensor([1.0, 0.3, 0.5], dtype=F64)
    ts = torch.linspace(0.0, 10.0, 11, dtype=F64)
    rtol, atol = 1e-6, 1e-9
    plain = no.solve(
        lambda t, y: A3_T @ y,
        y0,
        ts,
        solver=solver_cls(),
        controller=no.PIDController(rtol=rtol, atol=atol),
    )
    scaled = no.solve(
        lambda t, z: a_scaled @ z,
        SCALE * y0,
        ts,
        solver=solver_cls(),
        controller=no.PIDController(rtol=torch.full((3,), rtol, dtype=F64), atol=SCALE * atol),
    )
    assert scaled.stats.accepted == plain.stats.accepted
    assert scaled.stats.rejected == plain.stats.rejected
    torch.testing.assert_close(scaled.ys / SCALE, plain.ys, rtol=1e-13, atol=0)
    scalar_atol = no.solve(
        lambda t, z: a_scaled @ z,
        SCALE * y0,
        ts,
        solver=solver_cls(),
        controller=no.PIDController(rtol=rtol, atol=atol),
    )
    assert scalar_atol.stats.accepted != plain.stats.accepted


def test_componentwise_tolerance_tightens_only_its_component():
    # Two uncoupled oscillators; only the second has a tight tolerance. Its error must meet
    # that tolerance, which the loose scalar tolerance alone would not.
    def f(t, y):
        return torch.stack([-y[1], y[0], -2 * y[3], 2 * y[2]])

    y0 = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)
    ts = torch.linspace(0.0, 10.0, 11, dtype=F64)
    t = ts.numpy()
    exact = np.stack([np.cos(t), np.sin(t), np.cos(2 * t), np.sin(2 * t)], axis=-1)
    tight = torch.tensor([1e-3, 1e-3, 1e-9, 1e-9], dtype=F64)

    def error_of_second(rtol, atol):
        sol = no.solve(f, y0, ts, controller=no.PIDController(rtol=rtol, atol=atol))
        return np.abs(sol.ys.numpy() - exact)[:, 2:].max(), sol.stats.accepted

    err_tight, steps_tight = error_of_second(tight, tight)
    err_loose, steps_loose = error_of_second(1e-3, 1e-3)
    _, steps_all = error_of_second(1e-9, 1e-9)
    assert err_tight <= 100 * 1e-9 < err_loose
    assert steps_loose < steps_tight <= steps_all


def test_per_part_tolerances_for_a_tuple_state():
    # One tolerance per part of a tuple state, broadcast to each part's shape. As above,
    # scaling the second part by 2^20 together with its atol must not change the steps;
    # tolerances applied to the wrong part (or the scalar atol) would.
    scale = 2.0**20

    def f(t, state):
        x, v = state
        return v.reshape(1) / scale, -scale * x.reshape(1, 1)

    def oscillator(t, y):
        return torch.stack([y[1], -y[0]])

    ts = torch.linspace(0.0, 10.0, 11, dtype=F64)
    plain = no.solve(
        oscillator,
        torch.tensor([1.0, 0.0], dtype=F64),
        ts,
        controller=no.PIDController(rtol=1e-7, atol=1e-9),
    )
    y0 = (torch.tensor([1.0], dtype=F64), torch.tensor([[0.0]], dtype=F64))

    def solve(atol):
        return no.solve(f, y0, ts, controller=no.PIDController(rtol=1e-7, atol=atol))

    per_part = solve((torch.tensor(1e-9, dtype=F64), torch.tensor([[scale * 1e-9]], dtype=F64)))
    assert per_part.stats.accepted == plain.stats.accepted
    torch.testing.assert_close(per_part.ys[0][:, 0], plain.ys[:, 0], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(
        per_part.ys[1][:, 0, 0] / scale, plain.ys[:, 1], rtol=1e-13, atol=1e-15
    )
    swapped = solve((torch.tensor(scale * 1e-9, dtype=F64), torch.tensor([[1e-9]], dtype=F64)))
    assert swapped.stats.accepted != plain.stats.accepted
