"""Gradient work-precision: neuralode's gradient methods against torchdiffeq's and torchdyn's.

The MLP neural ODE of bench_forward.py (MLPField, gain 3) over t ∈ [0, 1], loss = sum of
squares of y(1). For each (dim, hidden, batch) and rtol = atol ∈ {1e-3, 1e-5, 1e-7}, in
float32 with dopri5:

* neuralode DirectAdjoint, BacksolveAdjoint, BacksolveAdjoint(seminorm=True),
  CheckpointAdjoint;
* torchdiffeq odeint_adjoint, and with adjoint_options={"norm": "seminorm"};
* torchdyn NeuralODE(sensitivity="adjoint") (its backward always uses a seminorm);
* torchdiffeq odeint (backprop through the solver), for context.

Gradient error = ‖g − g_ref‖₂ / ‖g_ref‖₂ over the concatenation of every parameter's
gradient and y0's, against a float64 reference (neuralode Dopri8, rtol = atol = 1e-12,
CheckpointAdjoint: the exact gradient of the discrete solution, as DirectAdjoint's, in
memory ∝ steps). Wall time = forward + backward, median over interleaved repeats, one torch
thread. NFE-F / NFE-B = f calls during the solve / during backward, from a separate counted
run (the one the error is taken from).

Usage: python benchmarks/bench_gradients.py [--quick] [--repeats N] [--out DIR]
       [--replot RESULTS.json]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from _harness import (
    REPO_ROOT,
    CountingModule,
    Table,
    Timing,
    fmt_err,
    fmt_ms,
    fmt_ratio,
    hardware_info,
    info_table,
    time_interleaved,
)
from bench_forward import MLPField
from torch import Tensor, nn

OURS = ("Direct", "Backsolve", "Backsolve seminorm", "Checkpoint")
PEER_ADJOINTS = ("tdq adjoint", "tdq adjoint seminorm", "torchdyn adjoint")
CONTEXT = ("tdq odeint (backprop)",)
METHODS = OURS + PEER_ADJOINTS + CONTEXT
LABELS = {
    "Direct": "neuralode Direct",
    "Backsolve": "neuralode Backsolve",
    "Backsolve seminorm": "neuralode Backsolve(seminorm)",
    "Checkpoint": "neuralode Checkpoint",
    "tdq adjoint": "torchdiffeq odeint_adjoint",
    "tdq adjoint seminorm": "torchdiffeq odeint_adjoint(seminorm)",
    "torchdyn adjoint": "torchdyn NeuralODE adjoint",
    "tdq odeint (backprop)": "torchdiffeq odeint (backprop)",
}
TOLS = (1e-3, 1e-5, 1e-7)
FULL_GRID = [(2, 64, 128), (16, 64, 128), (64, 256, 1024)]
QUICK_GRID = [(2, 64, 128), (16, 64, 128)]
REF_TOL = 1e-12


# --------------------------------------------------------------------------------------------
# Problem and gradient runs
# --------------------------------------------------------------------------------------------


@dataclass
class Config:
    dim: int
    hidden: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.dim}/{self.hidden}/{self.batch}"

    def build(self, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Tensor]:
        f = MLPField(self.dim, self.hidden).to(dtype)
        y0 = torch.randn(self.batch, self.dim, generator=torch.Generator().manual_seed(1))
        return f, y0.to(dtype).requires_grad_(True)


class TimeArgs(nn.Module):
    """torchdyn calls its field as vf(t, x, args=...) and looks for an argument named t."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, t: Tensor, x: Tensor, args: object = None) -> Tensor:
        return self.f(t, x)


# A solve: (field module, y0, ts) -> y at ts.
Solve = Callable[[nn.Module, Tensor, Tensor], Tensor]


def make_solve(method: str, tol: float) -> Solve:
    """The forward call of one method at one tolerance; the field is bound at call time."""
    if method in OURS:
        import neuralode as no

        adjoint = {
            "Direct": no.DirectAdjoint(),
            "Backsolve": no.BacksolveAdjoint(),
            "Backsolve seminorm": no.BacksolveAdjoint(seminorm=True),
            "Checkpoint": no.CheckpointAdjoint(),
        }[method]
        solver, controller = no.Dopri5(), no.PIDController(rtol=tol, atol=tol)
        return lambda f, y0, ts: (
            no.solve(f, y0, ts, solver=solver, controller=controller, adjoint=adjoint).ys
        )
    if method.startswith("tdq"):
        from torchdiffeq import odeint, odeint_adjoint

        kwargs = {"rtol": tol, "atol": tol, "method": "dopri5"}
        if method == "tdq odeint (backprop)":
            return lambda f, y0, ts: odeint(f, y0, ts, **kwargs)
        if method == "tdq adjoint seminorm":
            kwargs["adjoint_options"] = {"norm": "seminorm"}
        return lambda f, y0, ts: odeint_adjoint(f, y0, ts, **kwargs)
    if method == "torchdyn adjoint":
        return _torchdyn_solve(tol)
    raise ValueError(method)


