"""compat events: odeint(event_fn=...) and odeint_event with torchdiffeq's semantics."""

from __future__ import annotations

import math

import pytest
import torch

from neuralode.compat import odeint, odeint_adjoint, odeint_event

G = 9.8


class Ball(torch.nn.Module):
    """torchdiffeq's example style: a tuple state of (1,) tensors and a parameter t0."""

    def __init__(self) -> None:
        super().__init__()
        self.gravity = torch.nn.Parameter(torch.tensor([G], dtype=torch.float64))
        self.t0 = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float64))
        self.height = torch.nn.Parameter(torch.tensor([10.0], dtype=torch.float64))
        self.log_radius = torch.nn.Parameter(torch.tensor([math.log(0.2)], dtype=torch.float64))

    def forward(self, t, state):
        pos, vel, log_radius = state
        return vel, -self.gravity, torch.zeros_like(log_radius)

    def touch(self, t, state):
        pos, _, log_radius = state
        return pos - torch.exp(log_radius)

    def bounce_times(self, n: int, interface=odeint) -> list[torch.Tensor]:
        t0 = self.t0
        state = (self.height, torch.zeros_like(self.height), self.log_radius)
        times = []
        for _ in range(n):
            t, solution = odeint_event(
                self, state, t0, event_fn=self.touch, atol=1e-10, rtol=1e-10,
                odeint_interface=interface,
            )  # fmt: skip
            times.append(t)
            pos, vel, log_radius = (s[-1] for s in solution)
            state = (pos + 1e-7, -0.8 * vel, log_radius)
            t0 = t
        return times


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint], ids=["odeint", "adjoint"])
def test_bouncing_ball_as_torchdiffeq_examples_write_it(interface):
    """Three bounces chained through odeint_event: times against the closed form, and
    the last one's gradients (t0, height, gravity, a radius inside the state) against
    central finite differences."""
    ball = Ball()
    times = ball.bounce_times(3, interface)
    drop = math.sqrt(2 * (10.0 - 0.2) / G)
    v = G * drop
    want = [0.5 + drop, 0.5 + drop + 2 * 0.8 * v / G, 0.5 + drop + 2 * 0.8 * v / G * 1.8]
    assert [float(t) for t in times] == pytest.approx(want, abs=1e-6)
    params = dict(ball.named_parameters())
    grads = torch.autograd.grad(times[-1], list(params.values()))
    eps = 1e-5
    for (name, p), grad in zip(params.items(), grads, strict=True):
        with torch.no_grad():
            p += eps
            up = float(ball.bounce_times(3)[-1])
            p -= 2 * eps
            down = float(ball.bounce_times(3)[-1])
            p += eps
        assert float(grad) == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-6), name


def test_event_fn_reaching_zero_stops_as_in_torchdiffeq():
    """An event_fn that returns exactly zero past a time stops the solve there (torchdiffeq
    counts reaching zero as a sign change); one zero at t0 can never change sign there (its
    solve would run to its step budget), which is an error at once."""
    y0 = torch.tensor([1.0], dtype=torch.float64)

    def cutoff(t, y):
        return torch.where(t > 0.75, torch.zeros_like(t), torch.ones_like(t))

    t, sol = odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64),
                    event_fn=cutoff)  # fmt: skip
    assert float(t) == pytest.approx(0.75, abs=1e-12)
    assert float(sol[-1, 0]) == pytest.approx(math.exp(-0.75), rel=1e-6)
    with pytest.raises(ValueError, match=r"event_fn is exactly zero at t\[0\]"):
        odeint(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64),
               event_fn=lambda t, y: t + 0 * y[0])  # fmt: skip


def test_first_crossing_of_any_element_and_reverse_time():
    y0 = torch.tensor([0.0], dtype=torch.float64)
    t, sol = odeint_event(
        lambda t, y: torch.ones_like(y), y0, torch.tensor(0.0, dtype=torch.float64),
        event_fn=lambda t, y: torch.stack([y[0] - 2.0, y[0] + 1.5]), reverse_time=True,
    )  # fmt: skip
    # Backwards, y = t: y + 1.5 reaches zero at t = -1.5 before y - 2 ever does.
    assert float(t) == pytest.approx(-1.5, abs=1e-12)
    assert float(sol[-1, 0]) == pytest.approx(-1.5, abs=1e-9)


def test_event_mode_needs_two_times():
    with pytest.raises(ValueError, match=r"We require len\(t\) == 2"):
        odeint(lambda t, y: -y, torch.ones(1), torch.linspace(0, 1, 3), event_fn=lambda t, y: y)
