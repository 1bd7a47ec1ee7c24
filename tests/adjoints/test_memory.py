"""P2's memory measurement: fresh processes, peak RSS of one training step."""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("tyro")
if not sys.platform.startswith("linux"):
    pytest.skip("the measurement reads /proc", allow_module_level=True)

from neuralode.experiments.memory.measurement import MemoryPoint, measure  # noqa: E402


def test_measure_runs_in_a_fresh_process():
    result = measure(MemoryPoint("checkpoint", "rk4", 4.0, width=8, batch=4))
    assert result["peak_reset"] is True
    assert result["nfe_forward"] == 16 and result["accepted"] == 4
    assert result["nfe_backward"] > 0
    assert 0 <= result["peak_mb"] < 500


@pytest.mark.slow
def test_backprop_grows_with_steps_and_the_adjoint_does_not():
    def peak(method, steps):
        return measure(MemoryPoint(method, "rk4", steps, width=32, batch=32))["peak_mb"]

    # State 32×32×6×6 float32 = 147 kB; backprop keeps every stage's graph (several states
    # per evaluation), 4 evaluations per RK4 step.
    assert peak("direct", 64.0) - peak("direct", 4.0) > 40
    assert abs(peak("backsolve", 64.0) - peak("backsolve", 4.0)) < 5
