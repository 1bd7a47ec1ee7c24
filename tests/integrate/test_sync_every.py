"""PerSampleTuning(sync_every=K): eager steps with one host read per K steps (the GPU path).

On a GPU every read of a tensor's value waits for the device; these tests count the reads
on the CPU, where the same code runs, and check that skipping them changes no number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

import neuralode as no
from fields import PER_SAMPLE_FAILURES, RowMixingMLP, van_der_pol

D = torch.float64


def _vdp_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mu = torch.linspace(0.5, 6.0, 8, dtype=D)
    y0 = torch.stack([torch.linspace(-2, 2, 8, dtype=D), torch.zeros(8, dtype=D)], -1)
    return mu, y0, torch.linspace(0.0, 3.0, 11, dtype=D)


# Every way a tensor's value reaches the host (each one a device sync on a GPU).
_READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def host_reads() -> Iterator[list[int]]:
    """Count the host reads of tensor values made inside the block."""
    count = [0]
    originals = {name: getattr(torch.Tensor, name) for name in _READS}

    def counted(original):
        def read(self, *args, **kwargs):
            count[0] += 1
            return original(self, *args, **kwargs)

        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, counted(original))
    try:
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@pytest.mark.parametrize("every", [2, 5, 16])
def test_per_sample_sync_every_changes_no_number(every):
    mu, y0, ts = _vdp_batch()
    controller = no.PIDController(rtol=1e-6, atol=1e-8)
    tuning = no.PerSampleTuning(sync_every=every)
    one = no.solve(van_der_pol, y0, ts, controller=controller, batch_dims=1, args=mu)
    many = no.solve(van_der_pol, y0, ts, controller=controller, batch_dims=1, args=mu,
                    tuning=tuning)  # fmt: skip
    # The same steps, on the same formulas: bit for bit.
    assert torch.equal(many.ys, one.ys)
    assert torch.equal(many.stats.sample_steps, one.stats.sample_steps)
    assert torch.equal(many.stats.sample_accepted, one.stats.sample_accepted)
    assert many.stats.nfe == one.stats.nfe
    # Samples that finish between reads stay in the batch, frozen, until the next read.
    assert one.stats.rows <= many.stats.rows <= one.stats.rows + len(mu) * (every - 1) * 6


def test_per_sample_sync_every_reads_the_host_once_per_k_steps():
    mu, y0, ts = _vdp_batch()
    controller = no.PIDController(rtol=1e-6, atol=1e-8)
    reads = {}
    for every in (1, 8):
        tuning = no.PerSampleTuning(sync_every=every)
        with host_reads() as count:
            sol = no.solve(van_der_pol, y0, ts, controller=controller, batch_dims=1, args=mu,
                           tuning=tuning)  # fmt: skip
        reads[every] = count[0]
    steps = int(sol.stats.sample_steps.max())
    assert steps > 50
    # One read a step (plus the solve's setup and finish) against one per 8 steps.
    assert reads[1] >= steps
    assert reads[8] <= steps / 8 + 20
    assert reads[8] < reads[1] / 4


@pytest.mark.parametrize("case", PER_SAMPLE_FAILURES)
def test_failures_between_reads_end_as_with_a_read_every_step(case):
    # Steps that meet trouble between reads are dropped and taken again one at a time,
    # where the host judges the failure: every status, time, value and count as before.
    f, y0, ts, args, extra = PER_SAMPLE_FAILURES[case]
    controller = no.PIDController(rtol=1e-6, atol=1e-8)
    one, many = (
        no.solve(f, y0, ts, controller=controller, batch_dims=1, args=args, throw=False,
                 tuning=no.PerSampleTuning(sync_every=every), **extra)
        for every in (1, 4)
    )  # fmt: skip
    assert many.sample_status == one.sample_status
    assert any(s is not no.Status.SUCCESS for s in one.sample_status)
    assert torch.equal(many.ys.isnan(), one.ys.isnan())
    assert torch.equal(many.ys.nan_to_num(), one.ys.nan_to_num())
    assert torch.equal(many.t_last, one.t_last)
    assert torch.equal(many.stats.sample_steps, one.stats.sample_steps)
    assert many.stats.nfe == one.stats.nfe


def _joint() -> tuple[RowMixingMLP, torch.Tensor, torch.Tensor]:
    y0 = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(1))
    return RowMixingMLP(), y0, torch.linspace(0.0, 2.0, 7, dtype=D)


def test_joint_sync_every_runs_the_state_as_one_row_with_the_joint_numbers():
    f, y0, ts = _joint()
    controller = no.PIDController(rtol=1e-7, atol=1e-9)
    with torch.no_grad():
        joint = no.solve(f, y0, ts, controller=controller)
        with host_reads() as count:
            row = no.solve(f, y0, ts, controller=controller,
                           tuning=no.PerSampleTuning(sync_every=8))  # fmt: skip
    assert row.ys.shape == joint.ys.shape == (7, 6, 3)
    # The per-sample formulas round differently from the joint ones (see one_row.py).
    scale = float(joint.ys.abs().max())
    assert float((row.ys - joint.ys).abs().max()) < 64 * torch.finfo(D).eps * scale
    assert (row.stats.steps, row.stats.nfe) == (joint.stats.steps, joint.stats.nfe)
    assert row.status is no.Status.SUCCESS and row.sample_status is None
    assert row.t_last == joint.t_last == 2.0
    assert count[0] <= joint.stats.steps / 8 + 40


@pytest.mark.parametrize("adjoint", [no.DirectAdjoint(), no.BacksolveAdjoint()])
def test_joint_sync_every_gradients_match_the_joint_ones(adjoint):
    f, y0, ts = _joint()
    controller = no.PIDController(rtol=1e-8, atol=1e-10)
    grads = []
    for tuning in (None, no.PerSampleTuning(sync_every=4)):
        y = y0.clone().requires_grad_()
        sol = no.solve(f, y, ts, controller=controller, adjoint=adjoint, tuning=tuning)
        grads.append(torch.autograd.grad(sol.ys.square().sum(), [y, *f.parameters()]))
    for ours, joint in zip(*grads, strict=True):
        torch.testing.assert_close(ours, joint, rtol=1e-9, atol=1e-11)


def test_joint_sync_every_refuses_what_the_row_cannot_do_by_name():
    y0, ts = torch.ones(3, dtype=D), torch.tensor([0.0, 1.0], dtype=D)
    tuning = no.PerSampleTuning(sync_every=4)
    with pytest.raises(ValueError, match="sync_every > 1 in joint mode.*dense=True"):
        no.solve(lambda t, y: -y, y0, ts, tuning=tuning, dense=True)
    with pytest.raises(ValueError, match="tuning= configures the per-sample driver"):
        no.solve(lambda t, y: -y, y0, ts, tuning=no.PerSampleTuning(sync_every=1))


def test_sync_every_must_be_a_whole_number():
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=f"sync_every must be a whole number >= 1, got {bad}"):
            no.PerSampleTuning(sync_every=bad)
