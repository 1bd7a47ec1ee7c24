"""Peak memory of one training step of an ODE block (protocol P2, docs/protocols.md).

One step = forward solve + backward of a scalar loss, for

* a conv ODE block (the ODE-Net of the paper, docs/protocols.md): batch 64, state 64×6×6,
  f = GN → ReLU → ConcatConv → GN → ReLU → ConcatConv → GN;
* an MLP neural ODE (bench_forward's MLPField): dim 64, hidden 256, batch 1024;

with neuralode's DirectAdjoint / BacksolveAdjoint / CheckpointAdjoint and torchdiffeq's
odeint (backprop) / odeint_adjoint, under rk4 with 4/16/64/256 steps and dopri5 at
rtol = atol = 1e-1 … 1e-5.

Every point runs in a FRESH process (this script, re-run with ``--point``): the child
imports, builds the model and the inputs, runs a tiny warm-up step (batch 2, a couple of
steps: lazy initialisation happens there), frees the warm-up's memory back to the kernel
(malloc_trim), reads VmRSS as the baseline, resets the peak-RSS mark VmHWM (write 5 to
/proc/self/clear_refs), runs the step, and reports VmHWM − baseline. The next point's
process is started while the current one measures (it only imports and builds, then waits),
so that interpreter start-up does not dominate the run time.

Usage: python benchmarks/bench_memory.py [--quick] [--out DIR] [--max-mb MB] [--exact-malloc]
       [--replot RESULTS.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from _harness import (
    REPO_ROOT,
    CountingModule,
    Table,
    hardware_info,
    info_table,
    proc_status_kib,
    release_free_heap,
    reset_peak_rss,
)
from torch import Tensor, nn

METHODS = ("Direct", "Backsolve", "Checkpoint", "tdq odeint", "tdq odeint_adjoint")
METHOD_LABELS = {
    "Direct": "neuralode Direct (backprop)",
    "Backsolve": "neuralode Backsolve (adjoint)",
    "Checkpoint": "neuralode Checkpoint",
    "tdq odeint": "torchdiffeq odeint (backprop)",
    "tdq odeint_adjoint": "torchdiffeq odeint_adjoint",
}
PROBLEMS = ("conv", "mlp")
PROBLEM_LABELS = {
    "conv": "conv ODE block, batch 64, state 64×6×6",
    "mlp": "MLP ODE, dim 64, hidden 256, batch 1024",
}
RK4_STEPS_FULL = (4, 16, 64, 256)
RK4_STEPS_QUICK = (4, 16, 64)
DOPRI_TOLS_FULL = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
DOPRI_TOLS_QUICK = (1e-1, 1e-2, 1e-3)
MIB = 2.0**20
EXACT_MMAP_THRESHOLD = 65536


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


class ConcatConv2d(nn.Module):
    """Conv2d over [t, x]: a constant channel equal to t is prepended to the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels + 1, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tt = torch.ones_like(x[:, :1]) * t
        return self.conv(torch.cat([tt, x], dim=1))


class ConvODEFunc(nn.Module):
    """The ODE-Net dynamics: GN → ReLU → ConcatConv → GN → ReLU → ConcatConv → GN."""

    def __init__(self, channels: int = 64):
        super().__init__()
        groups = min(32, channels)
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = ConcatConv2d(channels)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = ConcatConv2d(channels)
        self.norm3 = nn.GroupNorm(groups, channels)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        out = torch.relu(self.norm1(x))
        out = self.conv1(t, out)
        out = torch.relu(self.norm2(out))
        out = self.conv2(t, out)
        return self.norm3(out)


