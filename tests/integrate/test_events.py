"""Events in the loop: root finding, per-sample stops and jumps, edge cases, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no

G = 9.81
TIGHT = no.PIDController(rtol=1e-10, atol=1e-12)


def fall(t, y):
    """A ball in free fall: y = (height, velocity)."""
    return torch.stack([y[1], torch.full_like(y[1], -G)])


def fall_rows(t, y, *args):
    return torch.stack([y[:, 1], torch.full_like(y[:, 1], -G)], dim=-1)


def bounce_rows(t, y, e):
    return torch.stack([y[:, 0], -e * y[:, 1]], dim=-1)


def bounce_times(h0: torch.Tensor, e: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` bounce times of balls dropped from ``h0`` with restitution ``e``."""
    t = torch.sqrt(2 * h0 / G)
    v, times = G * t, [t]
    for _ in range(n - 1):
        v = e * v
        times.append(times[-1] + 2 * v / G)
    return torch.stack(times, dim=-1)


def test_falling_ball_impact_time_to_1e_12():
    h0 = 10.0
    y0 = torch.tensor([h0, 0.0], dtype=torch.float64)
    ts = torch.tensor([0.0, 5.0], dtype=torch.float64)
    with torch.no_grad():
        sol = no.solve(fall, y0, ts, controller=TIGHT, event=no.Event(lambda t, y: y[0]))
    exact = math.sqrt(2 * h0 / G)
    assert sol.success and sol.event_ts.shape == (1,)
    assert abs(float(sol.event_ts[0]) - exact) < 1e-12
    assert abs(float(sol.t_last) - exact) < 1e-12
    assert abs(float(sol.y_last[0])) < 1e-12  # the state where it stopped
    assert torch.isnan(sol.ys[1]).all()  # outputs after a stop are NaN, and still a success
    assert sol.event_index.tolist() == [0] and sol.event_element.tolist() == [0]


@pytest.mark.parametrize("n", [48, pytest.param(1024, marks=pytest.mark.slow)])
def test_balls_bounce_each_on_their_own_in_one_call(n):
    """Per-sample balls, each with its own restitution, 10 bounces each: every bounce time
    to 1e-10, and the batch does no more work than the balls alone (compaction)."""
    e = torch.linspace(0.5, 0.9, n, dtype=torch.float64)
    h0 = torch.linspace(1.0, 3.0, n, dtype=torch.float64)
    y0 = torch.stack([h0, torch.zeros_like(h0)], -1)
    ts = torch.tensor([0.0, 100.0], dtype=torch.float64)
    event = no.Event(lambda t, y, e: y[:, 0], direction=-1, terminal=10, jump=bounce_rows)
    with torch.no_grad():
        sol = no.solve(fall_rows, y0, ts, controller=TIGHT, event=event, batch_dims=1, args=e)
        own = sum(
            no.solve(
                fall_rows, y0[b : b + 1], ts, controller=TIGHT, event=event, batch_dims=1,
                args=e[b : b + 1],
            ).stats.rows
            for b in range(n)
        )  # fmt: skip
    assert sol.success and sol.event_ts.shape == (n, 10)
    assert float((sol.event_ts - bounce_times(h0, e, 10)).abs().max()) < 1e-10
    assert torch.equal(sol.t_last, sol.event_ts[:, -1])
    assert sol.stats.rows <= 1.1 * own


def test_outputs_after_a_jump_are_the_post_jump_trajectory():
    e = 0.8
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    ts = torch.linspace(0.0, 1.5, 16, dtype=torch.float64)
    jump = no.Event(
        lambda t, y: y[0], direction=-1, terminal=False,
        jump=lambda t, y: torch.stack([y[0], -e * y[1]]),
    )  # fmt: skip
    with torch.no_grad():
        sol = no.solve(fall, y0, ts, controller=TIGHT, event=jump)
    t1 = math.sqrt(2 * 2.0 / G)
    v1 = e * G * t1
    for t, y in zip(ts.tolist(), sol.ys, strict=True):
        want = 2.0 - G * t * t / 2 if t <= t1 else v1 * (t - t1) - G * (t - t1) ** 2 / 2
        assert abs(float(y[0]) - want) < 1e-9
    assert sol.event_ts.shape == (1,)


# A state that does not change lets the solver take steps as long as the solve: the
# conditions are looked at 10 times per step, so steps must stay below their period.
STILL = no.PIDController(dt_max=1.0)


