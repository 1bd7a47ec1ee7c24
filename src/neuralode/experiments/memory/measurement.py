"""Peak memory of one training step of the ODE-Net's ODE block, one fresh process per point.

Protocol P2 (docs/protocols.md): the block of the paper's ODE-Net (width 64, batch 64,
state 64×6×6), one step = solve from t = 0 to 1 + backward of mean(h(1)²), with backprop
(:class:`~neuralode.DirectAdjoint`), the adjoint (:class:`~neuralode.BacksolveAdjoint`) and
:class:`~neuralode.CheckpointAdjoint`, under RK4 with a fixed number of steps and dopri5
at a tolerance.

Each point runs in a new Python process
(``python -m neuralode.experiments.memory.measurement``), so nothing allocated by an
earlier point hides in the heap, and with glibc's mmap threshold fixed
(``MALLOC_MMAP_THRESHOLD_``), so that heap fragmentation does not grow with the number of
steps. The child warms up on a tiny batch, returns freed heap memory to the kernel, reads
VmRSS as the baseline, resets the peak mark VmHWM (Linux: write 5 to
/proc/self/clear_refs), runs the step and reports VmHWM − baseline. Linux only (it reads /proc).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

METHODS = ("direct", "backsolve", "checkpoint")
# glibc's default initial mmap threshold (bytes), fixed for the measuring process.
MMAP_THRESHOLD = 128 * 1024


def proc_status_kib(key: str) -> int:
    """A ``kB`` field of /proc/self/status, e.g. ``VmRSS`` or ``VmHWM`` (peak RSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); return whether it took effect."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return proc_status_kib("VmHWM") - proc_status_kib("VmRSS") < 1024


def release_free_heap() -> None:
    """Hand freed malloc memory back to the kernel, so that a later peak is not hidden.

    Without it, a step could reuse heap pages that earlier work freed but glibc kept: they
    already count in the baseline RSS, and the step's growth would understate its footprint.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclasses.dataclass(frozen=True)
class MemoryPoint:
    """One measurement: gradient method, solver and its step count or tolerance."""

    method: str  # "direct" | "backsolve" | "checkpoint"
    solver: str  # "rk4" | "dopri5"
    param: float  # rk4: number of steps; dopri5: rtol = atol
    width: int = 64
    batch: int = 64

    @property
    def label(self) -> str:
        """``rk4 n=16`` or ``dopri5 tol=0.001``."""
        return f"rk4 n={int(self.param)}" if self.solver == "rk4" else f"dopri5 tol={self.param:g}"


def _step(point: MemoryPoint, batch: int) -> dict[str, int]:
    from ... import (
        RK4,
        BacksolveAdjoint,
        CheckpointAdjoint,
        ConstantStepSize,
        DirectAdjoint,
        Dopri5,
        PIDController,
        solve,
    )
    from ...nn import ConvODEFunc

    torch.manual_seed(0)
    f = ConvODEFunc(point.width)
    h0 = torch.randn(batch, point.width, 6, 6, requires_grad=True)
    rk4 = point.solver == "rk4"
    adjoint = {"direct": DirectAdjoint, "backsolve": BacksolveAdjoint,
               "checkpoint": CheckpointAdjoint}[point.method]()  # fmt: skip
    sol = solve(
        f, h0, torch.tensor([0.0, 1.0]), solver=RK4() if rk4 else Dopri5(),
        controller=ConstantStepSize(1.0 / point.param) if rk4
        else PIDController(rtol=point.param, atol=point.param),
        adjoint=adjoint, max_steps=100_000,
    )  # fmt: skip
    sol.ys[-1].pow(2).mean().backward()
    return {"nfe_forward": sol.stats.nfe, "nfe_backward": sol.stats.nfe_backward,
            "accepted": sol.stats.accepted}  # fmt: skip


def measure_here(point: MemoryPoint) -> dict[str, Any]:
    """Measure ``point`` in this process (meant for a fresh one: see :func:`measure`)."""
    cheap = dataclasses.replace(point, param=2 if point.solver == "rk4" else 0.1)
    _step(cheap, batch=2)  # lazy initialisation happens here, and its memory is freed below
    gc.collect()
    release_free_heap()
    baseline = proc_status_kib("VmRSS")
    reset_ok = reset_peak_rss()
    counts = _step(point, point.batch)
    peak = proc_status_kib("VmHWM")
    return {**dataclasses.asdict(point), **counts, "label": point.label,
            "peak_mb": (peak - baseline) / 1024, "peak_reset": reset_ok}  # fmt: skip


def measure(point: MemoryPoint, threads: int = 1) -> dict[str, Any]:
    """Measure ``point`` in a fresh Python process and return its result."""
    args = [sys.executable, "-m", __name__, json.dumps(dataclasses.asdict(point)), str(threads)]
    # glibc raises its mmap threshold each time a large block is freed, so later blocks of
    # that size come from the heap, where fragmentation grows the resident set with every
    # step: the adjoint at RK4 n = 4 / 16 / 64 peaked at 37.9 / 40.6 / 43.5 MB. A fixed
    # threshold keeps every tensor above 128 kB in its own mapping, returned on free, so
    # the peak is what the step keeps alive: 31.6 MB at all three.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    done = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {point.label} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    torch.set_num_threads(int(sys.argv[2]))
    print(json.dumps(measure_here(MemoryPoint(**json.loads(sys.argv[1])))), flush=True)