def build_problem(problem: str, batch: int | None = None) -> tuple[CountingModule, Tensor]:
    """The counted vector field and y0 (requires grad, as the output of a downsampler)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if problem == "conv":
        f: nn.Module = ConvODEFunc(64)
        y0 = torch.randn(batch or 64, 64, 6, 6, generator=gen)
    elif problem == "mlp":
        from bench_forward import MLPField

        f = MLPField(64, 256)
        y0 = torch.randn(batch or 1024, 64, generator=gen)
    else:
        raise ValueError(problem)
    return CountingModule(f), y0.requires_grad_(True)


# --------------------------------------------------------------------------------------------
# One training step per method
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    problem: str
    method: str
    solver: str  # "rk4" or "dopri5"
    param: float  # rk4: number of steps; dopri5: rtol = atol

    @property
    def config(self) -> str:
        return f"rk4 n={int(self.param)}" if self.solver == "rk4" else f"dopri5 tol={self.param:g}"

    def argv(self) -> list[str]:
        return [self.problem, self.method, self.solver, repr(self.param)]


Step = Callable[[], dict[str, int]]


def make_step(point: Point, f: CountingModule, y0: Tensor, ts: Tensor) -> Step:
    """A zero-argument training step: solve, loss = mean(y(1)²), backward. Returns counts."""
    solve_ys = _solver_call(point, f)

    def step() -> dict[str, int]:
        for p in f.parameters():
            p.grad = None
        y0.grad = None
        start = f.calls
        ys, accepted = solve_ys(y0, ts)
        nfe_f = f.calls - start
        loss = ys[-1].pow(2).mean()
        loss.backward()
        return {"nfe_f": nfe_f, "nfe_b": f.calls - start - nfe_f, "accepted": accepted}

    return step


def _solver_call(point: Point, f: CountingModule) -> Callable[[Tensor, Tensor], tuple[Tensor, int]]:
    rk4, param = point.solver == "rk4", point.param
    if point.method.startswith("tdq"):
        from torchdiffeq import odeint, odeint_adjoint

        odeint_fn = odeint_adjoint if point.method == "tdq odeint_adjoint" else odeint
        if rk4:
            kwargs: dict[str, object] = {"method": "rk4", "options": {"step_size": 1.0 / param}}
        else:
            kwargs = {"method": "dopri5", "rtol": param, "atol": param}
        return lambda y0, ts: (odeint_fn(f, y0, ts, **kwargs), -1)

    import neuralode as no

    solver = no.RK4() if rk4 else no.Dopri5()
    controller = (
        no.ConstantStepSize(1.0 / param) if rk4 else no.PIDController(rtol=param, atol=param)
    )
    adjoint = {
        "Direct": no.DirectAdjoint(),
        "Backsolve": no.BacksolveAdjoint(),
        "Checkpoint": no.CheckpointAdjoint(),
    }[point.method]

    def call(y0: Tensor, ts: Tensor) -> tuple[Tensor, int]:
        sol = no.solve(
            f, y0, ts, solver=solver, controller=controller, adjoint=adjoint, max_steps=100_000
        )
        return sol.ys, sol.stats.accepted

    return call


# --------------------------------------------------------------------------------------------
# Child: one point, one fresh process
# --------------------------------------------------------------------------------------------


def run_child(point: Point, wait: bool, time_budget_s: float) -> None:
    ts = torch.tensor([0.0, 1.0])
    # Warm-up at batch 2 and a cheap configuration of the same method: imports inside the
    # libraries, kernel selection, autograd engine start-up. Its memory is freed below.
    cheap = Point(point.problem, point.method, point.solver, 2 if point.solver == "rk4" else 0.1)
    f_small, y_small = build_problem(point.problem, batch=2)
    make_step(cheap, f_small, y_small, ts)()
    del f_small, y_small

    f, y0 = build_problem(point.problem)
    step = make_step(point, f, y0, ts)
    if wait and sys.stdin.readline().strip() != "go":
        return  # the parent skipped this point

    gc.collect()
    release_free_heap()
    baseline_kib = proc_status_kib("VmRSS")
    reset_ok = reset_peak_rss()
    start = time.perf_counter()
    counts = step()
    walls = [time.perf_counter() - start]
    peak_kib = proc_status_kib("VmHWM")
    # More samples of the wall time while they are cheap; memory is already measured.
    while len(walls) < 5 and sum(walls) < time_budget_s:
        start = time.perf_counter()
        step()
        walls.append(time.perf_counter() - start)
    result = {
        **asdict(point),
        **counts,
        "peak_mb": (peak_kib - baseline_kib) / 1024,
        "baseline_mb": baseline_kib / 1024,
        "hwm_reset": reset_ok,
        "wall_s": statistics.median(walls),
        "wall_samples": len(walls),
        "state_mb": y0.numel() * y0.element_size() / MIB,
    }
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# Parent: spawn the children, one point each
# --------------------------------------------------------------------------------------------


def build_points(quick: bool) -> list[Point]:
    problems = ("conv",) if quick else PROBLEMS
    steps = RK4_STEPS_QUICK if quick else RK4_STEPS_FULL
    tols = DOPRI_TOLS_QUICK if quick else DOPRI_TOLS_FULL
    configs = [("rk4", float(n)) for n in steps] + [("dopri5", tol) for tol in tols]
    points = []
    for problem in problems:
        for k, (solver, param) in enumerate(configs):
            # Rotate the method order so that no method always runs right after start-up of
            # the next process or right after the heaviest point.
            order = METHODS[k % len(METHODS) :] + METHODS[: k % len(METHODS)]
            points += [Point(problem, m, solver, param) for m in order]
    return points


def _spawn(point: Point, quick: bool, exact_malloc: bool) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--point", *point.argv(), "--wait"]
    if quick:
        cmd.append("--quick")
    env = dict(os.environ)
    if exact_malloc:
        # A fixed mmap threshold turns off glibc's dynamic one: every tensor above 64 KiB is
        # mmap-ed and unmapped on free, so RSS follows the live tensors without heap slack.
        env["MALLOC_MMAP_THRESHOLD_"] = str(EXACT_MMAP_THRESHOLD)
    return subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )


def _predicted_mb(point: Point, results: list[dict]) -> float | None:
    """Linear extrapolation in NFE from the same method's rk4 points measured so far."""
    if point.solver != "rk4":
        return None
    same = [
        r
        for r in results
        if r.get("peak_mb") is not None
        and (r["problem"], r["method"], r["solver"]) == (point.problem, point.method, "rk4")
    ]
    if not same:
        return None
    rate = max(r["peak_mb"] / max(r["param"], 1) for r in same)
    return rate * point.param


