"""Float32 time near the last output time: no false failure, in both loops.

The clock runs in float64, but a step shorter than the resolution of ``t``'s dtype (four
ulps, ``neuralode.integrate.clock.resolution``) is an underflow. A step used to be stretched onto
``t1`` only when it came within 1e-10 of its size, so in float32 time a step could end
a few 1e-7 before ``t1``: a remainder the clock cannot step, reported as ``DT_MIN`` with
the solution missing at ``t1`` (about 1 sample in 10^5 of a random Van der Pol batch).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time

import pytest
import torch

import neuralode as no
from neuralode.solvers import RK4

F32, F64 = torch.float32, torch.float64
RTOL, ATOL = 1e-5, 1e-7


def van_der_pol(t, y, mu):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu[..., 0] * (1 - x * x) * v - x], dim=-1)


def solve_vdp(y0, ts, mu, **kwargs):
    controller = no.PIDController(rtol=RTOL, atol=ATOL)
    return no.solve(van_der_pol, y0, ts, controller=controller, batch_dims=1, args=(mu,), **kwargs)


def reference(y0, ts, mu):
    """The same problem in float64 (time and state) at tight tolerances."""
    controller = no.PIDController(rtol=1e-10, atol=1e-12)
    return no.solve(
        van_der_pol, y0.to(F64), ts.to(F64), controller=controller, batch_dims=1,
        args=(mu.to(F64),), max_steps=100_000,
    ).ys  # fmt: skip


def test_the_reported_van_der_pol_sample_reaches_t1():
    # From the trust issue: the last step ended 7e-7 before t1 = 5, and the remainder
    # failed as DT_MIN with dt=nan.
    y0 = torch.tensor([[0.18272514641284943, 1.6881920099258423]], dtype=F32)
    mu = torch.tensor([[2.41790771484375]], dtype=F32)
    ts = torch.tensor([0.0, 5.0], dtype=F32)
    sol = solve_vdp(y0, ts, mu)
    assert sol.sample_status == (no.Status.SUCCESS,)
    assert float(sol.t_last[0]) == 5.0
    torch.testing.assert_close(sol.ys.to(F64), reference(y0, ts, mu), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("batch_dims", [0, 1])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_a_step_never_ends_a_sliver_before_t1(batch_dims, direction):
    # Steps of exactly 1 reach 3.0, one float32 ulp (2.4e-7) before t1: that step must
    # land on t1 itself, in the joint loop and the per-sample loop, forwards and back.
    t1 = float(torch.nextafter(torch.tensor(3.0), torch.tensor(4.0)))
    ts = direction * torch.tensor([0.0, t1], dtype=F32)
    controller = no.PIDController(dt0=1.0, dt_max=1.0, rtol=1e-3, atol=1e-6)
    y0 = torch.ones(2, 2)
    sol = no.solve(lambda t, y: -0.01 * y, y0, ts, controller=controller, batch_dims=batch_dims)
    assert sol.stats.steps == 3 * (1 + batch_dims)
    torch.testing.assert_close(sol.ys[-1], torch.full((2, 2), math.exp(-0.01 * direction * t1)))
    assert (torch.as_tensor(sol.t_last, dtype=F32) == ts[-1]).all()


@pytest.mark.slow  # dynamo's tracing: about 8 s
def test_the_compiled_step_lands_on_t1_too():
    # The compiled per-sample step traces the same rule (dynamo's "eager" backend: the
    # same graph as inductor's, without code generation; one step per graph, the fused
    # steps repeat it).
    torch._dynamo.reset()
    t1 = float(torch.nextafter(torch.tensor(3.0), torch.tensor(4.0)))
    ts = torch.tensor([0.0, t1], dtype=F32)
    controller = no.PIDController(dt0=1.0, dt_max=1.0, rtol=1e-3, atol=1e-6)
    try:
        sol = no.solve(lambda t, y: -0.01 * y, torch.ones(3, 2), ts, controller=controller,
                       batch_dims=1, compile_step=True,
                       tuning=no.PerSampleTuning(backend="eager", fused_steps=1))  # fmt: skip
    finally:
        torch._dynamo.reset()
    assert sol.stats.sample_steps.tolist() == [3, 3, 3]
    torch.testing.assert_close(sol.ys[-1], torch.full((3, 2), math.exp(-0.01 * t1)))


def test_fixed_steps_land_on_a_t1_off_their_grid():
    # ConstantStepSize(1.0) reaches 3.0 one ulp before t1 as well (joint loop).
    t1 = float(torch.nextafter(torch.tensor(3.0), torch.tensor(4.0)))
    ts = torch.tensor([0.0, 1.5, t1], dtype=F32)
    sol = no.solve(
        lambda t, y: -0.01 * y, torch.ones(2), ts, solver=RK4(),
        controller=no.ConstantStepSize(1.0),
    )  # fmt: skip
    assert sol.stats.steps == 3
    torch.testing.assert_close(sol.ys[-1], torch.full((2,), math.exp(-0.01 * t1)))


def test_a_forced_stop_one_ulp_after_a_step_end_is_landed_on():
    # The same sliver before a step_ts stop (joint loop): the stop is reached, not failed.
    stop = float(torch.nextafter(torch.tensor(2.0), torch.tensor(3.0)))
    controller = no.PIDController(dt0=1.0, dt_max=1.0, rtol=1e-3, atol=1e-6, step_ts=[stop])
    ts = torch.tensor([0.0, 3.5], dtype=F32)
    sol = no.solve(lambda t, y: -0.01 * y, torch.ones(2), ts, controller=controller)
    assert sol.stats.steps == 4
    torch.testing.assert_close(sol.ys[-1], torch.full((2,), math.exp(-0.035)))


def random_batch(n, seed, dtype=F32):
    g = torch.Generator().manual_seed(seed)
    y0 = (torch.rand(n, 2, generator=g, dtype=F64) * 4 - 2).to(dtype)
    mu = (torch.rand(n, 1, generator=g, dtype=F64) * 4.5 + 0.5).to(dtype)
    return y0, mu


@pytest.mark.parametrize(
    "t0, t1",
    [(0.0, 5.0), (0.0, 0.1), (0.3, 4.7), (5.0, 0.0), (-1.7, -6.1), (1e3, 1e3 + 5.0)],
)
def test_float32_samples_reach_every_kind_of_t1(t0, t1):
    # t1 not representable (0.1, 4.7, -6.1), reversed time, times far from 0 (where the
    # clock's resolution is 5e-4): every sample succeeds and matches float64. Backwards,
    # Van der Pol with mu is Van der Pol with -mu forwards: flip mu to stay well-posed.
    y0, mu = random_batch(256, seed=1)
    mu = mu if t1 > t0 else -mu
    ts = torch.tensor([t0, (t0 + t1) / 2, t1], dtype=F32)
    sol = solve_vdp(y0, ts, mu, throw=False)
    assert set(sol.sample_status) == {no.Status.SUCCESS}
    assert torch.equal(sol.t_last, ts[-1].expand(256))
    torch.testing.assert_close(sol.ys.to(F64), reference(y0, ts, mu), rtol=2e-3, atol=2e-3)


def test_each_sample_lands_on_its_own_t1():
    # (B, T) times: every t1 a few float32 ulps from 5 and from each other.
    y0, mu = random_batch(64, seed=2)
    t1 = torch.tensor(5.0, dtype=F32)
    ends = []
    for _ in range(64):
        ends.append(t1)
        t1 = torch.nextafter(t1, torch.tensor(6.0))
    ts = torch.stack([torch.zeros(64, dtype=F32), torch.stack(ends)], dim=-1)
    sol = solve_vdp(y0, ts, mu, throw=False)
    assert set(sol.sample_status) == {no.Status.SUCCESS}
    assert torch.equal(sol.t_last, ts[:, -1])


@pytest.mark.parametrize("batch_dims", [0, 1])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_an_interval_shorter_than_the_clock_resolution_is_one_step(batch_dims, direction):
    # [1, 1 + 1 ulp]: the one step that reaches t1 is below four ulps of t, but it moves
    # the clock onto t1 itself, so it is no underflow.
    t1 = float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)))
    ts = direction * torch.tensor([1.0, t1], dtype=F32)
    y0 = torch.ones(3, 2)
    sol = no.solve(lambda t, y: -y, y0, ts, batch_dims=batch_dims)
    assert sol.stats.steps == (3 if batch_dims else 1)
    dt = direction * (t1 - 1.0)
    torch.testing.assert_close(sol.ys[-1], torch.full((3, 2), math.exp(-dt)))


def test_a_collapsing_step_inside_a_tiny_interval_still_fails_cleanly():
    # The landing rule must not hide a real collapse: a field that is NaN past t0 keeps
    # rejecting the one-ulp step, which shrinks below the clock's resolution and fails.
    t1 = float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)))
    ts = torch.tensor([1.0, t1], dtype=F32)

    def nan_past_t0(t, y):
        return torch.where((t > 1.0)[:, None], torch.full_like(y, math.nan), -y)

    sol = no.solve(nan_past_t0, torch.ones(2, 2), ts, batch_dims=1, throw=False)
    assert set(sol.sample_status) == {no.Status.NONFINITE}
    assert sol.stats.steps < 20


def test_huge_times_in_float32_succeed_where_steps_are_resolvable():
    # At t = 1e6 float32 resolves steps of 0.48 (four ulps of 0.0625): a slow decay whose
    # steps are longer succeeds; its last step lands on t1.
    ts = torch.tensor([1e6, 1e6 + 5.0], dtype=F32)
    y0 = torch.ones(4, 2)
    controller = no.PIDController(rtol=RTOL, atol=ATOL, dt0=0.5)
    for batch_dims in (0, 1):
        sol = no.solve(lambda t, y: -0.05 * y, y0, ts, controller=controller,
                       batch_dims=batch_dims)  # fmt: skip
        torch.testing.assert_close(sol.ys[-1], torch.full((4, 2), math.exp(-0.25)))


@pytest.mark.parametrize("batch_dims", [0, 1])
def test_huge_times_in_float32_fail_cleanly_where_steps_are_not(batch_dims):
    # Van der Pol needs steps of ~0.05: below what float32 time resolves at 1e6. That is
    # DT_MIN, with the step size reported (not NaN) and the cause and fix named: float64
    # output times (the state stays float32) solve it.
    y0, mu = random_batch(4, seed=3)
    ts = torch.tensor([1e6, 1e6 + 5.0], dtype=F32)
    controller = no.PIDController(rtol=RTOL, atol=ATOL)

    # (Per-sample, mu goes in args: it follows the samples as they leave the batch.)
    field = van_der_pol if batch_dims else functools.partial(van_der_pol, mu=mu)
    args = (mu,) if batch_dims else ()
    for times in (ts, ts.to(F64)):
        with contextlib.ExitStack() as stack:
            if times.dtype == F32:
                err = stack.enter_context(pytest.raises(no.SolverError, match=CLOCK))
            sol = no.solve(field, y0, times, controller=controller, batch_dims=batch_dims,
                           args=args)  # fmt: skip
            assert sol.ys.dtype == F32
    assert err.value.status is no.Status.DT_MIN
    assert math.isfinite(err.value.dt) and 0 < err.value.dt < 0.5


CLOCK = (
    r"t is float32, which resolves steps only down to 0\.477 at t=1e\+06: if the solution "
    r"is smooth there, pass ts as float64 \(the state keeps its own dtype\) or shift time"
)


def test_an_underflow_in_float64_time_keeps_the_plain_message():
    # In float64 the clock's underflow is a blow-up (or stiffness), as the status says.
    with pytest.raises(no.SolverError) as err:
        no.solve(lambda t, y: y**2, torch.ones(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64))
    assert "resolves steps only" not in str(err.value)
    assert err.value.status is no.Status.DT_MIN


def test_a_failed_sample_reports_its_last_step():
    # dt in the error was NaN for every per-sample failure; now the failing sample's step.
    k = torch.tensor([[-1.0], [2.0]], dtype=F64)  # y' = k y^2 blows up at t = 1/k = 0.5
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(no.SolverError) as err:
        no.solve(lambda t, y, k: k * y**2, torch.ones(2, 1, dtype=F64), ts, batch_dims=1,
                 args=(k,))  # fmt: skip
    assert err.value.samples == [1]
    assert 0 < err.value.dt < 1e-10
    assert abs(err.value.t - 0.5) < 1e-6


# Samples per chunk of the million: a chunk's working set stays a few MiB.
CHUNK = 50_000


@pytest.mark.slow
def test_a_million_random_float32_samples_have_no_false_failure():
    # Random well-posed Van der Pol samples (y0 in [-2, 2]^2, mu in [0.5, 5]) in float32
    # over [0, 5]: before the fix about 1 in 10^5 failed with DT_MIN just before t1.
    n, start, failed = 1_000_000, time.perf_counter(), []
    ts = torch.tensor([0.0, 5.0], dtype=F32)
    for chunk in range(n // CHUNK):
        y0, mu = random_batch(CHUNK, seed=100 + chunk)
        sol = solve_vdp(y0, ts, mu, throw=False, max_steps=100_000)
        ok = torch.tensor([s is no.Status.SUCCESS for s in sol.sample_status])
        bad = (~ok | (sol.t_last != ts[-1])).nonzero().flatten().tolist()
        failed += [(y0[i].tolist(), float(mu[i]), sol.sample_status[i].name) for i in bad]
    print(f"{n} float32 samples, {len(failed)} failed, {time.perf_counter() - start:.1f} s")
    assert failed == []


@pytest.mark.slow
def test_random_float32_time_windows_have_no_false_failure():
    # Each sample its own window: t0 in [-100, 100], length in [0.01, 10], forwards and
    # backwards (with -mu, so the backward problem is well-posed). Before the fix 39 of
    # these 200,000 failed (the clock's resolution grows with |t|).
    g = torch.Generator().manual_seed(7)
    failed = []
    for chunk in range(8):
        y0, mu = random_batch(25_000, seed=200 + chunk)
        direction = 1.0 if chunk % 2 == 0 else -1.0
        t0 = torch.rand(25_000, generator=g, dtype=F64) * 200 - 100
        length = direction * (torch.rand(25_000, generator=g, dtype=F64) * 10 + 1e-2)
        share = 0.05 + 0.9 * torch.rand(25_000, generator=g, dtype=F64)
        ts = torch.stack([t0, t0 + share * length, t0 + length], -1).to(F32)
        sol = solve_vdp(y0, ts, direction * mu, throw=False, max_steps=100_000)
        ok = torch.tensor([s is no.Status.SUCCESS for s in sol.sample_status])
        bad = (~ok | (sol.t_last != ts[:, -1])).nonzero().flatten().tolist()
        failed += [(ts[i].tolist(), y0[i].tolist(), float(mu[i])) for i in bad]
    assert failed == []
