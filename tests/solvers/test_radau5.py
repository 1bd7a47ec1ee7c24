"""Radau5: RADAU5's error estimate, its Newton settings and starting values, test-set accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_implicit_numerics import ROBER_1E11, VDPOL_2000, rober, van_der_pol

import neuralode as no
from neuralode.solvers import FIRK

D = torch.float64
A = torch.tensor([[-1.0, 2.0], [-2.0, -1.0]], dtype=D)


def forced(t, y):
    return y @ A.T + torch.sin(torch.as_tensor(t, dtype=D))


def test_error_estimate_is_fourth_order_and_bounds_the_error():
    """The estimate (of the embedded 3rd-order solution) falls as h⁴; y1's error as h⁶."""
    solver = no.Radau5(newton=no.Newton(rtol=1e-13, atol=1e-15, max_iters=50))
    y0 = torch.tensor([1.0, 0.5], dtype=D)
    f0 = forced(0.0, y0)
    estimates, errors = [], []
    for h in (0.2, 0.1, 0.05):
        step = solver.step(forced, 0.0, y0, f0, h)
        ref = no.solve(
            forced, y0, torch.tensor([0.0, h], dtype=D), solver=no.Dopri8(),
            controller=no.PIDController(rtol=1e-13, atol=1e-15),
        ).ys[-1]  # fmt: skip
        estimates.append(float(step.y_error.abs().max()))
        errors.append(float((step.y1 - ref).abs().max()))
    orders = [math.log2(estimates[i] / estimates[i + 1]) for i in range(2)]
    assert all(3.5 < p < 4.3 for p in orders), (estimates, orders)
    assert all(e < 0.05 * est for e, est in zip(errors, estimates, strict=True))


def test_newton_kappa_follows_scipys_radau_rule():
    assert no.Radau5(newton=no.Newton(rtol=1e-4))._newton(D).kappa == pytest.approx(0.01)
    assert no.Radau5(newton=no.Newton(rtol=1e-8))._newton(D).kappa == pytest.approx(1e-4)
    # Above rounding: 10 eps / rtol.
    assert no.Radau5(newton=no.Newton(rtol=1e-13))._newton(D).kappa == pytest.approx(
        10 * torch.finfo(D).eps / 1e-13
    )
    assert no.Radau5(newton=no.Newton(kappa=0.5))._newton(D).kappa == 0.5
    assert no.Kvaerno5().newton.kappa is None  # the DIRK methods' default: 1e-2


class EulerStart(no.Radau5):
    """Radau5 whose Newton starts from y0 + c dt f0, as the fixed-step FIRK methods do."""

    def _guess(self, y, k0, h, state):
        return FIRK._guess(self, y, k0, h, state)


def test_newton_starts_from_the_last_steps_collocation_polynomial():
    f = van_der_pol(10.0)
    y0 = torch.tensor([2.0, 0.0], dtype=D)
    ts = torch.tensor([0.0, 20.0], dtype=D)
    tol = 1e-8
    runs = []
    for cls in (no.Radau5, EulerStart):
        solver = cls(newton=no.Newton(rtol=tol, atol=tol))
        runs.append(
            no.solve(f, y0, ts, solver=solver, controller=no.PIDController(rtol=tol, atol=tol))
        )
    extrapolated, euler = runs
    # Fewer Newton iterations (each one linear solve), the same solution to the tolerance.
    # (measured 0.79×; 0.77–0.79× on VDPOL μ = 1000 and ROBER)
    assert extrapolated.stats.nsolve < 0.85 * euler.stats.nsolve
    torch.testing.assert_close(extrapolated.ys, euler.ys, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rtol", [1e-4, 1e-7])
def test_rober_to_1e11_within_the_tolerance_scale(rtol):
    # Measured relative errors 1.5e-4 and 2.6e-9 (scipy's Radau: 3.9e-5 and 1.1e-8) with
    # 1,117 and 5,086 evaluations (Radau: 1,329 and 6,368).
    atol = rtol * 1e-6
    sol = no.solve(
        rober, torch.tensor([1.0, 0.0, 0.0], dtype=D), torch.tensor([0.0, 1e11], dtype=D),
        solver=no.Radau5(newton=no.Newton(rtol=rtol, atol=atol)),
        controller=no.PIDController(rtol=rtol, atol=atol), max_steps=10_000,
    )  # fmt: skip
    ref = np.array(ROBER_1E11)
    assert np.abs((sol.ys[-1].numpy() - ref) / ref).max() < 10 * rtol
    assert sol.stats.nfe < {1e-4: 1329, 1e-7: 6368}[rtol]


def test_van_der_pol_1000_at_a_tight_tolerance():
    # Measured: 2.5e-8 relative with 8,369 evaluations (scipy's Radau: 5.1e-8 with 8,405).
    rtol = 1e-7
    sol = no.solve(
        van_der_pol(1000.0), torch.tensor([2.0, 0.0], dtype=D),
        torch.tensor([0.0, 2000.0], dtype=D),
        solver=no.Radau5(newton=no.Newton(rtol=rtol, atol=rtol)),
        controller=no.PIDController(rtol=rtol, atol=rtol), max_steps=10_000,
    )  # fmt: skip
    ref = np.array(VDPOL_2000)
    assert np.abs((sol.ys[-1].numpy() - ref) / ref).max() < 10 * rtol
    assert sol.stats.nfe < 9_000
