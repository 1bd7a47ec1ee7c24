"""The Adams multistep methods: coefficients, orders on even and uneven grids, gradients.

They are the first solvers with a state carried from step to step (the f history), so
these tests also check that the drivers and the gradient methods carry it correctly:
a checkpointed gradient must equal backprop through the whole solve.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import neuralode as no
from neuralode.solvers.adams import MAX_ORDER, even_weights, integrated_lagrange

D = torch.float64


def oscillator(t, y):
    # y = (sin t, cos t), with a time-dependent term so that t is exercised too.
    return torch.stack([y[1], -y[0]]) + 0.0 * t


def exact(ts):
    return torch.stack([torch.sin(ts), torch.cos(ts)], dim=-1)


def solve(solver, ts, controller, **kwargs):
    y0 = torch.tensor([0.0, 1.0], dtype=D)
    return no.solve(oscillator, y0, ts, solver=solver, controller=controller, **kwargs)


def test_even_grid_tables_are_torchdiffeqs():
    fixed_adams = pytest.importorskip("torchdiffeq._impl.fixed_adams")
    for n in range(2, MAX_ORDER + 1):
        ours_ab = torch.tensor(even_weights(n, implicit=False), dtype=D)
        ours_am = torch.tensor(even_weights(n, implicit=True), dtype=D)
        torch.testing.assert_close(ours_ab, fixed_adams._BASHFORTH_DIVISOR[n], rtol=1e-15, atol=0)
        torch.testing.assert_close(ours_am, fixed_adams._MOULTON_DIVISOR[n], rtol=1e-15, atol=0)


@pytest.mark.parametrize("m", [1, 2, 5, 12])
def test_weights_integrate_polynomials_exactly_on_uneven_nodes(m):
    gen = torch.Generator().manual_seed(m)
    # Past nodes 0 > s_1 > s_2 > ... with uneven gaps between 0.3 and 1.7 steps.
    gaps = 0.3 + 1.4 * torch.rand(3, m - 1, generator=gen, dtype=D)
    nodes = torch.cat([torch.zeros(3, 1, dtype=D), -gaps.cumsum(-1)], dim=1)
    w = torch.tensor([integrated_lagrange(row) for row in nodes.tolist()], dtype=D)
    for degree in range(m):
        # ∫_0^1 s^p ds = 1 / (p + 1), to rounding of the terms summed (up to 1e14 at p = 11)
        terms = w * nodes**degree
        scale = float(terms.abs().sum(-1).max())
        torch.testing.assert_close(
            terms.sum(-1), torch.full((3,), 1 / (degree + 1), dtype=D),
            rtol=0, atol=1e-13 * scale,
        )  # fmt: skip


def one_step(solver, h, f, y_exact, t0=0.3, seed=0):
    """One step of ``solver`` from an exact history at uneven past times: its error.

    The history's gaps are random multiples (0.6 to 1.4) of ``h``.
    """
    gen = torch.Generator().manual_seed(seed)
    state = solver.initial_state(torch.zeros(1, 1, dtype=D))
    past = state[0].shape[1]
    gaps = h * (0.6 + 0.8 * torch.rand(past, generator=gen, dtype=D))
    times = t0 - gaps.cumsum(0)
    history = torch.stack([f(t, y_exact(t)) for t in times]).reshape(1, past, 1)
    meta = torch.cat([torch.tensor([float(past)], dtype=D), times]).reshape(1, -1)
    y0 = y_exact(torch.tensor(t0, dtype=D)).reshape(1)
    step = solver.step(f, t0, y0, f(torch.tensor(t0, dtype=D), y0), h, None, (history, meta))
    return float((step.y1 - y_exact(torch.tensor(t0 + h, dtype=D))).abs().max())


def solvers(order):
    """The explicit method of ``order`` and, from order 2, the corrected one."""
    out = [no.AdamsBashforth(order=order)]
    if order > 1:
        out.append(no.AdamsBashforthMoulton(order=order, max_iters=50, rtol=0.0, atol=1e-15))
    return out


@pytest.mark.parametrize("order", range(1, 6))
def test_local_order_with_uneven_history(order):
    """y' = y cos t (solution exp(sin t)): local error O(h^(order + 1))."""

    def f(t, y):
        return y * torch.cos(torch.as_tensor(t, dtype=D))

    def y_exact(t):
        return torch.exp(torch.sin(t))

    for solver in solvers(order):
        errors = [one_step(solver, h / order, f, y_exact) for h in (0.1, 0.05)]
        slope = math.log2(errors[0] / errors[1])
        assert abs(slope - (order + 1)) < 0.2, (solver, errors, slope)


