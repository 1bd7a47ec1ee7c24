"""Gradients through events: event times (implicit-function theorem) and jumps, every method."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no
from generic import EACH_ADJOINT

G = 9.81
TIGHT = no.PIDController(rtol=1e-11, atol=1e-12)


class Fall(torch.nn.Module):
    """Free fall with a learnable gravity, for one ball or a batch of rows."""

    def __init__(self) -> None:
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(G, dtype=torch.float64))

    def forward(self, t: torch.Tensor, y: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[..., 1], -self.g * torch.ones_like(y[..., 1])], dim=-1)


@pytest.mark.parametrize("adjoint", EACH_ADJOINT.values(), ids=EACH_ADJOINT.keys())
def test_impact_time_derivative_against_closed_form(adjoint):
    h0 = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    fall = Fall()
    y0 = torch.stack([h0, torch.zeros_like(h0)])
    ts = torch.tensor([0.0, 5.0], dtype=torch.float64)
    sol = no.solve(
        fall, y0, ts, controller=TIGHT, adjoint=adjoint, event=no.Event(lambda t, y: y[0])
    )
    dt_dh, dt_dg = torch.autograd.grad(sol.event_ts[0], (h0, fall.g))
    # t* = sqrt(2 h / g)
    assert float(dt_dh) == pytest.approx(1 / math.sqrt(2 * G * 10.0), rel=1e-9)
    assert float(dt_dg) == pytest.approx(-math.sqrt(2 * 10.0 / G) / (2 * G), rel=1e-9)


@pytest.mark.parametrize("adjoint", EACH_ADJOINT.values(), ids=EACH_ADJOINT.keys())
def test_bouncing_balls_gradients_against_analytic(adjoint):
    """Per-sample balls that stop at their third bounce: the bounce time and the state
    they stop in, differentiated with respect to each ball's restitution and to gravity,
    against the closed forms."""
    e = torch.tensor([0.6, 0.75, 0.9], dtype=torch.float64, requires_grad=True)
    h0 = torch.tensor([1.0, 2.0, 1.5], dtype=torch.float64)
    fall = Fall()
    y0 = torch.stack([h0, torch.zeros_like(h0)], -1)
    ts = torch.tensor([0.0, 6.0], dtype=torch.float64)
    event = no.Event(
        lambda t, y, e: y[:, 0], direction=-1, terminal=3,
        jump=lambda t, y, e: torch.stack([y[:, 0], -e * y[:, 1]], -1),
    )  # fmt: skip
    sol = no.solve(
        fall, y0, ts, controller=TIGHT, adjoint=adjoint, batch_dims=1, args=e, event=event
    )
    t1 = torch.sqrt(2 * h0 / G)
    t3 = t1 * (1 + 2 * e + 2 * e**2)
    v3 = e**3 * G * t1  # upwards after the third bounce
    assert torch.allclose(sol.event_ts[:, -1], t3.detach(), atol=1e-10)
    assert torch.allclose(sol.y_last[:, 1], v3.detach(), atol=1e-9)
    grads = torch.autograd.grad(
        (sol.event_ts[:, -1].sum(), sol.y_last[:, 1].sum()), (e, fall.g), allow_unused=True
    )
    # d/de and d/dg of t3 + v3, summed over the balls.
    de = t1 * (2 + 4 * e) + 3 * e**2 * G * t1
    dg = (-t1 / (2 * G) * (1 + 2 * e + 2 * e**2) + e**3 * t1 / 2).sum()
    assert torch.allclose(grads[0], de.detach(), rtol=1e-7)
    assert float(grads[1].detach()) == pytest.approx(float(dg.detach()), rel=1e-7)


@pytest.mark.parametrize("adjoint", EACH_ADJOINT.values(), ids=EACH_ADJOINT.keys())
def test_output_after_jumps_differentiates_through_them(adjoint):
    """The height at a fixed time after two bounces, against its closed form."""
    e = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    h0 = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    fall = Fall()
    y0 = torch.stack([h0, torch.zeros_like(h0)])
    t_end = 2.0
    ts = torch.tensor([0.0, 1.0, t_end], dtype=torch.float64)
    event = no.Event(
        lambda t, y: y[0], direction=-1, terminal=False,
        jump=lambda t, y: torch.stack([y[0], -e * y[1]]),
    )  # fmt: skip
    sol = no.solve(fall, y0, ts, controller=TIGHT, adjoint=adjoint, event=event)

    def height(h0, e, g):
        t1 = torch.sqrt(2 * h0 / g)
        t2 = t1 * (1 + 2 * e)
        v2 = e**2 * g * t1
        return v2 * (t_end - t2) - g * (t_end - t2) ** 2 / 2

    g = fall.g.detach().clone().requires_grad_(True)
    want = height(h0.detach().requires_grad_(True), e.detach().requires_grad_(True), g)
    assert float(sol.event_ts.numel()) == 2
    assert float(sol.ys[-1, 0].detach()) == pytest.approx(float(want.detach()), abs=1e-9)
    got = torch.autograd.grad(sol.ys[-1, 0], (h0, e, fall.g))
    h_var, e_var = h0.detach().requires_grad_(True), e.detach().requires_grad_(True)
    exact = torch.autograd.grad(height(h_var, e_var, g), (h_var, e_var, g))
    for a, b in zip(got, exact, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-7)


@pytest.mark.parametrize("adjoint", EACH_ADJOINT.values(), ids=EACH_ADJOINT.keys())
def test_gradcheck_through_events(adjoint):
    """gradcheck (float64) of the event times and outputs with respect to y0, a parameter
    of f, one of the condition and one of the jump, through two jumps."""
    ts = torch.tensor([0.0, 0.7, 2.6], dtype=torch.float64)
    tight = no.PIDController(rtol=1e-10, atol=1e-12)

    def run(y0, k, level, kick):
        def f(t, y):
            return torch.stack([y[1], -k * y[0] - 0.1 * y[1]])

        event = no.Event(
            lambda t, y: y[0] - level, terminal=False,
            jump=lambda t, y: torch.stack([y[0], y[1] + kick]),
        )  # fmt: skip
        sol = no.solve(f, y0, ts, controller=tight, adjoint=adjoint, params=[k], event=event)
        assert sol.event_ts.numel() == 2
        return sol.event_ts, sol.ys[1:]

    inputs = (
        torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True),
        torch.tensor(4.0, dtype=torch.float64, requires_grad=True),
        torch.tensor(0.3, dtype=torch.float64, requires_grad=True),
        torch.tensor(-0.5, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(run, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_no_grad_runs_once_and_grad_gives_the_same_values():
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    ts = torch.linspace(0, 2, 9, dtype=torch.float64)
    event = no.Event(
        lambda t, y: y[0], direction=-1, terminal=False,
        jump=lambda t, y: torch.stack([y[0], -0.7 * y[1]]),
    )  # fmt: skip
    fall = Fall()
    with torch.no_grad():
        once = no.solve(fall, y0, ts, controller=TIGHT, event=event)
    twice = no.solve(fall, y0, ts, controller=TIGHT, event=event)
    assert twice.stats.nfe > once.stats.nfe  # the differentiable pass ran too
    assert torch.allclose(once.ys, twice.ys.detach(), atol=1e-9)
    assert torch.allclose(once.event_ts, twice.event_ts.detach(), atol=0)


@pytest.mark.parametrize("adjoint", EACH_ADJOINT.values(), ids=EACH_ADJOINT.keys())
def test_joint_state_keeps_its_shape_in_the_differentiable_pass(adjoint):
    """A (2, 3) joint state: f, the condition and the jump see (2, 3) in both passes, and
    the gradient of a linear system through jumps that double the state is exact."""
    rates = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    y0 = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)

    def f(t, y):
        assert y.shape == (2, 3)
        return -rates * y

    event = no.Event(lambda t, y: y[0, 2] - 0.5, terminal=False, jump=lambda t, y: 2 * y)
    sol = no.solve(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), controller=TIGHT,
                   adjoint=adjoint, params=[], event=event)  # fmt: skip
    # y[0, 2] = exp(-3t) halves to 0.5 at t = ln2/3, and after each doubling again.
    assert sol.event_ts.tolist() == pytest.approx([k * math.log(2) / 3 for k in (1, 2, 3, 4)])
    (grad,) = torch.autograd.grad(sol.ys[-1].sum(), y0)
    # The system is linear in y0 (the jumps too, at times set by y0[0, 2] alone): d/dy0 of
    # sum(y(1)) is y(1) / y0 where y0 = 1, plus the event times' share through y0[0, 2].
    assert torch.allclose(grad[1], sol.ys[-1][1].detach(), rtol=1e-7)
