"""The implicit solvers' numerics: orders, stiff test problems, batches, Newton failures.

References: the stiff problems of Hairer & Wanner II (§IV.1, §IV.10) with the reference
values of the Bari "Test Set for IVP Solvers" (Mazzia & Magherini, release 2.4), which
scipy's Radau reproduces at rtol 1e-12 to 13 digits (checked once, see docs/stiff.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import neuralode as no
from neuralode._vector_field import Structure, VectorField
from neuralode.solvers import IMPLICIT_SOLVERS

D = torch.float64
TIGHT = no.Newton(rtol=1e-13, atol=1e-13)
ADAPTIVE = [cls for cls in IMPLICIT_SOLVERS if cls.tableau.adaptive]


def rober(t, y):
    """Robertson's chemical kinetics (ROBER): rate constants 0.04, 1e4, 3e7."""
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    slow = -0.04 * y1 + 1e4 * y2 * y3
    fast = 3e7 * y2 * y2
    return torch.stack([slow, -slow - fast, fast], dim=-1)


# Bari test set, problem ROBER at t = 1e11.
ROBER_1E11 = (0.2083340149701255e-07, 0.8333360770334713e-13, 0.9999999791665050)


def van_der_pol(mu):
    def f(t, y):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)

    return f


# Bari test set, problem VDPOL (μ = 1000, y0 = (2, 0)) at t = 2000.
VDPOL_2000 = (0.1706167732170483e01, -0.8928097010247975e-03)


# --- convergence orders -------------------------------------------------------------------

T_END = 4.0
STEPS = {
    1: (64, 128, 256),
    2: (64, 128, 256),
    3: (32, 64, 128),
    4: (32, 64, 128),
    5: (32, 64, 128),
    6: (16, 24, 32),
}


@pytest.mark.parametrize("solver_cls", IMPLICIT_SOLVERS, ids=lambda c: c.__name__)
def test_global_error_has_the_tableau_order(solver_cls, exact_problem):
    errors, steps = [], STEPS[solver_cls.tableau.order]
    for n in steps:
        ts = torch.linspace(0.0, T_END, n + 1, dtype=D)
        sol = no.solve(
            exact_problem.f, exact_problem.y0_tensor(), ts, solver=solver_cls(newton=TIGHT),
            controller=no.ConstantStepSize(T_END / n),
        )  # fmt: skip
        errors.append(float(np.abs(sol.ys.numpy() - exact_problem.exact(ts.numpy())).max()))
    assert min(errors) > 5e-14, f"errors reach round-off: {errors}"
    slope = np.polyfit(np.log(T_END / np.array(steps)), np.log(errors), 1)[0]
    order = solver_cls.tableau.order
    assert abs(slope - order) <= 0.2, f"observed order {slope:.3f}, tableau {order}: {errors}"


# --- stiff problems -----------------------------------------------------------------------


def test_rober_to_t_40_against_scipy_radau():
    scipy = pytest.importorskip("scipy.integrate")
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=D)
    ts = torch.tensor([0.0, 0.4, 4.0, 40.0], dtype=D)
    ref = scipy.solve_ivp(
        lambda t, y: rober(t, torch.from_numpy(y)).numpy(), (0, 40), [1.0, 0.0, 0.0],
        method="Radau", rtol=1e-12, atol=1e-16, t_eval=ts.numpy(),
    ).y.T  # fmt: skip
    rtol, atol = 1e-6, 1e-10
    # step_ts: the outputs are step ends, not cubic Hermite values inside long steps
    # (whose 3rd-order error is above the tolerance here; see docs/stiff.md).
    sol = no.solve(
        rober, y0, ts, solver=no.Kvaerno5(newton=no.Newton(rtol=rtol, atol=atol)),
        controller=no.PIDController(rtol=rtol, atol=atol, step_ts=ts),
    )  # fmt: skip
    error = np.abs(sol.ys.numpy() - ref) / (atol + rtol * np.abs(ref))
    assert error.max() < 10, error
    # Stiff from the start: an explicit method is held to steps of ~1e-3 (stability),
    # the implicit one is not.
    assert sol.stats.steps < 150


