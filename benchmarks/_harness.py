"""Shared measurement and reporting helpers for the benchmark scripts.

Importing this module pins torch to one intra-op thread: solver overhead is Python- and
dispatch-bound, and letting BLAS spread small matmuls over cores would mostly measure thread
wake-up noise on a 2-core machine. Every library is measured under the same setting.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Per-call wall times (seconds) of one callable, one sample per interleaved round."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def iqr(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q3 - q1


def device_sync() -> None:
    """Wait for the GPU's queued work, if CUDA is in use (a clock read before it would stop
    while the device still runs what the timed calls queued)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _calls_per_sample(fn: Callable[[], object], min_sample_s: float) -> int:
    """Calls to batch into one sample so that timer resolution and jitter stay negligible."""
    fn()  # warm-up: first calls pay for lazy init, allocator growth, cold caches
    device_sync()
    start = time.perf_counter()
    fn()
    device_sync()
    once = time.perf_counter() - start
    return max(1, math.ceil(min_sample_s / max(once, 1e-9)))


def _time_sample(fn: Callable[[], object], number: int) -> float:
    device_sync()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    device_sync()
    return (time.perf_counter() - start) / number


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    min_sample_s: float = 0.02,
) -> dict[str, Timing]:
    """Time several callables in round-robin order, `repeats` rounds.

    Interleaving means slow drifts of the machine (frequency scaling, a noisy neighbour)
    hit every library alike instead of whichever happened to run during the drift; the
    start of each round is rotated so that no callable always holds the first slot.
    """
    names = list(fns)
    numbers = {name: _calls_per_sample(fns[name], min_sample_s) for name in names}
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time_sample(fns[name], numbers[name]))
    return {name: Timing(tuple(s)) for name, s in samples.items()}


_VF_KEY = "\0bare f"  # cannot collide with a library name


def time_with_vector_field(
    fns: dict[str, Callable[[], object]],
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    t: torch.Tensor,
    y: torch.Tensor,
    repeats: int,
) -> tuple[dict[str, Timing], float]:
    """Time the solves and one bare f(t, y) call, all interleaved.

    Returns the solves' timings and t_f, the median seconds of one bare call: the unit the
    solvers' overhead is measured in. Interleaving it with the solves means t_f is taken
    under the same machine conditions as the walls it is compared with.
    """
    with torch.no_grad():
        timings = time_interleaved({**fns, _VF_KEY: lambda: f(t, y)}, repeats)
    t_f = timings.pop(_VF_KEY).median
    return timings, t_f


def overhead_share(nfe: int, t_f: float, wall: float) -> float:
    """Fraction of the wall time not spent inside the vector field: 1 - NFE * t_f / wall."""
    return 1.0 - nfe * t_f / wall


# --------------------------------------------------------------------------------------------
# Counting function evaluations of peers (which do not all report it)
# --------------------------------------------------------------------------------------------


class CountingField:
    """Wrap f(t, y) and count its calls; one batched call counts once, whatever the batch.

    Only used in separate, untimed runs: the extra Python frame would otherwise be billed
    to the solver under test.
    """

    def __init__(self, f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.f = f
        self.calls = 0

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.f(t, y)


def count_calls(
    run: Callable[[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], object],
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[int, object]:
    """Run `run(counted_f)` once and return (number of f calls, run's result)."""
    counted = CountingField(f)
    result = run(counted)
    return counted.calls, result


class CountingModule(nn.Module):
    """An nn.Module wrapper of f(t, y) that counts its calls and exposes f's parameters.

    Unlike :class:`CountingField` it is itself a module, so adjoint methods that look for
    ``parameters()`` (torchdiffeq's odeint_adjoint, neuralode's backsolve/checkpoint,
    torchdyn) see the wrapped field's parameters. ``forward`` accepts torchdyn's extra
    ``args`` keyword and names its time argument ``t``, which torchdyn checks for.
    """

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor, args: object = None) -> torch.Tensor:
        self.calls += 1
        return self.f(t, y)


# --------------------------------------------------------------------------------------------
# Memory of the current process (Linux /proc), for one-measurement-per-process benchmarks
# --------------------------------------------------------------------------------------------


# The measurement primitives live in the package (protocol P2 of `neuralode reproduce` uses
# them too); re-exported here for the benchmark scripts.
from neuralode.experiments.memory.measurement import (  # noqa: E402
    proc_status_kib as proc_status_kib,
)
from neuralode.experiments.memory.measurement import (  # noqa: E402
    release_free_heap as release_free_heap,
)
from neuralode.experiments.memory.measurement import (  # noqa: E402
    reset_peak_rss as reset_peak_rss,
)

# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "none (no commit yet)"
    # A dirty tree means the numbers belong to code that no commit describes.
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "src"))
    return commit + (" (+ uncommitted changes in src/)" if dirty else "")


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def hardware_info(packages: Sequence[str] = ()) -> dict[str, str]:
    """What a reader needs to judge or reproduce the numbers."""
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "neuralode commit": _git_commit(),
        # Other work on the machine shows up as noise in every number: say how much there was.
        "load average (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    info.update({name: _package_version(name) for name in packages})
    return info


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


@dataclass
class Table:
    """A Markdown table built row by row."""

    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        lines = [
            "| " + " | ".join(self.headers) + " |",
            "|" + "|".join("---" for _ in self.headers) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def info_table(info: dict[str, str]) -> str:
    table = Table(["", ""])
    for key, value in info.items():
        table.add(key, value)
    return table.render()


def fmt_ms(timing: Timing) -> str:
    """Median wall time in ms, with the interquartile range as the spread."""
    return f"{timing.median * 1e3:.3g} ({timing.iqr * 1e3:.2g})"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}×"


def fmt_pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def fmt_err(x: float) -> str:
    return f"{x:.1e}"


def publish(report: str, out: Path | None) -> None:
    """Print a Markdown report, and also write it to ``out`` (its folder made) if given."""
    print(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report + "\n")