def _torchdyn_solve(tol: float) -> Solve:
    from torchdyn.core import NeuralODE

    cache: dict[int, nn.Module] = {}  # one NeuralODE per field, built once as a user would

    def run(f: nn.Module, y0: Tensor, ts: Tensor) -> Tensor:
        node = cache.get(id(f))
        if node is None:
            vf = f if isinstance(f, CountingModule) else TimeArgs(f)
            node = cache[id(f)] = NeuralODE(
                vf,
                sensitivity="adjoint",
                solver="dopri5",
                atol=tol,
                rtol=tol,
                atol_adjoint=tol,
                rtol_adjoint=tol,
                return_t_eval=False,
            )
        return node(y0, ts)

    return run


def step(solve: Solve, f: nn.Module, y0: Tensor, ts: Tensor) -> None:
    """One forward + backward of loss = sum(y(1)²), gradients left in .grad."""
    for p in f.parameters():
        p.grad = None
    y0.grad = None
    ys = solve(f, y0, ts)
    ys[-1].pow(2).sum().backward()


def flat_grad(f: nn.Module, y0: Tensor) -> Tensor:
    parts = [y0.grad] + [p.grad for p in f.parameters()]
    return torch.cat([g.reshape(-1).double() for g in parts if g is not None])


def counted_grad(solve: Solve, f: nn.Module, y0: Tensor, ts: Tensor) -> tuple[Tensor, int, int]:
    """Gradient vector, NFE-F and NFE-B of one counted run."""
    counted = CountingModule(f)
    for p in f.parameters():
        p.grad = None
    y0.grad = None
    ys = solve(counted, y0, ts)
    nfe_f = counted.calls
    ys[-1].pow(2).sum().backward()
    return flat_grad(f, y0), nfe_f, counted.calls - nfe_f