def _finish(child: subprocess.Popen[str], point: Point, results: list[dict], max_mb: float) -> dict:
    """Tell a started child to measure (or to quit, if the point would not fit in memory)."""
    predicted = _predicted_mb(point, results)
    if predicted is not None and predicted > max_mb:
        child.communicate("skip\n")
        return {**asdict(point), "note": f"skipped: needs ~{predicted:.0f} MB > --max-mb"}
    try:
        out, err = child.communicate("go\n", timeout=900)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate()
        err += "\ntimeout after 900 s"
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        reason = (err.strip().splitlines() or [f"exit {child.returncode}"])[-1]
        return {**asdict(point), "note": f"failed: {reason}"[:140]}


def run_points(
    points: Sequence[Point], quick: bool, max_mb: float, exact_malloc: bool, jobs: int
) -> list[dict]:
    """One fresh child per point.

    jobs = 1: strictly one measuring child at a time, the next one already importing.
    jobs > 1: that many children at once (each measures only its own RSS, so the memory
    numbers are unaffected; the wall times become rougher).
    """
    spawn = functools.partial(_spawn, quick=quick, exact_malloc=exact_malloc)
    results: list[dict | None] = [None] * len(points)
    done: list[dict] = []  # for the memory guard, in completion order
    lock = threading.Lock()

    def record(i: int, child: subprocess.Popen[str]) -> None:
        point = points[i]
        result = _finish(child, point, done, max_mb)
        with lock:
            results[i] = result
            done.append(result)
        summary = result.get("note") or (
            f"{result['peak_mb']:.1f} MB, NFE {result['nfe_f']}/{result['nfe_b']}, "
            f"{result['wall_s']:.2f} s"
        )
        label = f"[{i + 1}/{len(points)}] {point.problem} {point.method} {point.config}"
        print(f"{label}: {summary}", file=sys.stderr)

    if jobs <= 1:
        pending = spawn(points[0])
        for i in range(len(points)):
            child = pending
            pending = spawn(points[i + 1]) if i + 1 < len(points) else None
            record(i, child)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(lambda i: record(i, spawn(points[i])), range(len(points))))
    return [r for r in results if r is not None]