@pytest.mark.parametrize(("rtol", "bound"), [(1e-4, 10), (1e-7, 100)])
def test_rober_to_1e11_against_the_test_set(rtol, bound):
    # Measured relative errors (Kvaerno5, I controller): 5.0e-4 at rtol 1e-4 (y1, y2) and
    # 5.0e-6 at rtol 1e-7; scipy's Radau: 3.9e-5 and 1.1e-8 (see docs/stiff.md).
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=D)
    ts = torch.tensor([0.0, 1e11], dtype=D)
    atol = rtol * 1e-6
    sol = no.solve(
        rober, y0, ts, solver=no.Kvaerno5(newton=no.Newton(rtol=rtol, atol=atol)),
        controller=no.PIDController(rtol=rtol, atol=atol), max_steps=10_000,
    )  # fmt: skip
    ref = np.array(ROBER_1E11)
    error = np.abs(sol.ys[-1].numpy() - ref) / ref
    assert error.max() < bound * rtol, error


@pytest.mark.parametrize(("rtol", "bound"), [(1e-4, 10), (1e-7, 100)])
def test_van_der_pol_1000_against_the_test_set(rtol, bound):
    # Measured: 3.0e-5 relative at rtol 1e-4 and 4.8e-6 at rtol 1e-7 (Radau: 4.8e-5,
    # 5.1e-8), with 3,924 and 10,060 evaluations (Radau: 2,084 and 8,405).
    y0 = torch.tensor([2.0, 0.0], dtype=D)
    ts = torch.tensor([0.0, 2000.0], dtype=D)
    sol = no.solve(
        van_der_pol(1000.0), y0, ts,
        solver=no.Kvaerno5(newton=no.Newton(rtol=rtol, atol=rtol)),
        controller=no.PIDController(rtol=rtol, atol=rtol), max_steps=10_000,
    )  # fmt: skip
    ref = np.array(VDPOL_2000)
    error = np.abs((sol.ys[-1].numpy() - ref) / ref)
    assert error.max() < bound * rtol, error
    assert sol.stats.nfe < 15_000


def test_explicit_solver_needs_far_more_evaluations_on_a_stiff_problem():
    y0 = torch.tensor([2.0, 0.0], dtype=D)
    ts = torch.tensor([0.0, 3.0], dtype=D)
    f = van_der_pol(1000.0)
    implicit = no.solve(f, y0, ts, solver=no.Kvaerno5())
    explicit = no.solve(f, y0, ts, solver=no.Dopri5())
    torch.testing.assert_close(implicit.ys, explicit.ys, rtol=1e-4, atol=1e-6)
    assert explicit.stats.nfe > 20 * implicit.stats.nfe


# --- per-sample mode ----------------------------------------------------------------------


def test_each_sample_equals_its_own_solo_solve():
    # Each sample has its own stiffness, Jacobian, step sizes and Newton iterations.
    mus = torch.tensor([1.0, 30.0, 1000.0], dtype=D)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [2.0, 0.0]], dtype=D)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=D)

    def f(t, y, mu):
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)

    def run(y, mu):
        return no.solve(f, y, ts, solver=no.Kvaerno5(), batch_dims=1, args=mu)

    batch = run(y0, mus)
    for i in range(3):
        alone = run(y0[i : i + 1], mus[i : i + 1])
        torch.testing.assert_close(batch.ys[:, i], alone.ys[:, 0], rtol=1e-12, atol=1e-14)
        assert batch.stats.sample_steps[i] == alone.stats.sample_steps[0]


