"""Gradients through the implicit solvers, for every gradient method, in both modes.

DirectAdjoint differentiates each stage solve by the implicit-function theorem (one
transposed linear solve at the converged stage, then a VJP of ``f``); CheckpointAdjoint
replays the same implicit steps; BacksolveAdjoint solves the adjoint ODE backwards with the
implicit method itself. gradcheck in float64 (w.r.t. ``y0`` and the field's parameters),
and agreement with DirectAdjoint through Dopri5 at a tight tolerance.

Newton runs to 1e-12 here: the finite differences of gradcheck (eps = 1e-6) see the
iteration's residual divided by eps, so the stage solves must be far tighter than the
gradient tolerance.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import neuralode as no
from generic import EACH_ADJOINT

D = torch.float64
TIGHT_NEWTON = no.Newton(rtol=1e-12, atol=1e-12)
SOLVERS = {
    "kvaerno3": no.Kvaerno3(newton=TIGHT_NEWTON),
    "kvaerno5": no.Kvaerno5(newton=TIGHT_NEWTON),
    "radau5": no.Radau5(newton=TIGHT_NEWTON),
}
# The fixed-step ones with Direct only: an implicit first stage (SDIRK2), a method that is
# not stiffly accurate (implicit midpoint, Gauss) and the stacked fully implicit step.
FIXED = {
    "implicit_midpoint": no.ImplicitMidpoint(newton=TIGHT_NEWTON),
    "sdirk2": no.SDIRK2(newton=TIGHT_NEWTON),
    "trbdf2": no.TRBDF2(newton=TIGHT_NEWTON),
    "radau_iia5": no.RadauIIA5(newton=TIGHT_NEWTON),
    "gauss_legendre4": no.GaussLegendre4(newton=TIGHT_NEWTON),
}
TS = (0.0, 0.3, 0.7, 1.0)
# Per-sample backsolve refuses an implicit backward solve (tested below).
PER_SAMPLE = [m for m in EACH_ADJOINT if m != "backsolve"]
# Moderately stiff (eigenvalues near −1 and −40) and nonlinear through the parameters.
STIFF = torch.tensor([1.0, 40.0], dtype=D)
# BacksolveAdjoint reconstructs y by solving backwards in time, where a stiff decay is a
# stiff blow-up: no method can follow it (the Newton matrix I − hγJ turns near-singular
# and the solve fails). Its tests use a mildly damped field; docs/stiff.md says to use
# CheckpointAdjoint for stiff problems.
MILD = torch.tensor([1.0, 4.0], dtype=D)


def damping(method: str) -> torch.Tensor:
    return MILD if method.startswith("backsolve") else STIFF


def field(t, y, W, b, damping=STIFF):
    return -damping * y + torch.tanh(y @ W.T + b) + 0.1 * torch.sin(t).unsqueeze(-1) * y


def inputs(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(batch, 2, dtype=D, generator=g)
    W = 0.5 * torch.randn(2, 2, dtype=D, generator=g)
    b = 0.2 * torch.randn(2, dtype=D, generator=g)
    return tuple(x.requires_grad_(True) for x in (y0, W, b))


def solve_fn(solver, controller, adjoint, batch_dims: int = 0, damping=STIFF):
    ts = torch.tensor(TS, dtype=D)

    def fn(y0, W, b):
        return no.solve(
            lambda t, y: field(t, y, W, b, damping),
            y0,
            ts,
            solver=solver,
            controller=controller,
            adjoint=adjoint,
            params=[W, b],
            batch_dims=batch_dims,
        ).ys

    return fn


# gradcheck's fast mode (a random projection of the Jacobian) by default, the full
# Jacobian comparison with the slow tests (about 10 s each).
MODES = [
    pytest.param(True, id="fast"),
    pytest.param(False, id="full", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("fast", MODES)
@pytest.mark.parametrize("method", list(EACH_ADJOINT))
@pytest.mark.parametrize("name", list(SOLVERS))
def test_gradcheck_joint_fixed_steps(name, method, fast):
    # Fixed steps: Direct and Checkpoint differentiate the discrete solution exactly.
    # Backsolve's backward implicit solve is not the discrete adjoint of the forward
    # steps: it agrees to O(dt^p) only, hence its looser tolerance.
    fn = solve_fn(
        SOLVERS[name], no.ConstantStepSize(0.05), EACH_ADJOINT[method], 0, damping(method)
    )
    atol = 1e-4 if method == "backsolve" else 1e-7
    assert gradcheck(fn, inputs(), eps=1e-6, atol=atol, rtol=1e-5, fast_mode=fast)


@pytest.mark.parametrize("solver_cls", [no.Kvaerno5, no.Radau5], ids=lambda c: c.__name__)
@pytest.mark.parametrize("method", PER_SAMPLE)
def test_gradcheck_per_sample(method, solver_cls):
    tol = 1e-9
    solver = solver_cls(newton=TIGHT_NEWTON)
    controller = no.PIDController(rtol=tol, atol=tol)
    fn = solve_fn(solver, controller, EACH_ADJOINT[method], 1, damping(method))
    # Adaptive steps move with the inputs under finite differences by about the tolerance.
    assert gradcheck(fn, inputs(batch=3), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize(
    ("method", "batch_dims"),
    [(m, 0) for m in EACH_ADJOINT] + [(m, 1) for m in PER_SAMPLE],
)
@pytest.mark.parametrize("solver_cls", [no.Kvaerno5, no.Radau5], ids=lambda c: c.__name__)
def test_gradients_match_backprop_through_an_explicit_solver(method, batch_dims, solver_cls):
    y0, W, b = inputs(batch=3)
    weights = torch.randn(len(TS), 3, 2, dtype=D, generator=torch.Generator().manual_seed(1))

    def grads(solver, adjoint, tol):
        controller = no.PIDController(rtol=tol, atol=tol)
        fn = solve_fn(solver, controller, adjoint, batch_dims, damping(method))
        return torch.autograd.grad((fn(y0, W, b) * weights).sum(), (y0, W, b))

    reference = grads(no.Dopri5(), no.DirectAdjoint(), 1e-11)
    solver = solver_cls(newton=no.Newton(rtol=1e-10, atol=1e-10))
    implicit = grads(solver, EACH_ADJOINT[method], 1e-9)
    for got, want in zip(implicit, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_stage_gradient_is_not_a_pass_back_through_the_iterations():
    # The stage solves' backward costs one Jacobian per stage, however many Newton
    # iterations the forward pass took (a tape of the iterations would grow with them).
    y0, W, b = inputs(batch=1)
    y0 = y0[0].detach().requires_grad_(True)
    loose, tight = no.Newton(rtol=1e-4, atol=1e-4), no.Newton(rtol=1e-12, atol=1e-12)
    counts = []
    for newton in (loose, tight):
        calls = 0

        def f(t, y):
            nonlocal calls
            calls += 1
            return field(t, y, W, b)

        sol = no.solve(
            f, y0, torch.tensor(TS, dtype=D), solver=no.Kvaerno3(newton=newton),
            controller=no.ConstantStepSize(0.1),
        )  # fmt: skip
        before = calls
        sol.ys.sum().backward()
        counts.append((sol.stats.nfe, calls - before))
    (nfe_loose, back_loose), (nfe_tight, back_tight) = counts
    assert nfe_tight > nfe_loose  # more iterations forward...
    assert back_tight == back_loose  # ...the same backward work


def test_per_sample_backsolve_refuses_an_implicit_backward_solve():
    # Its parameter quadrature replays the step's evaluations of f as nodes, which an
    # implicit step does not have (it would silently give a wrong gradient).
    y0, W, b = inputs(batch=3)
    fn = solve_fn(no.Kvaerno5(), no.PIDController(), no.BacksolveAdjoint(), 1, MILD)
    with pytest.raises(TypeError, match="Kvaerno5 has none of: use an explicit"):
        fn(y0, W, b).sum().backward()


def test_per_sample_backsolve_with_an_explicit_backward_solver():
    # What that message suggests: the implicit forward solve, an explicit backward one.
    y0, W, b = inputs(batch=3)
    adjoint = no.BacksolveAdjoint(solver=no.Dopri5())
    tol = no.PIDController(rtol=1e-9, atol=1e-9)
    got = torch.autograd.grad(
        solve_fn(no.Kvaerno5(newton=TIGHT_NEWTON), tol, adjoint, 1, MILD)(y0, W, b).sum(),
        (y0, W, b),
    )
    want = torch.autograd.grad(
        solve_fn(no.Dopri5(), tol, no.DirectAdjoint(), 1, MILD)(y0, W, b).sum(), (y0, W, b)
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", list(FIXED))
def test_gradcheck_fixed_step_methods(name):
    fn = solve_fn(FIXED[name], no.ConstantStepSize(0.05), no.DirectAdjoint())
    assert gradcheck(fn, inputs(), eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_second_derivatives_are_refused_not_wrong():
    # The stage solves' backward is differentiable once: create_graph=True must raise,
    # not return a Hessian missing the Jacobian's own dependence on the parameters.
    y0, W, b = inputs(batch=1)
    ys = solve_fn(no.Kvaerno5(), no.PIDController(), no.DirectAdjoint())(y0, W, b)
    with pytest.raises(NotImplementedError, match="second derivatives .* not supported"):
        torch.autograd.grad(ys.sum(), W, create_graph=True)


def test_fully_implicit_gradients_match_an_explicit_solver():
    # The stacked system's implicit-function backward (fixed steps: joint mode only).
    y0, W, b = inputs(batch=2)
    ts = torch.tensor(TS, dtype=D)

    def grads(solver, controller):
        ys = no.solve(
            lambda t, y: field(t, y, W, b), y0, ts, solver=solver, controller=controller
        ).ys
        return torch.autograd.grad(ys.sum(), (y0, W, b))

    reference = grads(no.Dopri5(), no.PIDController(rtol=1e-11, atol=1e-11))
    implicit = grads(no.RadauIIA5(newton=TIGHT_NEWTON), no.ConstantStepSize(0.01))
    for got, want in zip(implicit, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_newton_failures_in_one_sample_leave_the_shared_gradient_exact():
    # Sample 1's stiffness is hidden from autograd: its Newton iterations fail and its
    # steps are rejected many times. The shared parameter's gradient is still the sum of
    # each sample's own gradient (nothing of the failed attempts leaks into it).
    w = torch.tensor(1.0, dtype=D, requires_grad=True)

    def f(t, y, hidden):
        return -w * y - 1000.0 * hidden[:, None] * y.detach() + 0.0 * y

    y0 = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=D)
    hidden = torch.tensor([0.0, 1.0], dtype=D)
    ts = torch.tensor([0.0, 0.05], dtype=D)

    def grad(rows):
        sol = no.solve(
            f, y0[rows], ts, solver=no.Kvaerno5(), controller=no.PIDController(dt0=0.01),
            batch_dims=1, args=hidden[rows],
        )  # fmt: skip
        return sol, torch.autograd.grad(sol.ys[-1].sum(), w)[0]

    both, g = grad(slice(0, 2))
    assert both.stats.rejected > 10
    torch.testing.assert_close(g, grad(slice(0, 1))[1] + grad(slice(1, 2))[1])


def test_error_weights_give_the_steps_own_estimate_with_a_graph():
    # LocalError differentiates dt Σ e_i k_i over the step's stages; for the implicit
    # solvers those k carry the implicit-function gradients.
    y0, W, b = inputs(batch=2)
    for solver in (no.Kvaerno3(), no.Kvaerno5()):
        step = solver.step(lambda t, y: field(torch.as_tensor(t), y, W, b), 0.0, y0,
                           field(torch.tensor(0.0), y0, W, b), 0.05)  # fmt: skip
        weights = solver.error_weights
        assert weights is not None and len(weights) == len(step.k)
        estimate = sum(w * 0.05 * kj for w, kj in zip(weights, step.k, strict=True))
        torch.testing.assert_close(estimate.detach(), step.y_error)
        (grad_w,) = torch.autograd.grad(estimate.square().sum(), W)
        assert torch.isfinite(grad_w).all() and grad_w.abs().sum() > 0
    assert no.RadauIIA5().error_weights is None and no.SDIRK2().error_weights is None
