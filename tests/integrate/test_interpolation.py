"""Dense output: exact at step ends, of the claimed order inside a step, and passive.

"Passive" means output times only read the interpolant: they never change the steps taken.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import neuralode as no
from generic import ALL_SOLVERS

F64 = torch.float64
ADAPTIVE = [cls for cls in ALL_SOLVERS if cls.tableau.b_hat is not None]
FIXED = [cls for cls in ALL_SOLVERS if cls.tableau.b_hat is None]
THETA = 0.37


def _ids(cls):
    return cls.__name__


def expected_local_order(solver) -> int:
    """Exponent of ``h`` in the error of the interpolant at a fixed ``θ`` in one step."""
    tableau = type(solver).tableau
    if solver.interpolation == "linear":
        return 2
    if solver.interpolation == "auto" and tableau.b_dense is not None:
        return tableau.dense_order + 1
    # Cubic Hermite is third order, but it interpolates y1, whose error is O(h^(p+1)).
    return min(tableau.order, 3) + 1


def one_step_error(problem, solver, h: float) -> float:
    """Error at ``θ h`` inside a single step of size ``h`` from ``(0, y0)``."""
    ts = torch.tensor([0.0, THETA * h, h], dtype=F64)
    sol = no.solve(
        problem.f,
        problem.y0_tensor(),
        ts,
        solver=solver,
        controller=no.ConstantStepSize(h),
        dense=True,
    )
    assert sol.stats.accepted == 1
    # The dense interpolant and the output times share one interpolant.
    torch.testing.assert_close(sol.dense(ts[1]), sol.ys[1], rtol=1e-15, atol=1e-16)
    return float(np.abs(sol.ys[1].numpy() - problem.exact(ts.numpy())[1]).max())


SOLVER_VARIANTS = [
    *(pytest.param(cls(), id=cls.__name__) for cls in ALL_SOLVERS),
    *(
        pytest.param(cls(interpolation="hermite"), id=f"{cls.__name__}-hermite")
        for cls in (no.Dopri5, no.Tsit5, no.Dopri8)
    ),
    *(
        pytest.param(cls(interpolation="linear"), id=f"{cls.__name__}-linear")
        for cls in (no.Euler, no.RK4, no.Bosh3, no.Dopri5, no.Dopri8)
    ),
]


@pytest.mark.parametrize("solver", SOLVER_VARIANTS)
def test_interpolant_has_the_claimed_local_order(solver, exact_problem):
    order = expected_local_order(solver)
    # Dopri8's sextic reaches round-off quickly: it gets larger steps.
    hs = np.array([0.4, 0.2, 0.1, 0.05] if order >= 6 else [0.2, 0.1, 0.05, 0.025])
    errors = np.array([one_step_error(exact_problem, solver, float(h)) for h in hs])
    assert np.all(errors > 1e-14), f"errors reach round-off: {errors}"
    slope = np.polyfit(np.log(hs), np.log(errors), 1)[0]
    assert abs(slope - order) <= 0.3, (
        f"{solver} on {exact_problem.name}: local error ~ h^{slope:.2f}, expected h^{order}"
    )


def test_claimed_dense_orders():
    # The orders the test above relies on, as the tableaus declare them.
    dense = {cls.__name__: cls.tableau.dense_order for cls in ALL_SOLVERS}
    assert dense["Dopri5"] == dense["Tsit5"] == 4
    assert dense["Dopri8"] == 5
    assert all(dense[cls.__name__] is None for cls in FIXED)


# ---------------------------------------------------------------------------------------
# Exact at step ends
# ---------------------------------------------------------------------------------------

GRID = (0.0, 0.13, 0.4, 0.55, 1.0, 1.3, 1.85, 2.0)


def _left_of(t: float) -> float:
    return math.nextafter(t, -math.inf)


@pytest.mark.parametrize("solver_cls", ALL_SOLVERS, ids=_ids)
def test_dense_output_is_exact_at_step_ends(solver_cls, exact_problem):
    grid = torch.tensor(GRID, dtype=F64)

    def solve(ts, dense=False):
        return no.solve(
            exact_problem.f,
            exact_problem.y0_tensor(),
            ts,
            solver=solver_cls(),
            controller=no.StepTo(GRID),
            dense=dense,
        )

    at_grid = solve(grid)  # outputs at step ends: the steps' own y1
    ends_only = solve(grid[[0, -1]], dense=True)
    assert at_grid.stats.accepted == ends_only.stats.accepted == len(GRID) - 1
    torch.testing.assert_close(ends_only.dense(grid), at_grid.ys, rtol=1e-14, atol=1e-15)
    # Continuous across step ends: the left limit of each interpolant is its y1 (to the
    # rounding of the weights at θ = 1, ~1e-14 for the large sextic coefficients of Dopri8).
    left = torch.tensor([_left_of(t) for t in GRID[1:]], dtype=F64)
    torch.testing.assert_close(ends_only.dense(left), at_grid.ys[1:], rtol=1e-13, atol=1e-13)


def _van_der_pol(t, y):
    return torch.stack([y[1], 2.0 * (1 - y[0] ** 2) * y[1] - y[0]])


def _controller(solver_cls, **kwargs):
    """Constant steps for fixed-step solvers, else a tolerance suited to the order."""
    if solver_cls.tableau.b_hat is None:
        return no.ConstantStepSize(0.05)
    tol = {2: 1e-3, 3: 1e-5}.get(solver_cls.tableau.order, 1e-7)
    return no.PIDController(rtol=tol, atol=tol, **kwargs)


@pytest.mark.parametrize("solver_cls", ADAPTIVE, ids=_ids)
def test_adaptive_dense_output_is_exact_at_forced_step_ends(solver_cls):
    # step_ts forces step ends at known times among the adaptive steps.
    stops = (0.7, 1.9, 3.3)
    f = _van_der_pol
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    controller = _controller(solver_cls, step_ts=stops)
    at_stops = no.solve(
        f,
        y0,
        torch.tensor((0.0, *stops, 4.0), dtype=F64),
        solver=solver_cls(),
        controller=controller,
    )
    dense = no.solve(
        f,
        y0,
        torch.tensor([0.0, 4.0], dtype=F64),
        solver=solver_cls(),
        controller=controller,
        dense=True,
    ).dense
    t_stops = torch.tensor(stops, dtype=F64)
    torch.testing.assert_close(dense(t_stops), at_stops.ys[1:-1], rtol=1e-14, atol=1e-15)
    left = torch.tensor([_left_of(t) for t in stops], dtype=F64)
    torch.testing.assert_close(dense(left), at_stops.ys[1:-1], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(
        dense(torch.tensor(4.0, dtype=F64)), at_stops.ys[-1], rtol=1e-14, atol=1e-15
    )
    torch.testing.assert_close(dense(torch.tensor(0.0, dtype=F64)), y0, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------
# Output times do not change the steps
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver_cls", ALL_SOLVERS, ids=_ids)
def test_output_times_inside_steps_do_not_change_the_steps(solver_cls):
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    coarse = np.linspace(0.0, 3.0, 7)
    extra = np.random.default_rng(0).uniform(0.0, 3.0, 150)
    fine = np.union1d(coarse, extra)
    idx = np.searchsorted(fine, coarse)

    def solve(ts):
        return no.solve(
            _van_der_pol,
            y0,
            torch.tensor(ts, dtype=F64),
            solver=solver_cls(),
            controller=_controller(solver_cls),
        )

    a, b = solve(coarse), solve(fine)
    assert (b.stats.accepted, b.stats.rejected) == (a.stats.accepted, a.stats.rejected)
    assert b.stats.accepted < len(fine)  # most of the extra times lie inside steps
    torch.testing.assert_close(b.ys[idx], a.ys, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("solver_cls", ALL_SOLVERS, ids=_ids)
def test_dense_output_agrees_with_output_times(solver_cls):
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    ts = torch.linspace(0.0, 3.0, 41, dtype=F64)
    controller = _controller(solver_cls)
    outs = no.solve(_van_der_pol, y0, ts, solver=solver_cls(), controller=controller)
    dense = no.solve(
        _van_der_pol, y0, ts[[0, -1]], solver=solver_cls(), controller=controller, dense=True
    ).dense
    torch.testing.assert_close(dense(ts), outs.ys, rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------------------------------
# Reverse time
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver_cls", ALL_SOLVERS, ids=_ids)
def test_reverse_time_interpolation_mirrors_forward_time(solver_cls):
    # y(t) backwards from t=0 equals z(s) = y(-s) forwards, z' = -f(-s, z): the same
    # arithmetic up to signs, so outputs inside steps and the dense output must agree.
    def f(t, y):
        return torch.stack([y[1] * torch.cos(t), -y[0] + torch.sin(2 * t)])

    def g(s, z):
        return -f(-s, z)

    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    s = torch.linspace(0.0, 2.5, 23, dtype=F64)
    controller = _controller(solver_cls)
    fwd = no.solve(g, y0, s, solver=solver_cls(), controller=controller, dense=True)
    rev = no.solve(f, y0, -s, solver=solver_cls(), controller=controller, dense=True)
    assert rev.stats.accepted == fwd.stats.accepted
    torch.testing.assert_close(rev.ys, fwd.ys, rtol=1e-13, atol=1e-14)
    probe = torch.tensor([0.011, 0.77, 1.234, 2.4999], dtype=F64)
    torch.testing.assert_close(rev.dense(-probe), fwd.dense(probe), rtol=1e-13, atol=1e-14)


def test_dense_output_keeps_a_multi_dimensional_state_shape():
    y0 = torch.arange(6, dtype=torch.float64).reshape(3, 2) + 1
    sol = no.solve(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), dense=True)
    many = sol.dense(torch.tensor([0.25, 0.5], dtype=torch.float64))
    assert many.shape == (2, 3, 2)
    assert sol.dense(0.5).shape == (3, 2)
    torch.testing.assert_close(many[1], y0 * math.exp(-0.5), rtol=1e-5, atol=1e-6)
