"""Rosenbrock23, ROS3P, Rodas5P: coefficients, order, stiff accuracy, batching, gradients.

The order conditions are Hairer & Wanner's for Rosenbrock methods (II, §IV.7, Table 7.1),
written with ``β_ij = α_ij + γ_ij`` and ``β'_i = Σ_{j<i} β_ij``; they hold with the exact
Jacobian. Gradients: the step is an explicit function of ``y0``, the parameters and the
linear solves, so Direct and Checkpoint differentiate it exactly when the Jacobian itself
is differentiated (``create_graph``).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

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


def trees(order: int) -> list[tuple]:
    """The rooted trees with ``order`` nodes, each a sorted tuple of its subtrees."""
    if order == 1:
        return [()]

    def sizes(n: int, largest: int):
        if n == 0:
            yield []
        for p in range(min(n, largest), 0, -1):
            for rest in sizes(n - p, p):
                yield [p, *rest]

    found = set()
    for split in sizes(order - 1, order - 1):
        for children in itertools.product(*[trees(k) for k in split]):
            found.add(tuple(sorted(children)))
    return sorted(found)


def density(t: tuple) -> int:
    out = size(t)
    for c in t:
        out *= density(c)
    return out


def size(t: tuple) -> int:
    return 1 + sum(size(c) for c in t)


def contractions(t: tuple) -> list[tuple[tuple, int]]:
    """Every tree made by contracting a subset of the edges below single-child nodes."""
    if len(t) == 1:
        below = contractions(t[0])
        return [((c,), k) for c, k in below] + [(c, k + 1) for c, k in below]
    out = []
    for combo in itertools.product(*[contractions(c) for c in t]):
        out.append((tuple(sorted(c for c, _ in combo)), sum(k for _, k in combo)))
    return out or [((), 0)]


def elementary_weights(t: tuple, alpha, beta, s: int) -> list:
    """``Φ_i(t)``: ``α`` on the edges below a node with several children, ``β`` below one."""
    phi = [1] * s
    edge = alpha if len(t) >= 2 else beta
    for c in t:
        below = elementary_weights(c, alpha, beta, s)
        phi = [p * sum(edge[i][j] * below[j] for j in range(s)) for i, p in enumerate(phi)]
    return phi


def residuals(tab: RosenbrockTableau, b, order: int, exact: bool) -> list:
    """``Σ b_i Φ_i(t) − P_t(γ)`` for every tree of ``order`` nodes.

    Hairer & Wanner II, §IV.7 (Table 7.1 to order 4): with ``β = α + Γ`` (strictly lower),
    ``P_t(γ) = Σ_S (−γ)^|S| / γ(t_S)`` over the sets ``S`` of edges below single-child
    nodes, ``t_S`` the tree with those edges contracted and ``γ(·)`` the tree density.
    """
    s = tab.stages
    num = (lambda x: Fraction(x)) if exact else float  # noqa: E731
    alpha = [[num(x) for x in tab.alpha[i]] + [0] * (s - i) for i in range(s)]
    beta = [
        [alpha[i][j] + num(g) for j, g in enumerate(tab.gammas[i])] + [0] * (s - i)
        for i in range(s)
    ]
    g = num(tab.gamma)
    out = []
    for t in trees(order):
        phi = elementary_weights(t, alpha, beta, s)
        want = sum((-g) ** k / density(c) for c, k in contractions(t))
        out.append(sum(num(bi) * p for bi, p in zip(b, phi, strict=True)) - want)
    return out


def test_the_tree_rule_reproduces_hairer_wanner_table_7_1():
    # P_t(γ) to order 4 as printed, at γ = 1/5.
    g = Fraction(1, 5)
    printed = {
        ((),): Fraction(1, 2) - g,
        (((),),): Fraction(1, 6) - g + g * g,
        ((), ()): Fraction(1, 3),
        ((), ((),)): Fraction(1, 8) - g / 3,
        ((((),),),): Fraction(1, 24) - g / 2 + Fraction(3, 2) * g * g - g**3,
        ((((), ()),)): Fraction(1, 12) - g / 3,
        ((), (), ()): Fraction(1, 4),
    }
    for t, want in printed.items():
        assert sum((-g) ** k / density(c) for c, k in contractions(t)) == want
    assert [len(trees(p)) for p in range(1, 6)] == [1, 1, 2, 4, 9]


@pytest.mark.parametrize("cls", ROSENBROCK_SOLVERS, ids=lambda c: c.__name__)
def test_order_conditions_hold_to_the_claimed_order_and_fail_at_the_next(cls):
    # Exact rational arithmetic where the coefficients are printed decimals (Rodas5P),
    # float64 where they are irrational closed forms (Rosenbrock23's √2).
    tab = cls.tableau
    exact = isinstance(tab.gamma, Fraction)
    tol = 1e-14
    for weights, order in ((tab.b, tab.order), (tab.b_hat, tab.embedded_order)):
        for p in range(1, order + 1):
            worst = max(abs(float(r)) for r in residuals(tab, weights, p, exact))
            assert worst < tol, (weights, p, worst)
        worst = max(abs(float(r)) for r in residuals(tab, weights, order + 1, exact))
        assert worst > 1e-6, (weights, order + 1)


# R(∞) of the methods that are A-stable but not L-stable: ROS3P's is 1 − √3 (Lang &
# Verwer 2001; it is 1 − bᵀB⁻¹1 with B = α + Γ).
R_INFINITY = {"ROS3P": 1 - math.sqrt(3)}


@pytest.mark.parametrize("cls", ROSENBROCK_SOLVERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("z", [-1e2, -1e6, -1e12])
def test_stiff_decay_tends_to_the_stability_functions_limit(cls, z):
    # One step of y' = λy with hλ = z: the stability function R(z) → R(∞) as z → −∞
    # like 1/z; R(∞) = 0 for the L-stable ones (Shampine & Reichelt 1997, §3; Steinebach
    # 2023). Measured R(z)·z: about −12.5 for Rodas5P at every z from −1e4 to −1e12;
    # ROS3P's R(z) − R(∞) about 2.8 at z = −1e2 and −1e6.
    step = cls().step(
        lambda t, y: z * y, 0.0, torch.ones(1, dtype=D), torch.full((1,), z, dtype=D), 1.0
    )
    limit = R_INFINITY.get(cls.__name__, 0.0)
    assert abs(float(step.y1[0]) - limit) < 20 / abs(z)
    assert abs(limit) < 1  # A-stable at infinity


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


def forced_oscillator(t, y):
    # Not stiff, non-autonomous.
    return torch.stack([y[1], -y[0] + 0.1 * torch.sin(t)])


# Steps per unit time where each method's error is in its asymptotic regime on `forced`.
# ROS3P is A-stable, not L-stable (R(∞) ≈ −0.73): on `forced` its λ = −50 mode's error is
# damped slowly, so its slope climbs slowly (measured 2.40, 2.61, 2.77, 2.87 from 40 to
# 640 steps); it is checked on a non-stiff non-autonomous problem (measured 3.02, 3.02).
CONVERGENCE = {"ROS3P": (forced_oscillator, (1.0, 0.0), (10, 20, 40))}


@pytest.mark.parametrize("cls", ROSENBROCK_SOLVERS, ids=lambda c: c.__name__)
def test_convergence_order_on_a_non_autonomous_problem(cls):
    # Measured: Rosenbrock23 2.0, 2.0; Rodas5P 4.74, 4.88 (from 4.42 at 10 → 20 steps:
    # the λ = −50 mode is still resolved pre-asymptotically).
    f, y0, steps = CONVERGENCE.get(cls.__name__, (forced, (0.0, 1.0), (40, 80, 160)))
    errors = [_error(cls(), no.ConstantStepSize(1 / n), f=f, y0=y0)[0] for n in steps]
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(s - cls.tableau.order) < 0.3 for s in slopes), slopes


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


def test_jacobian_and_time_derivative_forward_mode_for_larger_states():
    # n = 12 > 8: forward mode (vmapped J, one jvp for ∂f/∂t) outside autograd, the
    # differentiable reverse products under it; both give row r's own derivatives.
    g = torch.Generator().manual_seed(1)
    y = torch.randn(3, 12, dtype=D, generator=g)
    t = torch.tensor([0.1, 0.2, 0.3], dtype=D)
    M = torch.randn(12, 12, dtype=D, generator=g)

    def call(s, z):
        return torch.tanh(z @ M.T) * torch.cos(s).unsqueeze(-1)

    for differentiable in (False, True):
        jac, dfdt = derivatives(call, t, y, differentiable)
        for r in range(3):
            want = torch.func.jacrev(lambda z, r=r: call(t[r : r + 1], z[None])[0])(y[r])
            torch.testing.assert_close(jac[r], want)
            slope = -torch.tanh(y[r] @ M.T) * torch.sin(t[r])
            torch.testing.assert_close(dfdt[r], slope)


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


@pytest.mark.parametrize("cls", ROSENBROCK_SOLVERS, ids=lambda c: c.__name__)
def test_work_counters_one_jacobian_one_lu_one_solve_per_stage(cls):
    _, sol = _error(cls(), no.PIDController(rtol=1e-5, atol=1e-7))
    stats, stages = sol.stats, cls.tableau.stages
    assert stats.njev == stats.steps and stats.nlu == stats.steps
    assert stats.nsolve == stages * stats.steps
    # The stage evaluations (not the first, which is f0, nor ROS3P's third, at its
    # second's point), one for the Jacobian and, unless the last stage is at y1 (FSAL:
    # Rosenbrock23), f(t1, y1) once more per step; plus the start's.
    per_step = cls.tableau.evaluations + 1 + (0 if cls.tableau.fsal else 1)
    assert per_step * stats.steps <= stats.nfe <= per_step * stats.steps + 2


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


# (solver, problem): (largest relative error, most evaluations) at rtol 1e-4. Measured:
# Rosenbrock23 5.2e-3 / 1346 and 6.0e-3 / 1085 (a 2nd-order method: within 100·rtol);
# Rodas5P 6.1e-5 / 2011 and 2.4e-5 / 1089, within 10·rtol, as accurate as scipy's Radau
# (4.8e-5 / 2084 + 63 Jacobians and 3.9e-5 / 1329 + 60) with fewer evaluations.
BOUNDS = {
    ("Rosenbrock23", "vdpol"): (1e-2, 1500),
    ("Rosenbrock23", "rober"): (1e-2, 1200),
    # Measured 6.9e-2 / 1422 and 1.8e-3 / 1134: not L-stable, ROS3P rejects 103 of 508
    # steps on VDPOL's fast transitions and is far less accurate there.
    ("ROS3P", "vdpol"): (1e-1, 1500),
    ("ROS3P", "rober"): (1e-2, 1200),
    ("Rodas5P", "vdpol"): (1e-3, 2084),
    ("Rodas5P", "rober"): (1e-3, 1329),
}


@pytest.mark.parametrize("cls", ROSENBROCK_SOLVERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    ("f", "problem", "atol"), [(vdpol, VDPOL, 1e-4), (rober, ROBER, 1e-10)], ids=["vdpol", "rober"]
)
def test_stiff_test_set_against_the_reference(cls, f, problem, atol):
    # Bari "Test Set for IVP Solvers" reference values (VDPOL to t = 2000, ROBER to 1e11).
    error_bound, nfe_bound = BOUNDS[cls.__name__, f.__name__]
    y0, t_end, ref = problem
    with torch.no_grad():
        sol = no.solve(
            f, torch.tensor(y0, dtype=D), torch.tensor([0.0, t_end], dtype=D),
            solver=cls(), controller=no.PIDController(rtol=1e-4, atol=atol),
            max_steps=10_000,
        )  # fmt: skip
    ref = torch.tensor(ref, dtype=D)
    assert float(((sol.ys[-1] - ref) / ref).abs().max()) < error_bound
    assert sol.stats.nfe < nfe_bound


@pytest.mark.parametrize("cls", ROSENBROCK_SOLVERS, ids=lambda c: c.__name__)
def test_per_sample_batch_invariance(cls):
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
    kw = dict(solver=cls(), controller=no.PIDController(rtol=1e-5, atol=1e-10), batch_dims=1)
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


@pytest.mark.parametrize("cls", ROSENBROCK_SOLVERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", ["direct", "checkpoint"])
@pytest.mark.parametrize("batch_dims", [0, 1], ids=["joint", "per_sample"])
def test_gradcheck_exact(cls, method, batch_dims):
    # Fixed steps (joint) and adaptive ones (per-sample): the discrete solution's gradient,
    # including the Jacobian's own dependence on y0 and the parameters.
    if batch_dims == 0:
        controller, atol, rtol = no.ConstantStepSize(0.05), 1e-7, 1e-5
    else:
        controller, atol, rtol = no.PIDController(rtol=1e-7, atol=1e-7), 1e-5, 1e-4
    fn = solve_fn(cls(), controller, EACH_ADJOINT[method], batch_dims)
    assert gradcheck(fn, inputs(batch=3), eps=1e-6, atol=atol, rtol=rtol, fast_mode=True)


# ROS3P, a 3rd-order method, takes many steps at rtol 1e-8 (measured 22 s, against 8 s).
@pytest.mark.parametrize(
    "cls",
    [
        pytest.param(c, id=c.__name__, marks=[pytest.mark.slow] if c is no.ROS3P else [])
        for c in ROSENBROCK_SOLVERS
    ],
)
def test_backsolve_joint_same_solver_and_per_sample_with_dopri5(cls):
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
            solve_fn(cls(), tol, adjoint, batch_dims, MILD)(y0, W, b).sum(), (y0, W, b)
        )
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