@pytest.mark.parametrize("order", range(1, MAX_ORDER + 1))
def test_exact_for_polynomials_below_the_order(order):
    """y' = t^(p - 1) is integrated exactly from uneven history iff p <= order.

    (Higher orders reach round-off before a slope can be measured; this checks every
    coefficient of every order instead.)
    """
    for solver in solvers(order):
        for degree, exact in ((order - 1, True), (order, False)):

            def f(t, y, degree=degree):
                return torch.as_tensor(t, dtype=D) ** degree + 0.0 * y

            def y_exact(t, degree=degree):
                return t ** (degree + 1) / (degree + 1)

            error = one_step(solver, 0.1, f, y_exact)
            assert (error < 1e-14) == exact, (solver, degree, error)


@pytest.mark.parametrize(
    ("solver", "order"),
    [(no.AdamsBashforth(order=p), p) for p in (1, 2, 3, 4)]
    + [(no.AdamsBashforthMoulton(order=p), p) for p in (2, 3, 4, 5)],
)
@pytest.mark.filterwarnings("ignore:AdamsBashforthMoulton:RuntimeWarning")
def test_global_order_on_an_even_grid(solver, order):
    errors, sizes = [], []
    ts = torch.tensor([0.0, 4.0], dtype=D)
    steps = (64, 128, 256) if order < 4 else (32, 64, 128)
    for n in steps:
        sol = solve(solver, ts, no.ConstantStepSize(4.0 / n))
        errors.append(float((sol.ys[-1] - exact(ts[-1])).abs().max()))
        sizes.append(4.0 / n)
    slope = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    # The first steps are RK4 (order 4): below order 4 they do not change the slope.
    assert abs(slope - order) < 0.2, (errors, slope)


def test_uneven_grid_keeps_the_order():
    """On a jittered grid the variable coefficients keep order 4 (fixed ones give 1)."""
    errors, sizes = [], []
    gen = torch.Generator().manual_seed(3)
    for n in (40, 80, 160):
        h = 4.0 / n
        jitter = (torch.rand(n - 1, generator=gen, dtype=D) - 0.5) * 0.4 * h
        grid = torch.linspace(0.0, 4.0, n + 1, dtype=D)
        grid[1:-1] += jitter
        ts = torch.tensor([0.0, 4.0], dtype=D)
        sol = solve(no.AdamsBashforth(order=4), ts, no.StepTo(grid))
        errors.append(float((sol.ys[-1] - exact(ts[-1])).abs().max()))
        sizes.append(h)
    slope = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    assert abs(slope - 4) < 0.3, (errors, slope)


def test_outputs_inside_steps_and_evaluations():
    ts = torch.linspace(0.0, 2.0, 7, dtype=D)  # outputs between grid points
    for solver in (no.AdamsBashforth(order=4), no.AdamsBashforthMoulton(order=4)):
        sol = solve(solver, ts, no.ConstantStepSize(0.01))
        # Cubic Hermite between the 4th-order grid values.
        assert float((sol.ys - exact(ts)).abs().max()) < 1e-7
    ab = solve(no.AdamsBashforth(order=4), ts, no.ConstantStepSize(0.01))
    # One evaluation per step after the RK4 start (3 steps of 4 evaluations).
    # f0, two RK4 steps of 4 evaluations, then one per step (none needed after the last).
    assert ab.stats.nfe == 1 + 2 * 4 + 197


def test_corrector_that_does_not_converge_warns_and_keeps_the_step():
    ts = torch.tensor([0.0, 1.0], dtype=D)
    solver = no.AdamsBashforthMoulton(order=5, max_iters=1, rtol=0.0, atol=0.0)
    with pytest.warns(RuntimeWarning, match="corrector did not converge in max_iters=1"):
        sol = solve(solver, ts, no.ConstantStepSize(0.05))
    # PEC with one correction is still a 5th-order method.
    assert float((sol.ys[-1] - exact(ts[-1])).abs().max()) < 1e-6