def test_dense_output_follows_the_jumps_and_ends_at_a_stop():
    e = 0.8
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    ts = torch.tensor([0.0, 10.0], dtype=torch.float64)
    event = no.Event(
        lambda t, y: y[0], direction=-1, terminal=3,
        jump=lambda t, y: torch.stack([y[0], -e * y[1]]),
    )  # fmt: skip
    with torch.no_grad():
        sol = no.solve(fall, y0, ts, controller=TIGHT, event=event, dense=True)
    t1 = math.sqrt(2 * 2.0 / G)
    v1 = e * G * t1
    assert sol.dense.t1 == pytest.approx(float(sol.event_ts[-1]), abs=1e-15)
    grid = torch.linspace(0.0, float(sol.event_ts[1]) - 1e-9, 200, dtype=torch.float64)
    heights = sol.dense(grid)[:, 0]
    want = torch.where(
        grid <= t1, 2.0 - G * grid**2 / 2, v1 * (grid - t1) - G * (grid - t1) ** 2 / 2
    )
    assert float((heights - want).abs().max()) < 1e-8
    # At the event time itself: the state before the jump, as the outputs there.
    assert float(sol.dense(float(sol.event_ts[0]))[1]) == pytest.approx(-G * t1, rel=1e-9)
    with pytest.raises(ValueError, match="outside the solved interval"):
        sol.dense(float(sol.event_ts[-1]) + 0.1)


def test_crossings_inside_one_step_are_all_found_in_order():
    """sin(7t) crosses zero about twice per step of length 1: every zero is found, in order."""
    omega = 7.0
    y0 = torch.zeros(1, dtype=torch.float64)
    ts = torch.tensor([0.1, 3.0], dtype=torch.float64)
    event = no.Event(lambda t, y: torch.sin(omega * t), terminal=False)
    with torch.no_grad():
        sol = no.solve(lambda t, y: torch.zeros_like(y), y0, ts, controller=STILL, event=event)
    want = [k * math.pi / omega for k in range(1, 7)]
    assert sol.event_ts.tolist() == pytest.approx(want, abs=1e-13)


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_events_that_only_record_change_no_step(batch_dims):
    """An event without a jump that does not stop the sample is recorded where it happens
    and the step goes on: the same steps and outputs as a solve without it."""
    y0 = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    y0 = y0 if batch_dims else y0[0]
    ts = torch.linspace(0.0, 10.0, 11, dtype=torch.float64)

    def rotate(t, y):
        return torch.stack([y[..., 1], -y[..., 0]], dim=-1)

    event = no.Event(lambda t, y: y[..., 0], terminal=False)
    with torch.no_grad():
        plain = no.solve(rotate, y0, ts, batch_dims=batch_dims)
        watched = no.solve(rotate, y0, ts, batch_dims=batch_dims, event=event)
    assert torch.equal(plain.ys, watched.ys)
    assert plain.stats.steps == watched.stats.steps
    # The first sample's x = cos t: zeros at π/2 + kπ (to the default tolerance).
    times = watched.event_ts if not batch_dims else watched.event_ts[0]
    assert times.tolist() == pytest.approx([math.pi / 2 + k * math.pi for k in range(3)], abs=1e-5)


def test_points_per_step_decide_which_crossings_are_seen():
    """sin(7t) crosses zero about twice per step of length 1: with the condition looked at
    only at each step's end (points=1), crossing pairs inside one step go unseen."""
    y0 = torch.zeros(1, dtype=torch.float64)
    ts = torch.tensor([0.1, 3.0], dtype=torch.float64)

    def events_with(points: int) -> list[float]:
        event = no.Event(lambda t, y: torch.sin(7.0 * t), terminal=False, points=points)
        with torch.no_grad():
            sol = no.solve(lambda t, y: torch.zeros_like(y), y0, ts, controller=STILL, event=event)
        return sol.event_ts.tolist()

    assert len(events_with(10)) == 6
    assert len(events_with(1)) < 6
    with pytest.raises(ValueError, match=r"Event\(points=...\) must be a whole number >= 1"):
        no.Event(lambda t, y: y, points=0)


def test_direction_and_terminal_count():
    omega = 5.0
    y0 = torch.zeros(1, dtype=torch.float64)
    ts = torch.tensor([0.1, 10.0], dtype=torch.float64)

    def condition(t, y):
        return torch.sin(omega * t)

    with torch.no_grad():
        rising = no.solve(
            lambda t, y: torch.zeros_like(y), y0, ts, controller=STILL,
            event=no.Event(condition, direction=1, terminal=3),
        )  # fmt: skip
    want = [2 * math.pi * k / omega for k in (1, 2, 3)]
    assert rising.event_ts.tolist() == pytest.approx(want, abs=1e-12)
    assert float(rising.t_last) == pytest.approx(want[-1], abs=1e-12)


def test_several_events_and_elements_report_which_fired():
    y0 = torch.tensor([0.0, 0.0], dtype=torch.float64)
    ts = torch.tensor([0.0, 2.0], dtype=torch.float64)

    def f(t, y):
        return torch.tensor([1.0, 2.0], dtype=torch.float64)

    events = (
        no.Event(lambda t, y: y - 0.9, terminal=False),  # elements cross at 0.9 and 0.45
        no.Event(lambda t, y: t - 1.5),
    )
    with torch.no_grad():
        sol = no.solve(f, y0, ts, event=events)
    assert sol.event_ts.tolist() == pytest.approx([0.45, 0.9, 1.5], abs=1e-12)
    assert sol.event_index.tolist() == [0, 0, 1]
    assert sol.event_element.tolist() == [1, 0, 0]