def test_rober_batch_with_its_own_rate_constants_per_sample():
    # Log-uniform rate constants: every sample within tolerance of its own reference.
    scipy = pytest.importorskip("scipy.integrate")
    g = torch.Generator().manual_seed(0)
    rates = 10 ** (torch.rand(4, 3, generator=g, dtype=D) * 2 - 1) * torch.tensor(
        [0.04, 1e4, 3e7], dtype=D
    )

    def f(t, y, k):
        y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
        slow = -k[:, 0] * y1 + k[:, 1] * y2 * y3
        fast = k[:, 2] * y2 * y2
        return torch.stack([slow, -slow - fast, fast], dim=-1)

    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=D).expand(4, 3)
    # One output, the last step's end (per-sample mode has no step_ts yet; see above).
    ts = torch.tensor([0.0, 10.0], dtype=D)
    rtol, atol = 1e-6, 1e-10
    sol = no.solve(
        f, y0, ts, solver=no.Kvaerno5(newton=no.Newton(rtol=rtol, atol=atol)),
        controller=no.PIDController(rtol=rtol, atol=atol), batch_dims=1, args=rates,
    )  # fmt: skip
    for i in range(4):
        k = rates[i : i + 1]
        ref = scipy.solve_ivp(
            lambda t, y, k=k: f(t, torch.from_numpy(y)[None], k)[0].numpy(), (0, 10),
            [1.0, 0.0, 0.0], method="Radau", rtol=1e-12, atol=1e-16, t_eval=ts.numpy(),
        ).y.T  # fmt: skip
        error = np.abs(sol.ys[:, i].numpy() - ref) / (atol + rtol * np.abs(ref))
        assert error.max() < 10, (i, error)


# --- Newton failures ----------------------------------------------------------------------


def _hidden_stiffness(t, y):
    # The stiffness is invisible to autograd (detach): the Jacobian is 0, so Newton is a
    # plain fixed-point iteration, which diverges unless dt·γ·1000 < 1.
    return -1000.0 * y.detach() + 0.0 * y


def test_newton_failure_rejects_and_shrinks_the_step():
    y0 = torch.tensor([1.0, 2.0], dtype=D)
    ts = torch.tensor([0.0, 0.05], dtype=D)
    sol = no.solve(
        _hidden_stiffness, y0, ts, solver=no.Kvaerno5(), controller=no.PIDController(dt0=0.01)
    )
    assert sol.stats.rejected > 0
    torch.testing.assert_close(sol.ys[-1], y0 * math.exp(-50.0), rtol=1e-4, atol=1e-9)
    # One step at the rejected size, seen directly: NaN, flagged as a Newton failure.
    field = VectorField(_hidden_stiffness, Structure.of(y0), D, y0.device)
    step = no.Kvaerno5().step(field, 0.0, y0, field(0.0, y0), 0.01)
    assert step.newton_failed is not None and bool(step.newton_failed.all())
    assert bool(torch.isnan(step.y1).all()) and bool(torch.isnan(step.y_error).all())


def _nan_jacobian(t, y, good):
    # Finite values (−y), a NaN Jacobian where good = 0: sqrt'(0)·0 = inf·0. Rows with
    # good = 1 are −y exactly. The Jacobian is taken at (t0, y0): no step size helps.
    return -y + 0.0 * torch.sqrt(y.abs() - y.abs() + good.unsqueeze(-1))


def test_persistent_newton_failure_ends_in_a_solver_error():
    y0 = torch.tensor([-1.0, 1.0], dtype=D)
    ts = torch.tensor([0.0, 1.0], dtype=D)
    f = lambda t, y: _nan_jacobian(t, y, torch.tensor(0.0, dtype=D))  # noqa: E731
    with pytest.raises(no.SolverError, match="Newton iteration did not converge") as err:
        no.solve(f, y0, ts, solver=no.Kvaerno3())
    assert err.value.status is no.Status.NEWTON
    assert "40 shrunken retries in a row did not converge" in str(err.value)
    assert err.value.t == 0.0