# --------------------------------------------------------------------------------------------
# Analysis and report
# --------------------------------------------------------------------------------------------


def _ok(results: list[dict], **match: object) -> list[dict]:
    return [
        r
        for r in results
        if r.get("peak_mb") is not None and all(r[k] == v for k, v in match.items())
    ]


def _fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares line y = a + b x: (a, b, R²)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return my, 0.0, 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return a, b, 1 - ss_res / ss_tot if ss_tot else 1.0


def _cell(r: dict | None, what: str) -> str:
    if r is None:
        return "–"
    if r.get("peak_mb") is None:
        return r.get("note", "n/a")
    if what == "mem":
        return f"{r['peak_mb']:.1f}"
    if what == "nfe":
        return f"{r['nfe_f']} / {r['nfe_b']}"
    return f"{r['wall_s']:.3g}" + ("" if r["wall_samples"] > 1 else "¹")


def problem_tables(results: list[dict], problem: str) -> str:
    rows = [r for r in results if r["problem"] == problem]
    configs = list(dict.fromkeys(Point(**_point_fields(r)).config for r in rows))
    by_key = {(Point(**_point_fields(r)).config, r["method"]): r for r in rows}
    parts = []
    for what, title in (
        ("mem", "Peak memory growth of one training step, MB (VmHWM − baseline RSS)"),
        ("nfe", "NFE forward / backward (f calls during the solve / during backward)"),
        ("wall", "Wall time of forward + backward, s (median of up to 5 steps)"),
    ):
        table = Table(["solver", *METHODS])
        for config in configs:
            table.add(config, *(_cell(by_key.get((config, m)), what) for m in METHODS))
        parts += [f"**{title}**", table.render()]
    return "\n\n".join(parts)


def _point_fields(r: dict) -> dict:
    return {k: r[k] for k in ("problem", "method", "solver", "param")}


def _family_fit(rs: Sequence[dict], x: str) -> tuple[float, float, int]:
    """Common slope of peak MB in ``x`` with a separate intercept per solver: (slope, R², n).

    rk4 and dopri5 hold different numbers of stages per step, so each gets its own
    intercept; the slope is the memory that each extra unit of ``x`` adds. R² is over the
    variance within the solver families.
    """
    sxy = sxx = syy = 0.0
    groups = [[r for r in rs if r["solver"] == s] for s in ("rk4", "dopri5")]
    for group in groups:
        if len(group) < 2:
            continue
        mx = statistics.fmean(r[x] for r in group)
        my = statistics.fmean(r["peak_mb"] for r in group)
        sxy += sum((r[x] - mx) * (r["peak_mb"] - my) for r in group)
        sxx += sum((r[x] - mx) ** 2 for r in group)
        syy += sum((r["peak_mb"] - my) ** 2 for r in group)
    if sxx == 0 or syy == 0:
        return 0.0, 0.0, len(rs)
    slope = sxy / sxx
    return slope, 1 - (syy - slope * sxy) / syy, len(rs)


def _flatness(rs: Sequence[dict]) -> tuple[float, float, float, float]:
    """(median, min, max, max |deviation| / median) of the peaks."""
    mems = [r["peak_mb"] for r in rs]
    mid = statistics.median(mems)
    return mid, min(mems), max(mems), max(abs(m - mid) for m in mems) / mid