def test_event_exactly_at_t0():
    """A condition exactly zero at t0 meets an event there when it leaves zero in the
    direction asked for (as torchdiffeq and scipy), and none otherwise."""
    y0 = torch.tensor([0.0], dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def up(t, y):
        return torch.ones_like(y)

    with torch.no_grad():
        hit = no.solve(up, y0, ts, event=no.Event(lambda t, y: y[0], direction=1))
        miss = no.solve(up, y0, ts, event=no.Event(lambda t, y: y[0], direction=-1))
    assert hit.event_ts.tolist() == [0.0] and float(hit.t_last) == 0.0
    assert miss.event_ts.numel() == 0 and miss.success
    assert float(miss.ys[-1, 0]) == pytest.approx(1.0, abs=1e-14)


def test_event_at_a_step_end_and_grazing_zeros():
    """A root exactly at a step end is met once; a condition that only touches zero (at
    a step end or inside a step) meets no event."""
    y0 = torch.zeros(1, dtype=torch.float64)
    grid = no.StepTo(ts=torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0], dtype=torch.float64))
    ts = torch.tensor([0.0, 2.0], dtype=torch.float64)
    still = lambda t, y: torch.zeros_like(y)  # noqa: E731
    with torch.no_grad():
        at_end = no.solve(
            still, y0, ts, solver=no.RK4(), controller=grid,
            event=no.Event(lambda t, y: t - 1.0, terminal=False),
        )  # fmt: skip
        touch_end = no.solve(
            still, y0, ts, solver=no.RK4(), controller=grid,
            event=no.Event(lambda t, y: (t - 1.0) ** 2, terminal=False),
        )  # fmt: skip
        touch_inside = no.solve(
            still, y0, ts, controller=STILL,
            event=no.Event(lambda t, y: (t - 0.7331) ** 2, terminal=False),
        )  # fmt: skip
    assert at_end.event_ts.tolist() == [1.0]
    assert touch_end.event_ts.numel() == 0
    assert touch_inside.event_ts.numel() == 0


def test_reverse_time_event():
    y0 = torch.tensor([0.0], dtype=torch.float64)
    ts = torch.tensor([2.0, -2.0], dtype=torch.float64)
    with torch.no_grad():
        sol = no.solve(
            lambda t, y: torch.ones_like(y), y0, ts, event=no.Event(lambda t, y: y[0] + 1.25)
        )
    # y(t) = t - 2 going backwards: y = -1.25 at t = 0.75.
    assert sol.event_ts.tolist() == pytest.approx([0.75], abs=1e-13)


def test_tuple_state_and_per_sample_conditions_with_several_elements():
    y0 = (torch.tensor([[0.0], [0.5]], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    ts = torch.tensor([0.0, 3.0], dtype=torch.float64)

    def f(t, y):
        return torch.ones_like(y[0]), 2 * torch.ones_like(y[1])

    def condition(t, y):  # (b, 2): x - 1 and z - 2.5
        return torch.stack([y[0][:, 0] - 1.0, y[1] - 2.5], dim=-1)

    with torch.no_grad():
        sol = no.solve(f, y0, ts, batch_dims=1, event=no.Event(condition))
    # Sample 0: x = t hits 1 at t=1, z = 2t hits 2.5 at 1.25 -> 1.0 first (element 0).
    # Sample 1: x = 0.5 + t hits 1 at 0.5 -> first.
    assert sol.event_ts[:, 0].tolist() == pytest.approx([1.0, 0.5], abs=1e-12)
    assert sol.event_element[:, 0].tolist() == [0, 0]


def test_no_event_leaves_the_solution_unchanged():
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ts = torch.linspace(0, 1, 5, dtype=torch.float64)
    with torch.no_grad():
        plain = no.solve(fall, y0, ts)
        watched = no.solve(fall, y0, ts, event=no.Event(lambda t, y: y[0] + 100.0))
    assert torch.equal(plain.ys, watched.ys)
    assert watched.event_ts.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"direction": 2}, r"Event\(direction=...\) must be 1"),
        ({"terminal": 0}, r"Event\(terminal=...\) must be True"),
        ({"jump": 3}, r"Event\(jump=...\) must be callable"),
    ],
)
def test_bad_event_arguments(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        no.Event(lambda t, y: y, **kwargs)


def test_bad_event_outputs_are_named():
    y0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    decay = lambda t, y: -y  # noqa: E731
    with pytest.raises(ValueError, match=r"one value per row of y in per-sample mode"):
        no.solve(decay, y0, ts, batch_dims=1, event=no.Event(lambda t, y: y.sum()))
    with pytest.raises(ValueError, match=r"jump\(t, y\) must return a state like y"):
        no.solve(
            decay, y0, ts, batch_dims=1,
            event=no.Event(lambda t, y: y[:, 0] - 0.9, jump=lambda t, y: y[:, 0]),
        )  # fmt: skip
    with pytest.raises(TypeError, match=r"event must be a neuralode.Event"):
        no.solve(decay, y0[0], ts, event=lambda t, y: y)
    with pytest.raises(ValueError, match=r"event= cannot be combined with regularizers"):
        no.solve(
            decay, y0[0], ts, regularizers=[no.KineticEnergy()], event=no.Event(lambda t, y: y)
        )