def test_one_sample_failing_newton_does_not_stop_the_others():
    y0 = torch.tensor([[1.0, 2.0], [-1.0, 1.0], [3.0, 0.5]], dtype=D)
    good = torch.tensor([1.0, 0.0, 1.0], dtype=D)
    ts = torch.tensor([0.0, 1.0], dtype=D)
    sol = no.solve(
        _nan_jacobian, y0, ts, solver=no.Kvaerno3(), batch_dims=1, args=good, throw=False
    )
    assert sol.failed_samples == [1]
    assert sol.sample_status[1] is no.Status.NEWTON  # not "the vector field returned NaN"
    expected = torch.stack([y0[0], y0[2]]) * math.exp(-1.0)
    torch.testing.assert_close(sol.ys[-1, [0, 2]], expected, rtol=1e-5, atol=1e-8)


# --- counting and configuration -----------------------------------------------------------


@pytest.mark.parametrize("batched", [False, True])
def test_one_jacobian_and_one_factorisation_per_step(batched):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.5]], dtype=D)
    y0 = y0 if batched else y0[0]
    f = van_der_pol(100.0)
    field = VectorField(f, Structure.of(y0, batched), D, y0.device)
    t0, dt = (torch.zeros(2, dtype=D), torch.full((2,), 1e-3, dtype=D)) if batched else (0.0, 1e-3)
    f0 = field(t0, y0)
    before = field.nfe
    step = no.Kvaerno5().step(field, t0, y0, f0, dt)
    counts = field.counts
    assert (counts.njev, counts.nlu) == (1, 1)
    # Every Newton iteration is one evaluation and one solve; the Jacobian's one more.
    assert counts.nsolve == field.nfe - before - 1 >= 6
    assert step.f1 is step.k[-1]  # FSAL: f(t1, y1) is the last stage


@pytest.mark.parametrize("batched", [False, True])
def test_solution_stats_count_jacobians_factorisations_and_solves(batched):
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.5]], dtype=D)
    y0 = y0 if batched else y0[0]
    ts = torch.tensor([0.0, 1.0], dtype=D)
    sol = no.solve(van_der_pol(100.0), y0, ts, solver=no.Kvaerno5(), batch_dims=int(batched))
    stats = sol.stats
    # One factorisation per attempted step (batched: per batched step); a Jacobian where
    # the last one is no longer good enough.
    assert 0 < stats.njev <= stats.nlu
    assert stats.nlu >= (stats.steps if not batched else int(stats.sample_steps.max()))
    assert stats.nsolve > 5 * stats.nlu  # several stages, each with Newton iterations
    explicit = no.solve(van_der_pol(1.0), y0, ts, batch_dims=int(batched)).stats
    assert (explicit.njev, explicit.nlu, explicit.nsolve) == (0, 0, 0)


@pytest.mark.parametrize("solver_cls", [no.Kvaerno5, no.RadauIIA5], ids=lambda c: c.__name__)
@pytest.mark.parametrize("batched", [False, True])
def test_jacobian_reused_while_newton_converges_fast(solver_cls, batched):
    """A linear stiff problem has one Jacobian: Newton converges at once and keeps it."""

    def prothero_robinson(t, y):
        t = t.reshape(-1, 1) if t.ndim else t  # per-sample: one time per row
        return -1e4 * (y - torch.cos(t)) - torch.sin(t)

    y0 = torch.ones(2, 1, dtype=D) if batched else torch.ones(1, dtype=D)
    ts = torch.tensor([0.0, 20.0], dtype=D)
    if solver_cls is no.RadauIIA5:
        kwargs = {"controller": no.ConstantStepSize(0.2)}
    else:
        kwargs = {"controller": no.PIDController(rtol=1e-6, atol=1e-8), "batch_dims": int(batched)}
    if solver_cls is no.RadauIIA5 and batched:
        pytest.skip("fixed steps run in joint mode")
    sol = no.solve(prothero_robinson, y0, ts, solver=solver_cls(), **kwargs)
    stats = sol.stats
    steps, rejected = stats.steps, stats.rejected
    if batched:  # the batched steps: the samples take the same ones here
        steps = int(stats.sample_steps.max())
        rejected = steps - int(stats.sample_accepted.max())
    assert stats.nlu == steps >= 30
    # The first step's, and one after each step rejected with an older Jacobian (RADAU5's
    # rule: a rejection may mean the Jacobian is stale).
    assert stats.njev <= 1 + rejected < stats.nlu
    assert float((sol.ys[-1] - torch.cos(ts[-1])).abs().max()) < 1e-6