def verdicts(results: list[dict], problem: str) -> list[str]:
    lines = []
    state_mb = next((r["state_mb"] for r in _ok(results, problem=problem)), None)

    for method in ("Backsolve", "tdq odeint_adjoint"):
        rs = _ok(results, problem=problem, method=method)
        if len(rs) < 2:
            continue
        parts = []
        worst = 0.0
        for solver in ("rk4", "dopri5"):
            group = [r for r in rs if r["solver"] == solver]
            if len(group) < 2:
                continue
            mid, lo, hi, dev = _flatness(group)
            worst = max(worst, dev)
            nfes = [r["nfe_f"] + r["nfe_b"] for r in group]
            parts.append(
                f"{solver}: {lo:.1f}–{hi:.1f} MB (±{100 * dev:.0f}% around {mid:.1f}) over "
                f"NFE-F+B {min(nfes)}–{max(nfes)}"
            )
        mid, lo, hi, dev = _flatness(rs)
        verdict = "MET" if worst <= 0.10 else "NOT MET"
        lines.append(
            f"- {METHOD_LABELS[method]}: flat within ±10% as NFE grows → **{verdict}** "
            f"(per solver): {'; '.join(parts)}. All points pooled: {lo:.1f}–{hi:.1f} MB, "
            f"±{100 * dev:.0f}% around {mid:.1f} MB (dopri5 holds 7 stages of the augmented "
            "state, rk4 4: a constant offset, not growth)."
        )

    direct_per_nfe = None
    for method in ("Direct", "tdq odeint"):
        rs = _ok(results, problem=problem, method=method)
        if len(rs) < 2:
            continue
        a, b, r2 = _fit([r["nfe_f"] for r in rs], [r["peak_mb"] for r in rs])
        direct_per_nfe = direct_per_nfe or b
        verdict = "MET" if b > 0 and r2 > 0.9 else "NOT MET"
        lines.append(
            f"- {METHOD_LABELS[method]}: grows with NFE → **{verdict}**: peak ≈ {a:.1f} MB + "
            f"{b:.2f} MB × NFE-F (R² = {r2:.3f}, all points)."
        )

    rs = [r for r in _ok(results, problem=problem, method="Checkpoint") if r["accepted"] > 0]
    if len(rs) >= 2 and state_mb:
        slope, r2, _ = _family_fit(rs, "accepted")
        ratio = slope / state_mb
        verdict = "MET" if r2 > 0.9 and 0 < ratio < 3 else "NOT MET"
        versus = (
            f"; backprop adds {4 * direct_per_nfe:.1f} MB per rk4 step (4 evaluations)"
            if direct_per_nfe
            else ""
        )
        lines.append(
            f"- {METHOD_LABELS['Checkpoint']}: grows with accepted steps × state only → "
            f"**{verdict}**: +{slope:.3f} MB per accepted step (R² = {r2:.3f}, one intercept "
            f"per solver) = {ratio:.2f}× the state ({state_mb:.3f} MB){versus}."
        )
    return lines