def test_history_restarts_after_an_event_jump():
    """After a jump of the state, f's history is of the old trajectory: start afresh.

    y' = -y from 1; when y falls to 0.5 it jumps up by 1 (to 1.5), so
    y(t) = 1.5 exp(-(t - ln 2)) after t = ln 2. A history across the jump would carry
    f = -y from before it into the first steps after (an O(1) error in f).
    """
    event = no.Event(lambda t, y: y[0] - 0.5, jump=lambda t, y: y + 1.0, terminal=False)
    ts = torch.tensor([0.0, 1.5], dtype=D)
    y0 = torch.tensor([1.0], dtype=D)
    for solver in (no.AdamsBashforth(order=4), no.AdamsBashforthMoulton(order=5)):
        sol = no.solve(
            lambda t, y: -y, y0, ts, solver=solver, controller=no.ConstantStepSize(0.01),
            event=event,
        )  # fmt: skip
        assert abs(float(sol.event_ts[0]) - math.log(2.0)) < 1e-8
        truth = 1.5 * math.exp(-(1.5 - math.log(2.0)))
        assert abs(float(sol.ys[-1, 0]) - truth) < 1e-8


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(0.5 * torch.randn(3, 3, generator=gen, dtype=D))

    def forward(self, t, y):
        return torch.tanh(y @ self.w) + 0.1 * torch.sin(t)


@pytest.mark.parametrize(
    "solver", [no.AdamsBashforth(order=4), no.AdamsBashforthMoulton(order=6)], ids=repr
)
def test_gradients_every_method(solver):
    field = Field()
    gen = torch.Generator().manual_seed(1)
    y0 = torch.randn(2, 3, generator=gen, dtype=D, requires_grad=True)
    ts = torch.tensor([0.0, 0.37, 1.0], dtype=D)
    ctrl = no.ConstantStepSize(0.05)

    def grads(adjoint):
        sol = no.solve(field, y0, ts, solver=solver, controller=ctrl, adjoint=adjoint)
        loss = (sol.ys**2).sum()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, (y0, field.w))])

    direct = grads(no.DirectAdjoint())
    # The checkpointed replay carries the history's cotangent from step to step: without
    # it the gradient would miss every path through earlier values of f.
    torch.testing.assert_close(grads(no.CheckpointAdjoint()), direct, rtol=1e-12, atol=1e-12)
    # The continuous adjoint solved backwards with the same method: close, not equal.
    torch.testing.assert_close(grads(no.BacksolveAdjoint()), direct, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("solver", [no.AdamsBashforth(order=3), no.AdamsBashforthMoulton(order=4)])
def test_gradcheck(solver):
    field = Field()
    ts = torch.tensor([0.0, 0.3], dtype=D)
    y0 = torch.tensor([[0.1, -0.2, 0.3]], dtype=D, requires_grad=True)

    def run(y0, w):
        field.w.data = w.detach()
        return no.solve(
            lambda t, y: torch.tanh(y @ w) + 0.1 * torch.sin(t), y0, ts, solver=solver,
            controller=no.ConstantStepSize(0.05), params=[w], adjoint=no.CheckpointAdjoint(),
        ).ys  # fmt: skip

    w = field.w.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(run, (y0, w))


@pytest.mark.parametrize("order", [0, 13, 2.5, True])
def test_bad_order_is_named(order):
    error = TypeError if not isinstance(order, int) or isinstance(order, bool) else ValueError
    with pytest.raises(error, match="order"):
        no.AdamsBashforth(order=order)
    with pytest.raises((TypeError, ValueError), match="order"):
        no.AdamsBashforthMoulton(order=1)


def test_bad_corrector_settings_are_named():
    with pytest.raises(ValueError, match="max_iters must be at least 1"):
        no.AdamsBashforthMoulton(max_iters=0)
    with pytest.raises(ValueError, match="rtol must be a non-negative number"):
        no.AdamsBashforthMoulton(rtol=-1.0)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        no.AdamsBashforth(interpolation="cubic")


def test_refused_where_it_cannot_run():
    ts = torch.tensor([0.0, 1.0], dtype=D)
    y0 = torch.zeros(2, 2, dtype=D)
    # Per-sample mode needs an adaptive method; Adams methods have no error estimate.
    with pytest.raises(TypeError, match="steps the joint state"):
        no.AdamsBashforth().step(
            oscillator, torch.zeros(2, dtype=D), y0, y0, torch.ones(2, dtype=D)
        )
    with pytest.raises(ValueError, match="batch_dims=1"):
        no.solve(
            oscillator, y0, ts, solver=no.AdamsBashforth(), batch_dims=1,
            controller=no.ConstantStepSize(0.1),
        )  # fmt: skip
    with pytest.raises(ValueError, match="compile_step"):
        solve(no.AdamsBashforth(), ts, no.ConstantStepSize(0.1), compile_step=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve(no.AdamsBashforth(), ts, no.ConstantStepSize(0.1))
