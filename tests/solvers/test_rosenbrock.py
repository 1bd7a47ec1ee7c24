"""Rosenbrock23: coefficients, order, stiff accuracy, batching and gradients.

The order conditions are Hairer & Wanner's for Rosenbrock methods (II, §IV.7, Table 7.1),
written with ``β_ij = α_ij + γ_ij`` and ``β'_i = Σ_{j<i} β_ij``; they hold with the exact
Jacobian. Gradients: the step is an explicit function of ``y0``, the parameters and the
linear solves, so Direct and Checkpoint differentiate it exactly when the Jacobian itself
is differentiated (``create_graph``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch.autograd import gradcheck

import neuralode as no
from generic import EACH_ADJOINT
from neuralode.solvers import ROSENBROCK_SOLVERS, RosenbrockTableau
from neuralode.solvers import _rosenbrock as rosenbrock_module
from neuralode.solvers._rosenbrock import derivatives

D = torch.float64


def conditions(tab: RosenbrockTableau, b: np.ndarray) -> list[list[float]]:
    """Residuals of the order conditions, one list per order 1..4."""
    s, g = tab.stages, float(tab.gamma)
    alpha, gam = np.zeros((s, s)), np.zeros((s, s))
    for i in range(s):
        alpha[i, :i], gam[i, :i] = tab.alpha_float[i], tab.gammas_float[i]
    beta = alpha + gam
    a, bp = alpha.sum(1), beta.sum(1)
    return [
        [b.sum() - 1],
        [b @ bp - (0.5 - g)],
        [b @ a**2 - 1 / 3, b @ beta @ bp - (1 / 6 - g + g * g)],
        [
            b @ a**3 - 1 / 4,
            (b * a) @ alpha @ bp - (1 / 8 - g / 3),
            b @ beta @ a**2 - (1 / 12 - g / 3),
            b @ beta @ beta @ bp - (1 / 24 - g / 2 + 1.5 * g * g - g**3),
        ],
    ]


@pytest.mark.parametrize("cls", ROSENBROCK_SOLVERS, ids=lambda c: c.__name__)
def test_order_conditions_hold_to_the_claimed_order_and_fail_at_the_next(cls):
    tab = cls.tableau
    for weights, order in ((tab.b, tab.order), (tab.b_hat, tab.embedded_order)):
        residuals = conditions(tab, np.array(weights, dtype=float))
        for p in range(order):
            assert np.max(np.abs(residuals[p])) < 1e-14, (weights, p + 1)
        assert np.max(np.abs(residuals[order])) > 1e-3, (weights, order + 1)


@pytest.mark.parametrize("z", [-1e2, -1e6, -1e12])
def test_l_stable_decay_is_damped_to_zero(z):
    # One step of y' = λy with hλ = z: the stability function R(z) → 0 as z → −∞
    # (L-stability, Shampine & Reichelt 1997, §3), and |R| < 1 along the way.
    step = no.Rosenbrock23().step(
        lambda t, y: z * y, 0.0, torch.ones(1, dtype=D), torch.full((1,), z, dtype=D), 1.0
    )
    ratio = abs(float(step.y1[0]))
    assert ratio < 1 and ratio < 10 / abs(z)


def test_tableau_is_validated():
    with pytest.raises(ValueError, match="b must have 2 entries summing to 1"):
        RosenbrockTableau("bad", 0.5, ((), (1.0,)), ((), (0.0,)), (0.5, 0.4), 1, (0, 1), 1)
    with pytest.raises(ValueError, match="alpha must have 2 rows"):
        RosenbrockTableau("bad", 0.5, ((),), ((), (0.0,)), (0.5, 0.5), 1, (0, 1), 1)


def test_bad_interpolation_names_the_argument():
    with pytest.raises(ValueError, match="interpolation must be one of .* got 'cubic'"):
        no.Rosenbrock23(interpolation="cubic")


def forced(t, y):
    # Stiff (λ = −50) and non-autonomous: the ∂f/∂t term matters.
    return torch.stack([-50 * (y[0] - torch.cos(t)), -y[1] * y[0]])


def _error(solver, controller, f=forced, y0=(0.0, 1.0), t_end=1.0):
    y0_t = torch.tensor(y0, dtype=D)
    ts = torch.tensor([0.0, t_end], dtype=D)
    tight = no.PIDController(rtol=1e-12, atol=1e-12)
    ref = no.solve(f, y0_t, ts, solver=no.Dopri5(), controller=tight).ys[-1]
    sol = no.solve(f, y0_t, ts, solver=solver, controller=controller)
    return float((sol.ys[-1] - ref).abs().max()), sol


def test_convergence_order_on_a_stiff_non_autonomous_problem():
    errors = [_error(no.Rosenbrock23(), no.ConstantStepSize(1 / n))[0] for n in (40, 80, 160)]
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(s - 2) < 0.2 for s in slopes), slopes


@pytest.mark.parametrize("rows", [1, 3])
def test_jacobian_and_time_derivative_per_row(rows):
    # Row r's own J and ∂f/∂t (rows are independent samples in per-sample mode).
    y = torch.randn(rows, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.1, 0.5, rows, dtype=D)

    def call(s, z):
        return torch.stack([-50 * (z[:, 0] - torch.cos(s)), -z[:, 1] * z[:, 0]], dim=-1)

    for differentiable in (False, True):
        jac, dfdt = derivatives(call, t, y, differentiable)
        for r in range(rows):
            want = torch.func.jacrev(lambda z, r=r: call(t[r : r + 1], z[None])[0])(y[r])
            torch.testing.assert_close(jac[r], want)
            torch.testing.assert_close(dfdt[r], torch.stack([-50 * torch.sin(t[r]), t[r] * 0]))


def test_time_derivative_matters():
    # Without the h²γ_i ∂f/∂t term the method drops to first order on this problem.
    no_t = lambda call, t, y, d: (derivatives(call, t, y, d)[0], torch.zeros_like(y))  # noqa: E731
    errors = []
    for patched in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            if patched:
                mp.setattr(rosenbrock_module, "derivatives", no_t)
            errors.append(_error(no.Rosenbrock23(), no.ConstantStepSize(0.02))[0])
    assert errors[1] > 10 * errors[0], errors


def test_work_counters_one_jacobian_one_lu_three_solves_per_step():
    _, sol = _error(no.Rosenbrock23(), no.PIDController(rtol=1e-5, atol=1e-7))
    stats = sol.stats
    assert stats.njev == stats.steps and stats.nlu == stats.steps
    assert stats.nsolve == 3 * stats.steps
    # Two evaluations per step (FSAL) and one for the Jacobian, plus the start's.
    assert 3 * stats.steps <= stats.nfe <= 3 * stats.steps + 2


MU = 1000.0
VDPOL = ((2.0, 0.0), 2000.0, (0.1706167732170483e01, -0.8928097010247975e-03))
ROBER = (
    (1.0, 0.0, 0.0),
    1e11,
    (0.2083340149701255e-07, 0.8333360770334713e-13, 0.9999999791665050),
)


def vdpol(t, y):
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def rober(t, y):
    slow = -0.04 * y[0] + 1e4 * y[1] * y[2]
    fast = 3e7 * y[1] ** 2
    return torch.stack([slow, -slow - fast, fast])


@pytest.mark.parametrize(
    ("f", "problem", "atol"), [(vdpol, VDPOL, 1e-4), (rober, ROBER, 1e-10)], ids=["vdpol", "rober"]
)
def test_stiff_test_set_against_the_reference(f, problem, atol):
    # Bari "Test Set for IVP Solvers" reference values, rtol 1e-4. A 2nd-order method:
    # its error at the end is within 100·rtol (measured 5.2e-3 and 6.0e-3; Kvaerno5 3.0e-5
    # and 5.0e-4, scipy's Radau 4.8e-5 and 3.9e-5), with fewer evaluations than Kvaerno5.
    y0, t_end, ref = problem
    with torch.no_grad():
        sol = no.solve(
            f, torch.tensor(y0, dtype=D), torch.tensor([0.0, t_end], dtype=D),
            solver=no.Rosenbrock23(), controller=no.PIDController(rtol=1e-4, atol=atol),
            max_steps=10_000,
        )  # fmt: skip
    ref = torch.tensor(ref, dtype=D)
    assert float(((sol.ys[-1] - ref) / ref).abs().max()) < 1e-2
    assert sol.stats.nfe < 1500


def test_per_sample_batch_invariance():
    g = torch.Generator().manual_seed(0)
    rates = torch.tensor([0.04, 1e4, 3e7], dtype=D) * 10 ** (
        torch.rand(4, 3, generator=g, dtype=D) - 0.5
    )

    def f(t, y, k):
        slow = -k[:, 0] * y[:, 0] + k[:, 1] * y[:, 1] * y[:, 2]
        fast = k[:, 2] * y[:, 1] ** 2
        return torch.stack([slow, -slow - fast, fast], dim=-1)

    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=D).expand(4, 3)
    ts = torch.tensor([0.0, 0.1, 10.0], dtype=D)
    kw = dict(
        solver=no.Rosenbrock23(), controller=no.PIDController(rtol=1e-5, atol=1e-10), batch_dims=1
    )
    many = no.solve(f, y0, ts, args=rates, **kw)
    for i in range(4):
        one = no.solve(f, y0[i : i + 1], ts, args=rates[i : i + 1], **kw)
        torch.testing.assert_close(many.ys[:, i], one.ys[:, 0], rtol=0, atol=0)
        k = rates[i].tolist()

        def fun(t, y, k=k):
            slow, fast = -k[0] * y[0] + k[1] * y[1] * y[2], k[2] * y[1] ** 2
            return [slow, -slow - fast, fast]

        ref = solve_ivp(fun, (0, 10), [1.0, 0.0, 0.0], method="Radau", rtol=1e-12, atol=1e-16)
        np.testing.assert_allclose(many.ys[-1, i].numpy(), ref.y[:, -1], rtol=1e-3, atol=1e-9)


STIFF = torch.tensor([1.0, 40.0], dtype=D)
MILD = torch.tensor([1.0, 4.0], dtype=D)
TS = (0.0, 0.3, 0.7, 1.0)


def field(t, y, W, b, damping):
    return -damping * y + torch.tanh(y @ W.T + b) + 0.1 * torch.sin(t).unsqueeze(-1) * y


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(batch, 2, dtype=D, generator=g)
    W = 0.5 * torch.randn(2, 2, dtype=D, generator=g)
    b = 0.2 * torch.randn(2, dtype=D, generator=g)
    return tuple(x.requires_grad_(True) for x in (y0, W, b))


def solve_fn(solver, controller, adjoint, batch_dims=0, damping=STIFF):
    ts = torch.tensor(TS, dtype=D)

    def fn(y0, W, b):
        return no.solve(
            lambda t, y: field(t, y, W, b, damping), y0, ts, solver=solver,
            controller=controller, adjoint=adjoint, params=[W, b], batch_dims=batch_dims,
        ).ys  # fmt: skip

    return fn


@pytest.mark.parametrize("method", ["direct", "checkpoint"])
@pytest.mark.parametrize("batch_dims", [0, 1], ids=["joint", "per_sample"])
def test_gradcheck_exact(method, batch_dims):
    # Fixed steps (joint) and adaptive ones (per-sample): the discrete solution's gradient,
    # including the Jacobian's own dependence on y0 and the parameters.
    if batch_dims == 0:
        controller, atol, rtol = no.ConstantStepSize(0.05), 1e-7, 1e-5
    else:
        controller, atol, rtol = no.PIDController(rtol=1e-7, atol=1e-7), 1e-5, 1e-4
    fn = solve_fn(no.Rosenbrock23(), controller, EACH_ADJOINT[method], batch_dims)
    assert gradcheck(fn, inputs(batch=3), eps=1e-6, atol=atol, rtol=rtol, fast_mode=True)


def test_backsolve_joint_same_solver_and_per_sample_with_dopri5():
    y0, W, b = inputs(batch=3)
    tol = no.PIDController(rtol=1e-8, atol=1e-8)
    want = torch.autograd.grad(
        solve_fn(no.Dopri5(), tol, no.DirectAdjoint(), 0, MILD)(y0, W, b).sum(), (y0, W, b)
    )
    for batch_dims, adjoint in (
        (0, no.BacksolveAdjoint()),
        (1, no.BacksolveAdjoint(solver=no.Dopri5())),
    ):
        got = torch.autograd.grad(
            solve_fn(no.Rosenbrock23(), tol, adjoint, batch_dims, MILD)(y0, W, b).sum(), (y0, W, b)
        )
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
