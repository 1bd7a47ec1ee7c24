"""Empirical order of convergence of every solver's propagated solution.

Every solver (the adaptive ones too) is run with constant steps ``dt = T / n`` on problems
with closed-form solutions; the log-log slope of the global error against ``dt`` must be
the tableau's order to within ±0.2. The step counts per order keep the errors between
about 1e-3 and 1e-12: in the asymptotic range, yet well above round-off (the 5th-order
pairs have tiny leading error constants, so their slope approaches 5 from above only for
small steps; Dopri8 reaches round-off after a few dozen steps).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import neuralode as no
from generic import ALL_SOLVERS

T_END = 4.0

# Number of steps over [0, T_END] per classical order.
STEPS = {
    1: (64, 128, 256),
    2: (64, 128, 256),
    3: (64, 128, 256),
    4: (45, 91, 181),
    5: (91, 128, 181, 256),
    8: (8, 11, 16, 23, 32),
}


def global_error(problem, solver, n: int) -> float:
    """Max abs error over the step points of an ``n``-step constant-step solve."""
    ts = torch.linspace(0.0, T_END, n + 1, dtype=torch.float64)
    sol = no.solve(
        problem.f,
        problem.y0_tensor(),
        ts,
        solver=solver,
        controller=no.ConstantStepSize(T_END / n),
    )
    assert sol.stats.accepted == n
    return float(np.abs(sol.ys.numpy() - problem.exact(ts.numpy())).max())


def test_step_counts_cover_every_order():
    assert {cls.tableau.order for cls in ALL_SOLVERS} <= STEPS.keys()


@pytest.mark.parametrize("solver_cls", ALL_SOLVERS, ids=lambda c: c.__name__)
def test_global_error_has_the_tableau_order(solver_cls, exact_problem):
    order = solver_cls.tableau.order
    ns = np.array(STEPS[order])
    errors = np.array([global_error(exact_problem, solver_cls(), int(n)) for n in ns])
    assert np.all(errors > 5e-14), f"errors reach round-off: {errors}"
    slope = np.polyfit(np.log(T_END / ns), np.log(errors), 1)[0]
    assert abs(slope - order) <= 0.2, (
        f"{solver_cls.__name__} on {exact_problem.name}: observed order {slope:.3f}, "
        f"tableau order {order}; errors {errors}"
    )


def test_constant_steps_land_on_the_end_time():
    # The last step is not silently dropped or doubled: n steps of T/n land on T exactly.
    ts = torch.tensor([0.0, T_END], dtype=torch.float64)
    for n in (3, 7, 10):
        sol = no.solve(
            lambda t, y: torch.ones_like(y),
            torch.zeros(1, dtype=torch.float64),
            ts,
            solver=no.Euler(),
            controller=no.ConstantStepSize(T_END / n),
        )
        assert sol.stats.accepted == n
        assert float(sol.ys[-1, 0]) == pytest.approx(T_END, rel=1e-14)