def test_jacobian_reevaluated_where_the_dynamics_change():
    """Van der Pol's fast transitions slow Newton down: the Jacobian is evaluated again."""
    sol = no.solve(
        van_der_pol(100.0), torch.tensor([2.0, 0.0], dtype=D), torch.tensor([0.0, 100.0], dtype=D),
        solver=no.Kvaerno5(), controller=no.PIDController(rtol=1e-6, atol=1e-8),
    )  # fmt: skip
    stats = sol.stats
    assert 10 < stats.njev < stats.nlu


def test_newton_settings_are_validated():
    with pytest.raises(ValueError, match="Newton rtol must be a positive finite number, got -1"):
        no.Newton(rtol=-1)
    with pytest.raises(ValueError, match="max_iters must be a positive int, got 0"):
        no.Newton(max_iters=0)
    with pytest.raises(TypeError, match="newton must be a neuralode.Newton, got float"):
        no.Kvaerno5(newton=1e-6)  # type: ignore[arg-type]


@pytest.mark.parametrize("solver_cls", ADAPTIVE, ids=lambda c: c.__name__)
def test_float32_state(solver_cls):
    # The Newton tolerance is raised to the dtype's resolution: float32 still converges.
    y0 = torch.tensor([1.0, 0.0, 0.0])
    sol = no.solve(rober, y0, torch.tensor([0.0, 1.0]), solver=solver_cls(),
                   controller=no.PIDController(rtol=1e-4, atol=1e-7))  # fmt: skip
    assert sol.ys.dtype == torch.float32 and sol.success
    torch.testing.assert_close(sol.ys[-1].sum(), torch.tensor(1.0), rtol=1e-5, atol=1e-5)


# --- dense output -------------------------------------------------------------------------


@pytest.mark.parametrize("interpolation", ["hermite", "linear"])
@pytest.mark.parametrize("solver_cls", IMPLICIT_SOLVERS, ids=lambda c: c.__name__)
def test_stage_weights_are_the_stage_polynomials(solver_cls, interpolation):
    # The joint driver evaluates the weights, the per-sample one the polynomials.
    solver = solver_cls(interpolation=interpolation)
    thetas = [0.0, 0.3, 0.5, 1.0]
    polys = solver.stage_polynomials()
    for theta, weights in zip(thetas, solver.stage_weights(thetas), strict=True):
        from_polys = [sum(c * theta**p for p, c in enumerate(row)) for row in polys]
        assert from_polys == pytest.approx(weights, abs=1e-15)
    # At θ = 1 the interpolant is y1: the weights are b (f0 first, weight 0, when the first
    # stage is implicit; f1 last, weight 0, for Hermite).
    at_one = solver.stage_weights([1.0])[0]
    assert sum(at_one) == pytest.approx(1.0, abs=1e-14)


def test_hermite_outputs_inside_steps_are_third_order(exact_problem):
    # Cubic Hermite between step ends: errors at mid-step fall like dt^4 (locally).
    errors, steps = [], (32, 64, 128)
    for n in steps:
        ts_steps = torch.linspace(0.0, T_END, n + 1, dtype=D)
        mids = (ts_steps[:-1] + ts_steps[1:]) / 2
        ts = torch.stack([ts_steps[:-1], mids], 1).reshape(-1)
        sol = no.solve(
            exact_problem.f, exact_problem.y0_tensor(), ts, solver=no.Kvaerno5(newton=TIGHT),
            controller=no.ConstantStepSize(T_END / n),
        )  # fmt: skip
        exact = exact_problem.exact(ts.numpy())
        errors.append(float(np.abs(sol.ys.numpy() - exact)[1::2].max()))
    slope = np.polyfit(np.log(T_END / np.array(steps)), np.log(errors), 1)[0]
    assert 3.6 <= slope <= 4.4, (slope, errors)