def plot(results: list[dict], problems: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    width = max(9.0, 6.4 * len(problems))
    fig, axes = plt.subplots(1, len(problems), figsize=(width, 5.6), squeeze=False)
    colors = dict(zip(METHODS, plt.get_cmap("tab10").colors, strict=False))
    for ax, problem in zip(axes[0], problems, strict=True):
        for method in METHODS:
            for solver, marker, style in (("rk4", "o", "-"), ("dopri5", "^", "--")):
                rs = sorted(
                    _ok(results, problem=problem, method=method, solver=solver),
                    key=lambda r: r["nfe_f"],
                )
                if rs:
                    ax.plot(
                        [r["nfe_f"] for r in rs],
                        [r["peak_mb"] for r in rs],
                        marker=marker,
                        linestyle=style,
                        color=colors[method],
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(LogLocator(base=2.0))
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("forward function evaluations (NFE-F, log)")
        ax.set_ylabel("peak memory of one training step, MB (log)")
        ax.set_title(PROBLEM_LABELS[problem], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=colors[m], lw=2, label=METHOD_LABELS[m]) for m in METHODS]
    handles += [
        Line2D([], [], color="gray", marker="o", ls="-", label="rk4, fixed steps"),
        Line2D([], [], color="gray", marker="^", ls="--", label="dopri5, tolerance sweep"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Peak memory of one forward + backward step vs NFE (one fresh process per point)")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


NOTES = """\
### Notes

1. Peak = VmHWM − VmRSS at the start of the step, in a fresh process per point, after a
   warm-up step at batch 2 whose memory is handed back (malloc_trim) and after resetting
   VmHWM (clear_refs). The baseline (interpreter, torch, the model and the inputs) is not
   included; the step's parameter gradients are. It is resident memory, so it includes
   allocator slack, not only live tensors.
2. NFE-F counts f calls during the solve (neuralode's initial f(t0, y0) included); NFE-B
   counts f calls during backward (0 for backprop through the solver; for the adjoints, each
   augmented evaluation calls f once under autograd). torchdiffeq's rk4 is its 3/8-rule
   variant, 4 evaluations per step like neuralode's RK4.
3. Loss = mean(y(1)²); y0 requires grad. One torch thread.
4. Wall times come from the same fresh process: the step that was measured for memory plus
   further steps while they fit a small time budget (¹ = a single sample). The next point's
   process starts (imports, builds) while this one runs (with --jobs 2, two points
   even measure at once), and the machine is shared, so the wall times
   are indicative only; bench_gradients.py times with interleaving.
5. --exact-malloc runs the children with a fixed glibc mmap threshold (64 KiB): every
   tensor is then mmap-ed and returned on free, and the peak follows the live tensors; with
   the default (dynamic) threshold, freed tensor-sized blocks stay in the heap and can add
   slack that grows with the number of retained tensors (see the Checkpoint slope)."""


def report(
    results: list[dict],
    problems: Sequence[str],
    quick: bool,
    exact_malloc: bool,
    jobs: int | None,
    png: Path,
) -> str:
    info = hardware_info(["torchdiffeq"])
    info["mode"] = "--quick" if quick else "full"
    info["children measuring at once"] = str(jobs) if jobs else "n/a (--replot)"
    info["malloc"] = (
        f"MALLOC_MMAP_THRESHOLD_={EXACT_MMAP_THRESHOLD} (--exact-malloc: live tensors)"
        if exact_malloc
        else "glibc default (what a user gets)"
    )
    hwm = {r.get("hwm_reset") for r in results if r.get("peak_mb") is not None}
    info["VmHWM reset via clear_refs"] = "yes" if hwm == {True} else f"NOT always ({hwm})"
    baselines = [r["baseline_mb"] for r in results if r.get("peak_mb") is not None]
    if baselines:
        info["baseline RSS (median)"] = f"{statistics.median(baselines):.0f} MB"
    parts = ["# Memory benchmark: one training step of an ODE block", info_table(info)]
    for problem in problems:
        parts += [f"## {PROBLEM_LABELS[problem]}", problem_tables(results, problem)]
        parts += ["### Targets", "\n".join(verdicts(results, problem)) or "(too few points)"]
    parts += [f"![peak memory vs NFE]({png.name})", NOTES]
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="conv only, rk4 ≤ 64, dopri5 ≥ 1e-3")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--max-mb", type=float, default=12_000, help="skip points predicted to need more"
    )
    parser.add_argument("--jobs", type=int, help="children measuring at once (default 1)")
    parser.add_argument(
        "--exact-malloc",
        action="store_true",
        help="fixed glibc mmap threshold in the children: RSS follows live tensors",
    )
    parser.add_argument("--point", nargs=4, metavar=("PROBLEM", "METHOD", "SOLVER", "PARAM"))
    parser.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--replot", type=Path, metavar="JSON", help="rebuild report and plot from saved results"
    )
    args = parser.parse_args()

    if args.point:
        problem, method, solver, param = args.point
        run_child(
            Point(problem, method, solver, float(param)), args.wait, 0.0 if args.quick else 3.0
        )
        return

    started = time.perf_counter()
    jobs = None
    if args.replot:
        results = json.loads(args.replot.read_text())
    else:
        jobs = args.jobs or 1
        results = run_points(
            build_points(args.quick), args.quick, args.max_mb, args.exact_malloc, jobs
        )
    problems = list(dict.fromkeys(r["problem"] for r in results))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"memory_{_dt.date.today().isoformat()}" + ("_quick" if args.quick else "")
    stem += "_exactmalloc" if args.exact_malloc else ""
    png = args.out / f"{stem}.png"
    plot(results, problems, png)
    text = report(results, problems, args.quick, args.exact_malloc, jobs, png)
    text += f"\n\nTotal run time {time.perf_counter() - started:.0f} s.\n"
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    print(f"wrote {args.out / stem}.md/.png/.json", file=sys.stderr)


if __name__ == "__main__":
    main()
