"""Per-sample mode (batch_dims=1): each sample is its own problem, whatever its neighbours.

Batch invariance, per-sample output times, failure isolation, compaction of finished
samples (changes no number, saves the work) and the boundary errors of the mode.
"""

from __future__ import annotations

import math

import pytest
import torch

from neuralode import (
    Bosh3,
    ConstantStepSize,
    Dopri5,
    Dopri8,
    PerSampleTuning,
    PIDController,
    SolverError,
    Status,
    Tsit5,
    max_norm,
    solve,
)

D = torch.float64
TOL = PIDController(rtol=1e-6, atol=1e-8)
# Finished samples stay in the batch, frozen: what compaction must not change.
NO_COMPACTION = PerSampleTuning(compact=False)


def van_der_pol(t, y, mu):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu * (1 - x**2) * v - x], -1)


def forced(t, y, w):
    # Non-autonomous and linear in y: t matters per row.
    return torch.stack([y[..., 1], -(w**2) * y[..., 0] + torch.cos(t)], -1)


def heterogeneous(batch: int = 6, seed: int = 0):
    """A batch whose samples need very different step counts: mu from 0.5 to 6."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.linspace(0.5, 6.0, batch, dtype=D)[torch.randperm(batch, generator=gen)]
    y0 = torch.stack(
        [2.0 + 0.5 * torch.rand(batch, generator=gen, dtype=D), torch.zeros(batch, dtype=D)], -1
    )
    return mu, y0


def per_sample_times(batch: int, n: int = 5, seed: int = 1) -> torch.Tensor:
    """Each sample its own start, end and (uneven) output times."""
    gen = torch.Generator().manual_seed(seed)
    t0 = torch.rand(batch, 1, generator=gen, dtype=D)
    gaps = 0.2 + torch.rand(batch, n - 1, generator=gen, dtype=D)
    return torch.cat([t0, t0 + torch.cumsum(gaps, dim=1)], dim=1)


SOLVERS = [Dopri5(), Tsit5(), Bosh3(), Dopri8()]


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: type(s).__name__)
def test_each_sample_equals_its_solve_alone(solver):
    mu, y0 = heterogeneous()
    ts = per_sample_times(len(mu))
    batch = solve(van_der_pol, y0, ts, solver=solver, controller=TOL, batch_dims=1, args=mu)
    assert batch.ys.shape == (ts.shape[1], len(mu), 2)
    for b in range(len(mu)):
        alone = solve(
            van_der_pol,
            y0[b : b + 1],
            ts[b : b + 1],
            solver=solver,
            controller=TOL,
            batch_dims=1,
            args=mu[b : b + 1],
        )
        torch.testing.assert_close(batch.ys[:, b], alone.ys[:, 0], rtol=1e-13, atol=1e-13)
        assert batch.stats.sample_steps[b] == alone.stats.steps


def test_neighbours_do_not_change_a_sample():
    mu, y0 = heterogeneous(batch=5)
    ts = torch.linspace(0.0, 3.0, 9, dtype=D)
    first = solve(van_der_pol, y0, ts, controller=TOL, batch_dims=1, args=mu)
    # Replace every neighbour of sample 0 by a much stiffer one.
    mu2, y02 = mu.clone(), y0.clone()
    mu2[1:] = 40.0
    y02[1:, 0] = -1.5
    second = solve(van_der_pol, y02, ts, controller=TOL, batch_dims=1, args=mu2)
    torch.testing.assert_close(first.ys[:, 0], second.ys[:, 0], rtol=1e-13, atol=1e-13)
    assert first.stats.sample_steps[0] == second.stats.sample_steps[0]


@pytest.mark.parametrize("solver", [Dopri5(), Tsit5(), Bosh3()], ids=lambda s: type(s).__name__)
def test_a_sample_alone_takes_the_joint_solvers_steps(solver):
    # One sample in per-sample mode is the joint solve of that sample: same step count,
    # same solution to rounding.
    mu, y0 = heterogeneous(batch=4)
    ts = per_sample_times(4)
    batch = solve(van_der_pol, y0, ts, solver=solver, controller=TOL, batch_dims=1, args=mu)
    for b in range(4):
        joint = solve(
            lambda t, y, m=mu[b]: van_der_pol(t, y, m), y0[b], ts[b], solver=solver, controller=TOL
        )
        torch.testing.assert_close(batch.ys[:, b], joint.ys, rtol=1e-10, atol=1e-10)
        assert batch.stats.sample_steps[b] == joint.stats.steps


def test_per_sample_output_times_in_reverse_and_non_autonomous():
    w = torch.tensor([0.5, 2.0, 7.0], dtype=D)
    y0 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, -0.5]], dtype=D)
    ts = -per_sample_times(3, n=5)  # decreasing rows
    sol = solve(forced, y0, ts, controller=TOL, batch_dims=1, args=w)
    for b in range(3):
        joint = solve(lambda t, y, w=w[b]: forced(t, y, w), y0[b], ts[b], controller=TOL)
        torch.testing.assert_close(sol.ys[:, b], joint.ys, rtol=1e-10, atol=1e-10)
    assert sol.t_last.tolist() == ts[:, -1].tolist()


def test_shared_output_times_broadcast_to_every_sample():
    mu, y0 = heterogeneous(batch=3)
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)
    shared = solve(van_der_pol, y0, ts, controller=TOL, batch_dims=1, args=mu)
    rows = solve(van_der_pol, y0, ts.expand(3, -1), controller=TOL, batch_dims=1, args=mu)
    torch.testing.assert_close(shared.ys, rows.ys, rtol=0, atol=0)


def test_output_times_beyond_each_sample_and_a_single_time():
    y0 = torch.ones(2, 3, dtype=D)
    sol = solve(lambda t, y: -y, y0, torch.zeros(2, 1, dtype=D), batch_dims=1)
    assert sol.ys.shape == (1, 2, 3) and sol.stats.rows == 2  # only the boundary check
    torch.testing.assert_close(sol.ys[0], y0)


def test_tuple_state_equals_concatenated_state():
    mu, y0 = heterogeneous(batch=4)
    ts = per_sample_times(4)

    def split_field(t, y, mu):
        out = van_der_pol(t, torch.cat(y, -1), mu)
        return out[:, :1], out[:, 1:]

    flat = solve(van_der_pol, y0, ts, controller=TOL, batch_dims=1, args=mu)
    parts = solve(split_field, (y0[:, :1], y0[:, 1:]), ts, controller=TOL, batch_dims=1, args=mu)
    torch.testing.assert_close(torch.cat(parts.ys, -1), flat.ys, rtol=0, atol=0)


def test_multidimensional_samples_and_max_norm():
    y0 = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0), dtype=D)
    rates = torch.tensor([0.1, 1.0, 10.0], dtype=D)
    controller = PIDController(rtol=1e-6, atol=1e-8, norm=max_norm)
    sol = solve(
        lambda t, y, r: -r[:, None, None] * y,
        y0,
        torch.tensor([0.0, 1.0], dtype=D),
        controller=controller,
        batch_dims=1,
        args=rates,
    )
    exact = y0 * torch.exp(-rates)[:, None, None]
    assert sol.ys.shape == (2, 3, 2, 4)
    torch.testing.assert_close(sol.ys[-1], exact, rtol=1e-5, atol=1e-7)
    steps = sol.stats.sample_steps.tolist()
    assert steps[0] < steps[1] < steps[2]  # each sample's own step count


def test_per_sample_tolerances_act_per_sample():
    mu, y0 = heterogeneous(batch=3)
    ts = torch.linspace(0.0, 2.0, 4, dtype=D)
    rtol = torch.tensor([[1e-4], [1e-7], [1e-10]], dtype=D)
    sol = solve(
        van_der_pol, y0, ts, controller=PIDController(rtol=rtol, atol=1e-10), batch_dims=1, args=mu
    )
    for b in range(3):
        alone = solve(
            van_der_pol,
            y0[b : b + 1],
            ts,
            batch_dims=1,
            args=mu[b : b + 1],
            controller=PIDController(rtol=float(rtol[b]), atol=1e-10),
        )
        torch.testing.assert_close(sol.ys[:, b], alone.ys[:, 0], rtol=1e-13, atol=1e-13)


def blows_up(t, y, k):
    # y' = k y²: finite-time blow-up at t = 1 / (k y0) for k > 0; decays for k < 0.
    return k[:, None] * y**2


def test_one_failing_sample_is_reported_and_nan_filled_the_others_finish():
    k = torch.tensor([-1.0, 2.0, -0.5, -3.0], dtype=D)  # sample 1 blows up at t = 0.5
    y0 = torch.ones(4, 1, dtype=D)
    ts = torch.linspace(0.0, 2.0, 9, dtype=D)
    sol = solve(blows_up, y0, ts, controller=TOL, batch_dims=1, args=k, throw=False)
    assert sol.sample_status[1] in (Status.DT_MIN, Status.MAX_STEPS, Status.NONFINITE)
    assert [s for i, s in enumerate(sol.sample_status) if i != 1] == [Status.SUCCESS] * 3
    assert sol.status is sol.sample_status[1] and sol.failed_samples == [1]
    reached = ts <= 0.5
    assert torch.isnan(sol.ys[~reached, 1]).all() and torch.isfinite(sol.ys[reached, 1]).all()
    assert 0.49 < float(sol.t_last[1]) < 0.51 and torch.isfinite(sol.y_last[1]).all()
    exact = y0 / (1 - k[:, None] * ts[:, None, None])  # (T, B, 1)
    for b in (0, 2, 3):
        torch.testing.assert_close(sol.ys[:, b], exact[:, b], rtol=1e-6, atol=1e-8)
    with pytest.raises(SolverError) as info:
        solve(blows_up, y0, ts, controller=TOL, batch_dims=1, args=k)
    assert info.value.samples == [1] and "samples [1]" in str(info.value)


def test_nan_in_one_sample_does_not_touch_the_others():
    bad_after = torch.tensor([math.inf, 0.3, math.inf], dtype=D)

    def f(t, y, t_bad):
        out = -y
        return torch.where((t > t_bad)[:, None], torch.full_like(y, math.nan), out)

    y0 = torch.ones(3, 2, dtype=D)
    ts = torch.linspace(0.0, 1.0, 5, dtype=D)
    sol = solve(f, y0, ts, controller=TOL, batch_dims=1, args=bad_after, throw=False)
    assert sol.sample_status == (Status.SUCCESS, Status.NONFINITE, Status.SUCCESS)
    alone = solve(f, y0[:1], ts, controller=TOL, batch_dims=1, args=bad_after[:1])
    torch.testing.assert_close(sol.ys[:, [0, 2]], alone.ys.expand(-1, 2, -1), rtol=0, atol=0)
    assert torch.isnan(sol.ys[2:, 1]).all() and torch.isfinite(sol.ys[:2, 1]).all()


def test_nonfinite_initial_field_fails_only_that_sample():
    def f(t, y, scale):
        return -y * scale[:, None]

    scale = torch.tensor([1.0, math.nan], dtype=D)
    sol = solve(
        f,
        torch.ones(2, 1, dtype=D),
        torch.tensor([0.0, 1.0], dtype=D),
        batch_dims=1,
        args=scale,
        throw=False,
    )
    assert sol.sample_status == (Status.SUCCESS, Status.NONFINITE)
    assert torch.isnan(sol.ys[1, 1]).all() and float(sol.ys[1, 0, 0]) == pytest.approx(math.exp(-1))


def test_max_steps_is_each_samples_budget():
    mu = torch.tensor([1.0, 1000.0], dtype=D)  # the second is stiff: needs many steps
    y0 = torch.tensor([[2.0, 0.0], [2.0, 0.0]], dtype=D)
    ts = torch.tensor([0.0, 1.0], dtype=D)
    sol = solve(
        van_der_pol, y0, ts, controller=TOL, batch_dims=1, args=mu, max_steps=200, throw=False
    )
    assert sol.sample_status == (Status.SUCCESS, Status.MAX_STEPS)
    assert sol.stats.sample_steps.tolist()[1] == 200 and sol.stats.sample_steps[0] < 200


def test_compaction_changes_no_number_and_saves_the_work():
    mu, y0 = heterogeneous(batch=6)
    ts = per_sample_times(6)
    compacted = solve(van_der_pol, y0, ts, controller=TOL, batch_dims=1, args=mu)
    frozen = solve(van_der_pol, y0, ts, controller=TOL, batch_dims=1, args=mu, tuning=NO_COMPACTION)
    torch.testing.assert_close(compacted.ys, frozen.ys, rtol=0, atol=0)
    torch.testing.assert_close(compacted.y_last, frozen.y_last, rtol=0, atol=0)
    assert compacted.stats.sample_steps.tolist() == frozen.stats.sample_steps.tolist()
    # Dopri5 is FSAL: each sample costs 6 rows per step plus 2 (f0, initial step), and
    # nothing else when finished samples leave the batch.
    steps = compacted.stats.sample_steps
    assert compacted.stats.rows == int((6 * steps + 2).sum())
    # Frozen samples are still evaluated: every call then sees the whole batch.
    assert frozen.stats.rows == 6 * frozen.stats.nfe > compacted.stats.rows


def test_deferred_compaction_bounds_the_wasted_rows():
    # 40 samples finishing a few at a time: finished ones wait, frozen, until they are
    # compact_share of the batch, so the rows evaluated stay within 1 / (1 - share) of
    # the samples' own work, and no number changes.
    w = torch.logspace(-1, 1.5, 40, dtype=D)
    y0 = torch.ones(40, 2, dtype=D)
    ts = torch.linspace(0.0, 3.0, 7, dtype=D)
    compacted = solve(forced, y0, ts, controller=TOL, batch_dims=1, args=w)
    steps = compacted.stats.sample_steps
    ideal = int((6 * steps + 2).sum())
    assert ideal < compacted.stats.rows <= ideal / (1 - PerSampleTuning().compact_share)
    frozen = solve(forced, y0, ts, controller=TOL, batch_dims=1, args=w, tuning=NO_COMPACTION)
    torch.testing.assert_close(compacted.ys, frozen.ys, rtol=0, atol=0)
    assert frozen.stats.rows > 1.5 * compacted.stats.rows


@pytest.mark.parametrize(
    "solver",
    [Dopri5(), Bosh3(interpolation="hermite")],
    ids=["dopri5", "hermite"],
)
@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["forward", "reverse"])
def test_batching_the_output_interpolation_changes_no_number(solver, direction):
    # Outputs are interpolated in batches of pending steps (PendingOutputs): at the end by
    # default, every step with a budget of one element (the loop as it was before), and
    # every few steps in between. Values and gradients must not depend on it.
    w = torch.linspace(0.5, 6.0, 5, dtype=D)
    y0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=D)
    ts = direction * per_sample_times(5, n=9)

    def run(tuning=None):
        params = w.clone().requires_grad_(True)
        sol = solve(forced, y0, ts, solver=solver, controller=TOL, batch_dims=1, args=params,
                    tuning=tuning)  # fmt: skip
        (grad,) = torch.autograd.grad(sol.ys.square().sum(), params)
        return sol, grad

    reference, grad = run()
    assert reference.success and torch.isfinite(reference.ys).all()
    for budget in (1, 300):
        sol, g = run(PerSampleTuning(pending_elements=budget))
        torch.testing.assert_close(sol.ys, reference.ys, rtol=0, atol=1e-15)
        torch.testing.assert_close(g, grad, rtol=1e-13, atol=0)
        assert sol.stats.sample_steps.tolist() == reference.stats.sample_steps.tolist()


def test_rows_counter_non_fsal_solver_with_hermite_outputs():
    mu, y0 = heterogeneous(batch=4)
    ts = per_sample_times(4)
    sol = solve(
        van_der_pol,
        y0,
        ts,
        solver=Bosh3(interpolation="hermite"),
        controller=TOL,
        batch_dims=1,
        args=mu,
    )
    stages = 4  # Bosh3 is FSAL with 4 stages
    bound = 1.2 * int((stages * sol.stats.sample_steps).sum())
    assert sol.stats.rows <= bound


def test_per_sample_mode_boundary_errors():
    y0, ts = torch.ones(2, 1, dtype=D), torch.tensor([0.0, 1.0], dtype=D)
    with pytest.raises(ValueError, match="batch_dims must be 0"):
        solve(lambda t, y: -y, y0, ts, batch_dims=2)
    with pytest.raises(ValueError, match="PIDController"):
        solve(
            lambda t, y: -y, y0, ts, solver=Dopri5(), controller=ConstantStepSize(0.1), batch_dims=1
        )
    with pytest.raises(ValueError, match=r"\(B, T\) = \(2, T\)"):
        solve(lambda t, y: -y, y0, ts.expand(3, -1), batch_dims=1)
    with pytest.raises(ValueError, match=r"ts\[1, 0\]"):
        solve(lambda t, y: -y, y0, torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=D), batch_dims=1)
    with pytest.raises(ValueError, match="first dim"):
        solve(lambda t, y: -y, torch.tensor(1.0, dtype=D), ts, batch_dims=1)
    with pytest.raises(ValueError, match="args="):
        solve(lambda t, y: -y, y0, ts, args=torch.ones(2))
    with pytest.raises(ValueError, match=r"args\[0\]"):
        solve(lambda t, y, a: -y, y0, ts, batch_dims=1, args=torch.ones(3))
    with pytest.raises(ValueError, match="step_ts"):
        solve(lambda t, y: -y, y0, ts, controller=PIDController(step_ts=[0.5]), batch_dims=1)
    with pytest.raises(ValueError, match="dense=True"):
        solve(lambda t, y: -y, y0, ts, dense=True, batch_dims=1)


def test_time_is_one_value_per_row_and_rows_shrink():
    seen = []

    def f(t, y, rate):
        seen.append((tuple(t.shape), y.shape[0]))
        return -rate[:, None] * y

    rate = torch.tensor([0.1, 30.0], dtype=D)
    solve(f, torch.ones(2, 1, dtype=D), torch.tensor([0.0, 1.0], dtype=D), batch_dims=1, args=rate)
    assert all(t == (n,) for t, n in seen)
    assert seen[0][1] == 2 and seen[-1][1] == 1  # the fast-decaying... slow sample finishes last


def test_float32_state_with_a_float64_clock():
    # The clock is float64 whatever the state's dtype; f still receives t in ts's dtype.
    mu, y0 = heterogeneous(batch=4)
    mu, y0, ts = mu.float(), y0.float(), per_sample_times(4).float()
    seen = set()

    def f(t, y, mu):
        seen.add((t.dtype, y.dtype))
        return van_der_pol(t, y, mu)

    controller = PIDController(rtol=1e-5, atol=1e-6)
    sol = solve(f, y0, ts, controller=controller, batch_dims=1, args=mu)
    assert sol.ys.dtype == torch.float32 and seen == {(torch.float32, torch.float32)}
    for b in range(4):
        alone = solve(
            f, y0[b : b + 1], ts[b : b + 1], controller=controller, batch_dims=1, args=mu[b : b + 1]
        )
        torch.testing.assert_close(sol.ys[:, b], alone.ys[:, 0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fused_steps": 0}, "fused_steps must be a whole number >= 1, got 0"),
        ({"fused_steps": 2.5}, "fused_steps must be a whole number >= 1, got 2.5"),
        ({"compact_share": 1.0}, r"compact_share must lie in \[0, 1\), got 1.0"),
        ({"pending_elements": 0}, "pending_elements must be a whole number >= 1, got 0"),
    ],
)
def test_tuning_refuses_what_cannot_work(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PerSampleTuning(**kwargs)


def test_tuning_is_for_the_per_sample_mode_only():
    y0 = torch.ones(2, dtype=D)
    ts = torch.tensor([0.0, 1.0], dtype=D)
    with pytest.raises(ValueError, match="tuning= configures the per-sample driver"):
        solve(lambda t, y: -y, y0, ts, tuning=PerSampleTuning())
    with pytest.raises(TypeError, match="tuning must be a neuralode.PerSampleTuning"):
        solve(lambda t, y: -y, y0[None], ts, batch_dims=1, tuning={"fused_steps": 2})