def test_per_sample_outputs_inside_steps_match_joint():
    y0 = torch.tensor([2.0, 0.0], dtype=D)
    ts = torch.linspace(0.0, 1.0, 7, dtype=D)
    f = van_der_pol(50.0)
    joint = no.solve(f, y0, ts, solver=no.Kvaerno5())
    rows = no.solve(f, y0[None], ts, solver=no.Kvaerno5(), batch_dims=1)
    torch.testing.assert_close(rows.ys[:, 0], joint.ys, rtol=1e-10, atol=1e-12)


def test_an_explicit_solver_failing_on_a_stiff_problem_names_the_implicit_one():
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=D)
    with pytest.raises(no.SolverError, match=r"implicit solver such as neuralode\.Kvaerno5\(\)"):
        no.solve(rober, y0, torch.tensor([0.0, 1e3], dtype=D), solver=no.Dopri5(), max_steps=500)


def test_compiled_per_sample_step_says_why_it_cannot():
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.0]], dtype=D)
    with pytest.raises(ValueError, match="compile_step=True: Kvaerno5's steps cannot be compiled"):
        no.solve(
            van_der_pol(10.0), y0, torch.tensor([0.0, 1.0], dtype=D), solver=no.Kvaerno5(),
            batch_dims=1, compile_step=True,
        )  # fmt: skip


# --- the rest of the solve interface ------------------------------------------------------


def test_reverse_time_and_tuple_state(exact_problem):
    # Backwards from the exact end state to t = 0, with the state split into a tuple.
    ts = torch.tensor([T_END, 2.0, 0.0], dtype=D)
    y_end = torch.tensor(exact_problem.exact(np.array([T_END]))[0], dtype=D)

    def split_field(t, y):
        out = exact_problem.f(t, torch.cat(y))
        return out[:1], out[1:]

    tol = no.PIDController(rtol=1e-9, atol=1e-9)
    newton = no.Newton(rtol=1e-9, atol=1e-9)
    sol = no.solve(split_field, (y_end[:1], y_end[1:]), ts, solver=no.Kvaerno5(newton=newton),
                   controller=tol)  # fmt: skip
    exact = exact_problem.exact(ts.numpy())
    got = torch.cat(sol.ys, dim=-1).numpy()
    assert np.abs(got - exact).max() < 1e-6


@pytest.mark.parametrize("solver", [no.SDIRK2(), no.RadauIIA5(), no.ImplicitMidpoint()])
def test_dense_interpolant_of_fixed_step_methods(solver):
    # An implicit first stage (f0 put first, weight 0), a stacked step, and one that is not
    # stiffly accurate (f1 evaluated by the loop for Hermite).
    ts = torch.tensor([0.0, 2.0], dtype=D)
    sol = no.solve(lambda t, y: -y, torch.tensor([1.0], dtype=D), ts, solver=solver,
                   controller=no.ConstantStepSize(0.1), dense=True)  # fmt: skip
    for t in (0.05, 1.05, 1.93):
        assert float(sol.dense(torch.tensor(t, dtype=D))[0]) == pytest.approx(
            math.exp(-t), abs=5e-4
        )


# --- Jacobians ----------------------------------------------------------------------------


def test_forward_and_reverse_jacobians_agree_per_row():
    # States above 8 components take the vmapped forward-mode path; below, reverse mode.
    # Both give each row its own Jacobian, checked against autograd's for one row alone.
    from neuralode.solvers._newton import _reverse_jacobian, jacobian

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12))
    net = net.double()

    def call(t, z):
        return net(z) * torch.cos(t).unsqueeze(-1)

    z = torch.randn(3, 12, dtype=D)
    t = torch.tensor([0.1, 0.2, 0.3], dtype=D)
    forward, reverse = jacobian(call, t, z), _reverse_jacobian(call, t, z)
    alone = torch.autograd.functional.jacobian(lambda x: call(t[1:2], x[None])[0], z[1])
    torch.testing.assert_close(forward, reverse)
    torch.testing.assert_close(forward[1], alone)