def reference(config: Config, tol: float = REF_TOL) -> Tensor:
    import neuralode as no

    f, y0 = config.build(torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    solver, controller = no.Dopri8(), no.PIDController(rtol=tol, atol=tol)
    ys = no.solve(f, y0, ts, solver=solver, controller=controller, adjoint=no.CheckpointAdjoint())
    ys.ys[-1].pow(2).sum().backward()
    return flat_grad(f, y0)


def reference_checks(config: Config, ref: Tensor, with_direct: bool) -> dict[str, float]:
    """How far the reference can be trusted: convergence in tol, and Direct == Checkpoint."""
    import neuralode as no

    out = {"ref vs 1e-10": rel_err(reference(config, 1e-10), ref)}
    if with_direct:
        f, y0 = config.build(torch.float64)
        ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
        ctrl = no.PIDController(rtol=REF_TOL, atol=REF_TOL)
        no.solve(f, y0, ts, solver=no.Dopri8(), controller=ctrl).ys[-1].pow(2).sum().backward()
        out["Direct vs Checkpoint"] = rel_err(flat_grad(f, y0), ref)
    return out


def rel_err(g: Tensor, ref: Tensor) -> float:
    return float(torch.linalg.vector_norm(g - ref) / torch.linalg.vector_norm(ref))


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    config: str
    method: str
    tol: float
    timing: Timing | None = None
    err: float | None = None
    nfe_f: int | None = None
    nfe_b: int | None = None
    note: str = ""

    @property
    def wall(self) -> float | None:
        return self.timing.median if self.timing else None


@dataclass
class ConfigResult:
    config: Config
    rows: list[Row] = field(default_factory=list)
    checks: dict[str, float] = field(default_factory=dict)


def measure_config(config: Config, repeats: int, log: Callable[[str], None]) -> ConfigResult:
    result = ConfigResult(config)
    start = time.perf_counter()
    ref = reference(config)
    result.checks = reference_checks(config, ref, with_direct=config.batch * config.hidden < 1e5)
    log(f"{config.label}: reference in {time.perf_counter() - start:.1f} s, {result.checks}")
    ts = torch.tensor([0.0, 1.0])
    for tol in TOLS:
        f, y0 = config.build()
        runners: dict[str, Callable[[], None]] = {}
        for method in METHODS:
            row = Row(config.label, method, tol)
            result.rows.append(row)
            try:
                solve = make_solve(method, tol)
                g, row.nfe_f, row.nfe_b = counted_grad(solve, f, y0, ts)
                row.err = rel_err(g, ref)
                if not math.isfinite(row.err):
                    raise RuntimeError("non-finite gradient")
            except ModuleNotFoundError as err:
                row.note = f"n/a: {err.name} not installed (install_peers.sh)"
                continue
            except Exception as err:  # a peer failing is a result, not a crash of the suite
                row.note = f"failed: {type(err).__name__}: {err}"[:120]
                continue
            runners[method] = functools.partial(step, solve, f, y0, ts)
        # Fewer rounds where one call takes seconds: the spread is small relative to the wall.
        slow = max((r.nfe_f or 0) + (r.nfe_b or 0) for r in result.rows if r.tol == tol and r.nfe_f)
        rounds = repeats if slow * config.batch * config.hidden < 5e7 else max(3, repeats - 2)
        t0 = time.perf_counter()
        timings = time_interleaved(runners, rounds)
        for row in result.rows:
            if row.tol == tol and row.method in timings:
                row.timing = timings[row.method]
        log(
            f"{config.label} tol={tol:g}: timed {rounds} rounds in {time.perf_counter() - t0:.0f} s"
        )
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fastest_peer_at_least_as_accurate(rows: Sequence[Row], ours: Row) -> Row | None:
    """The fastest peer adjoint run (any tolerance) whose gradient error is ≤ ours."""
    if ours.err is None:
        return None
    candidates = [
        r
        for r in rows
        if r.method in PEER_ADJOINTS and r.wall is not None and r.err is not None
        if r.err <= ours.err
    ]
    return min(candidates, key=lambda r: r.wall, default=None)


def _ratio_cell(rows: Sequence[Row], row: Row) -> str:
    if row.method not in OURS or row.wall is None:
        return ""
    peer = fastest_peer_at_least_as_accurate(rows, row)
    if peer is None:
        return "no peer adjoint this accurate"
    return f"{fmt_ratio(row.wall / peer.wall)} vs {LABELS[peer.method]} @ {peer.tol:g}"


def config_table(result: ConfigResult) -> str:
    table = Table(
        [
            "tol",
            "method",
            "wall ms (IQR)",
            "grad rel error",
            "NFE-F",
            "NFE-B",
            "wall / fastest peer adjoint with error ≤ this",
        ]
    )
    for row in result.rows:
        if row.timing is None:
            table.add(f"{row.tol:g}", LABELS[row.method], row.note or "n/a", "", "", "", "")
            continue
        table.add(
            f"{row.tol:g}",
            LABELS[row.method],
            fmt_ms(row.timing),
            fmt_err(row.err),
            row.nfe_f,
            row.nfe_b,
            _ratio_cell(result.rows, row),
        )
    return table.render()


def summary_table(results: Sequence[ConfigResult]) -> str:
    """Per method: median over configs and tolerances of error/tol, and of the ratio."""
    table = Table(
        [
            "method",
            "median grad error / tol",
            "max grad error / tol",
            "median NFE-B / NFE-F",
            "median wall ratio vs fastest peer adjoint at ≤ error",
        ]
    )
    for method in METHODS:
        rows = [r for res in results for r in res.rows if r.method == method and r.err is not None]
        if not rows:
            table.add(LABELS[method], "n/a", "", "", "")
            continue
        over_tol = [r.err / r.tol for r in rows]
        nfe_ratio = [r.nfe_b / r.nfe_f for r in rows if r.nfe_f and r.nfe_b]
        ratios = []
        for res in results:
            for r in res.rows:
                if r.method == method and method in OURS and r.wall is not None:
                    peer = fastest_peer_at_least_as_accurate(res.rows, r)
                    if peer is not None:
                        ratios.append(r.wall / peer.wall)
        table.add(
            LABELS[method],
            f"{statistics.median(over_tol):.2g}",
            f"{max(over_tol):.2g}",
            f"{statistics.median(nfe_ratio):.2f}" if nfe_ratio else "–",
            f"{fmt_ratio(statistics.median(ratios))} (n={len(ratios)})" if ratios else "–",
        )
    return table.render()


def _minor_label(v: float, _: object) -> str:
    """Label only the 2× and 5× minor ticks of a log axis, in plain numbers."""
    mantissa = v / 10 ** math.floor(math.log10(v))
    return f"{v:g}" if round(mantissa) in (2, 5) else ""


def plot(results: Sequence[ConfigResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.8), squeeze=False)
    colors = dict(zip(METHODS, plt.get_cmap("tab10").colors, strict=False))
    for ax, res in zip(axes[0], results, strict=True):
        for method in METHODS:
            rows = [r for r in res.rows if r.method == method and r.wall and r.err]
            if not rows:
                continue
            ax.plot(
                [r.err for r in rows],
                [r.wall * 1e3 for r in rows],
                marker="o" if method in OURS else "s",
                linestyle="-" if method in OURS else "--",
                color=colors[method],
                label=LABELS[method],
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
        ax.set_xlabel("gradient relative error (log)")
        ax.set_ylabel("forward + backward wall, ms (log)")
        ax.set_title(f"dim/hidden/batch {res.config.label}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("Gradient work-precision, MLP neural ODE, float32 dopri5, tol 1e-3/1e-5/1e-7")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


NOTES = """\
### Notes

1. Every method gets the same float32 model, y0 and rtol = atol; the backward solves use
   the forward tolerance (torchdyn: atol_adjoint = rtol_adjoint = tol, its defaults are
   1e-4). torchdyn's backward always uses a seminorm (error control on [x, λ] only), so its
   row is comparable to the seminorm rows.
2. The ratio column compares a neuralode row with the fastest peer *adjoint* row of the same
   configuration, at any tolerance, whose gradient error is at most the row's error. Below
   1× means neuralode is faster at equal or better accuracy. The backprop rows (Direct,
   torchdiffeq odeint) are exact gradients of their discrete forward solutions, so their
   error only reflects the forward solve's accuracy; the adjoints add the error of the
   backward solve (and of reconstructing y(t) backwards).
3. float32 bounds every error from below by rounding (about 1e-6 relative here), so the
   1e-7 rows mostly show where each method saturates.
4. NFE-B counts f calls during backward: one per augmented evaluation for the adjoints, one
   per replayed stage for Checkpoint, 0 for backprop (autograd replays the stored graph).
5. Reference checks: "ref vs 1e-10" is the relative difference between the 1e-12 reference
   and the same at 1e-10 (a bound on the reference's own error); "Direct vs Checkpoint" is
   the difference between DirectAdjoint and CheckpointAdjoint at the reference settings
   (both exact for the same discrete solution; only computed for the smaller configs)."""


def render(results: Sequence[ConfigResult], info: dict[str, str], png: Path) -> str:
    parts = ["# Gradient benchmark: work-precision of the gradient methods", info_table(info)]
    for res in results:
        checks = ", ".join(f"{k}: {v:.1e}" for k, v in res.checks.items())
        parts += [
            f"## dim/hidden/batch {res.config.label}",
            f"Reference checks: {checks}.",
            config_table(res),
        ]
    parts += ["## Summary over configurations and tolerances", summary_table(results)]
    parts += [f"![gradient work-precision]({png.name})", NOTES]
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def replot(path: Path) -> None:
    """Redraw the figure from a results JSON (the Markdown needs the IQRs: rerun for it)."""
    by_config: dict[str, ConfigResult] = {}
    for raw in json.loads(path.read_text()):
        wall = raw.pop("wall_s")
        row = Row(**raw, timing=Timing((wall,)) if wall is not None else None)
        if row.config not in by_config:
            by_config[row.config] = ConfigResult(Config(*map(int, row.config.split("/"))))
        by_config[row.config].rows.append(row)
    plot(list(by_config.values()), path.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small configs, 3 repeats")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 5, quick 3)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--replot", type=Path, metavar="JSON", help="only redraw the PNG from saved results"
    )
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    if args.replot:
        replot(args.replot)
        return

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    grid = QUICK_GRID if args.quick else FULL_GRID
    results = [measure_config(Config(*c), repeats, log) for c in grid]

    info = hardware_info(["torchdiffeq", "torchdyn"])
    info["repeats"] = f"{repeats}{' (--quick)' if args.quick else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"gradients_{_dt.date.today().isoformat()}" + ("_quick" if args.quick else "")
    png = args.out / f"{stem}.png"
    plot(results, png)
    text = render(results, info, png)
    text += f"\n\nTotal run time {time.perf_counter() - started:.0f} s.\n"
    (args.out / f"{stem}.md").write_text(text)
    raw = [
        {**{k: v for k, v in vars(r).items() if k != "timing"}, "wall_s": r.wall}
        for res in results
        for r in res.rows
    ]
    (args.out / f"{stem}.json").write_text(json.dumps(raw, indent=1) + "\n")
    print(text)
    log(f"wrote {args.out / stem}.md/.png/.json")


if __name__ == "__main__":
    main()