def test_neural_field_per_sample_and_joint():
    # A 12-dimensional MLP field (forward-mode Jacobians) with a stiff linear part.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 12))
    net = net.double()
    damping = torch.logspace(0, 3, 12, dtype=D)

    def f(t, y):
        return -damping * y + net(y)

    y0 = torch.randn(4, 12, dtype=D)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=D)
    tol = no.PIDController(rtol=1e-8, atol=1e-8)
    solver = no.Kvaerno5(newton=no.Newton(rtol=1e-8, atol=1e-8))
    rows = no.solve(f, y0, ts, solver=solver, controller=tol, batch_dims=1)
    joint = no.solve(f, y0[2], ts, solver=solver, controller=tol)
    reference = no.solve(f, y0[2], ts, solver=no.Dopri5(),
                         controller=no.PIDController(rtol=1e-11, atol=1e-11))  # fmt: skip
    # Global errors of up to ~100x the tolerance, as on the test-set problems.
    torch.testing.assert_close(rows.ys[:, 2], reference.ys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(joint.ys, reference.ys, rtol=1e-5, atol=1e-6)
    assert rows.stats.sample_steps.max() < reference.stats.steps / 5  # stiff: far fewer steps


def test_a_jump_in_f_at_a_step_end_is_not_seen_by_the_stage_past_it():
    # Kvaerno5's node c = 1.23 lies past the step end: before a jump of f it is evaluated
    # at the left limit too, so the steps up to the jump are not rejected for it.
    def f(t, y):
        return -y + 5.0 * (t > 1.0).to(D)

    def exact(t):
        return math.exp(-t) if t <= 1 else 5 + (math.exp(-1.0) - 5) * math.exp(1 - t)

    ts = torch.tensor([0.0, 1.0, 2.0], dtype=D)
    tol = dict(rtol=1e-8, atol=1e-10)
    sol = no.solve(
        f, torch.tensor([1.0], dtype=D), ts, solver=no.Kvaerno5(newton=no.Newton(**tol)),
        controller=no.PIDController(**tol, jump_ts=[1.0]),
    )  # fmt: skip
    assert sol.stats.rejected <= 3 and sol.stats.steps < 40  # measured: 1 of 21
    errors = [abs(float(sol.ys[i, 0]) - exact(float(t))) for i, t in enumerate(ts)]
    assert max(errors) < 1e-7


def test_event_on_a_stiff_problem():
    # The event is found on the implicit steps' dense output, and its time differentiates.
    y0 = torch.tensor([1.0, 0.0, 0.0], dtype=D, requires_grad=True)
    tol = dict(rtol=1e-8, atol=1e-12)
    solver = no.Kvaerno5(newton=no.Newton(**tol))
    event = no.Event(lambda t, y: y[0] - 0.5)
    ts = torch.tensor([0.0, 1e3], dtype=D)
    sol = no.solve(rober, y0, ts, solver=solver, controller=no.PIDController(**tol), event=event)
    t_event = sol.event_ts[0]
    to_event = torch.stack([torch.zeros((), dtype=D), t_event.detach()])
    check = no.solve(
        rober, y0.detach(), to_event, solver=solver, controller=no.PIDController(**tol)
    )
    assert abs(float(check.ys[-1, 0]) - 0.5) < 1e-6
    (grad,) = torch.autograd.grad(t_event, y0)
    assert torch.isfinite(grad).all()


def test_fixed_step_newton_failure_says_reduce_dt():
    y0 = torch.tensor([1.0, 2.0], dtype=D)
    ts = torch.tensor([0.0, 1.0], dtype=D)
    with pytest.raises(no.SolverError, match="Newton iteration did not converge: reduce dt") as err:
        no.solve(
            _hidden_stiffness, y0, ts, solver=no.ImplicitEuler(),
            controller=no.ConstantStepSize(0.1),
        )  # fmt: skip
    assert err.value.status is no.Status.NEWTON
