"""Work-precision: error against wall time and against function evaluations.

Comparing libraries at equal tolerance says little when they meet a tolerance with
different errors; this sweeps the tolerance and compares what each library *achieves*:
for every problem and every ``rtol`` of the sweep (``atol = rtol * 1e-3``, the same for
every library), each library's dopri5 (and tsit5 where it has one) solves the same
problem in float64. The error is the largest absolute difference over the output times
from a reference (scipy's DOP853 at rtol = atol = 1e-13); the wall time is the median
over interleaved repeats (``_harness``); NFE is counted by wrapping f in an untimed run.

Problems: the MLP neural ODE of ``bench_forward.py`` over its grid (in float64, so that
tight tolerances mean something; 10 outputs on t ∈ [0, 1]), Lotka–Volterra (t ∈ [0, 15])
and Van der Pol with μ = 1 (non-stiff, t ∈ [0, 20]), 21 outputs each.

Besides the libraries' own methods, ``neuralode dopri5-S`` is neuralode's Dopri5 with
the embedded weights the peers use (``Dopri5(embedded="torchdiffeq")``, whose estimate
is 2/3 of Dormand and Prince's): the same steps' error estimate as theirs, which
separates the choice of estimator from the rest of the step-size control.

Usage: python benchmarks/bench_work_precision.py [--quick] [--repeats N] [--out PATH]
       [--plot PATH]   (default plot: docs/images/work_precision.png)
       python benchmarks/bench_work_precision.py --replot PATH   (an --out run's points)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _harness import (
    REPO_ROOT,
    Table,
    count_calls,
    hardware_info,
    info_table,
    publish,
    time_interleaved,
)
from bench_forward import (
    ADAPTERS,
    FULL_GRID,
    Case,
    MLPField,
    NotSupported,
    Output,
    Runner,
    lotka_volterra,
    van_der_pol,
)
from scipy.integrate import solve_ivp
from torch import Tensor

Field = Callable[[Tensor, Tensor], Tensor]
D = torch.float64


@dataclass(frozen=True)
class Problem:
    """One initial value problem, its output times and its reference solution."""

    label: str
    f: Field
    y0: Tensor
    ts: Tensor
    reference: Tensor


def reference(f: Field, y0: Tensor, ts: Tensor) -> Tensor:
    """The solution at ``ts`` from scipy's DOP853 at rtol = atol = 1e-13, on the whole state."""
    shape = y0.shape

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        return f(torch.tensor(t, dtype=D), torch.from_numpy(y).reshape(shape)).reshape(-1).numpy()

    t = ts.numpy()
    with torch.no_grad():
        sol = solve_ivp(
            rhs, (t[0], t[-1]), y0.reshape(-1).numpy(), "DOP853", t_eval=t, rtol=1e-13, atol=1e-13
        )
    assert sol.success, sol.message
    return torch.from_numpy(sol.y.T.copy()).reshape(len(t), *shape)


def problems(quick: bool) -> list[Problem]:
    def make(label: str, f: Field, y0: Tensor, ts: Tensor) -> Problem:
        return Problem(label, f, y0, ts, reference(f, y0, ts))

    out = [
        make(
            "Lotka–Volterra, t∈[0,15]",
            lotka_volterra(1.5, 1.0, 3.0, 1.0),
            torch.tensor([[1.0, 1.0]], dtype=D),
            torch.linspace(0.0, 15.0, 21, dtype=D),
        ),
        make(
            "Van der Pol μ=1, t∈[0,20]",
            van_der_pol(1.0),
            torch.tensor([[2.0, 0.0]], dtype=D),
            torch.linspace(0.0, 20.0, 21, dtype=D),
        ),
    ]
    # The largest configurations cost seconds a solve at tight tolerances: not in --quick.
    grid = [(2, 64, 128), (16, 64, 1), (16, 64, 128)] if quick else FULL_GRID
    for dim, hidden, batch in grid:
        y0 = torch.randn(batch, dim, generator=torch.Generator().manual_seed(1)).to(D)
        f = MLPField(dim, hidden).to(D)
        out.append(
            make(f"MLP {dim}/{hidden}/{batch}", f, y0, torch.linspace(0.0, 1.0, 10, dtype=D))
        )
    return out


def _neuralode_shampine(f: Field, case: Case) -> Runner:
    """neuralode's Dopri5 with the peers' embedded weights: ``Dopri5(embedded="torchdiffeq")``."""
    from neuralode import Dopri5, PIDController, solve

    rtol, atol = case.tolerances
    solver = Dopri5(embedded="torchdiffeq")
    controller = PIDController(rtol=rtol, atol=atol)

    def run() -> Output:
        sol = solve(f, case.y0, case.ts, solver=solver, controller=controller)
        return Output(sol.ys, int(sol.stats.nfe))

    return run


# (label, library adapter, method); the label is what the tables and the plot show.
ENTRIES: list[tuple[str, Callable[[Field, Case], Runner], str]] = [
    ("neuralode dopri5", ADAPTERS["neuralode"], "dopri5"),
    ("neuralode tsit5", ADAPTERS["neuralode"], "tsit5"),
    ("neuralode dopri5-S", _neuralode_shampine, "dopri5"),
    ("torchdiffeq dopri5", ADAPTERS["torchdiffeq"], "dopri5"),
    ("torchode dopri5", ADAPTERS["torchode"], "dopri5"),
    ("torchode tsit5", ADAPTERS["torchode"], "tsit5"),
    ("torchdyn dopri5", ADAPTERS["torchdyn"], "dopri5"),
    ("torchdyn tsit5", ADAPTERS["torchdyn"], "tsit5"),
]


@dataclass(frozen=True)
class Point:
    """One library's solve of one problem at one tolerance."""

    problem: str
    entry: str
    rtol: float
    wall: float  # median seconds
    nfe: int
    error: float


def measure(problem: Problem, rtol: float, repeats: int) -> tuple[list[Point], list[str]]:
    """Every entry at ``rtol``: NFE and error from a counted run, then interleaved timing."""
    runners: dict[str, Runner] = {}
    counted: dict[str, tuple[int, float]] = {}
    notes = []
    with torch.no_grad():
        for label, adapter, method in ENTRIES:
            case = Case(problem.label, problem.f, problem.y0, problem.ts, method, rtol,
                        problem.reference, atol=rtol * 1e-3)  # fmt: skip
            try:
                runner = adapter(problem.f, case)
                nfe, out = count_calls(lambda g, a=adapter, c=case: a(g, c)(), problem.f)
            except NotSupported:
                continue
            except Exception as err:  # a peer failing is a result, not a crash of the suite
                notes.append(f"{problem.label}, rtol {rtol:g}: {label} failed: {err}"[:160])
                continue
            assert isinstance(out, Output)
            error = float((out.ys - problem.reference).abs().max())
            runners[label], counted[label] = runner, (nfe, error)
        timings = time_interleaved(runners, repeats)
    points = [
        Point(problem.label, label, rtol, timings[label].median, *counted[label])
        for label in runners
    ]
    return points, notes


# --------------------------------------------------------------------------------------------
# Equal-error comparison
# --------------------------------------------------------------------------------------------


def cost_at(points: list[Point], error: float, cost: Callable[[Point], float]) -> float | None:
    """A curve's cost at ``error``, interpolated linearly in log-log (None outside it)."""
    curve = sorted(points, key=lambda p: p.error)
    for lo, hi in zip(curve, curve[1:], strict=False):
        if lo.error <= error <= hi.error and hi.error > lo.error > 0:
            s = math.log(error / lo.error) / math.log(hi.error / lo.error)
            return math.exp((1 - s) * math.log(cost(lo)) + s * math.log(cost(hi)))
    return None


def equal_error_ratio(
    ours: list[Point], peer: list[Point], cost: Callable[[Point], float]
) -> float | None:
    """Median over our points of our cost / the peer's at the same error (None: no overlap)."""
    ratios = []
    for p in ours:
        theirs = cost_at(peer, p.error, cost)
        if theirs is not None:
            ratios.append(cost(p) / theirs)
    return statistics.median(ratios) if ratios else None


def report(points: list[Point], notes: list[str], info: dict[str, str]) -> str:
    table = Table(["problem", "rtol", "library / method", "wall ms", "NFE", "max abs error"])
    for p in points:
        table.add(p.problem, f"{p.rtol:.0e}", p.entry, f"{p.wall * 1e3:.3g}", p.nfe,
                  f"{p.error:.2e}")  # fmt: skip
    summary = Table(
        ["problem", "ours", "peer", "wall ratio at equal error", "NFE ratio at equal error"]
    )
    by = {}
    for p in points:
        by.setdefault((p.problem, p.entry), []).append(p)
    for problem in dict.fromkeys(p.problem for p in points):
        # Dormand and Prince's embedded weights (ours) against the peers'.
        mine, theirs = (
            by.get((problem, "neuralode dopri5")),
            by.get((problem, "neuralode dopri5-S")),
        )
        if mine and theirs:
            summary.add(problem, "neuralode dopri5", "neuralode dopri5-S",
                        _ratio(equal_error_ratio(mine, theirs, lambda p: p.wall)),
                        _ratio(equal_error_ratio(mine, theirs, lambda p: p.nfe)))  # fmt: skip
        for ours in ("neuralode dopri5", "neuralode dopri5-S", "neuralode tsit5"):
            method = ours.split()[1].removesuffix("-S")
            for (prob, entry), peer in by.items():
                if prob != problem or entry.startswith("neuralode") or not entry.endswith(method):
                    continue
                mine = by.get((problem, ours), [])
                walls = equal_error_ratio(mine, peer, lambda p: p.wall)
                nfes = equal_error_ratio(mine, peer, lambda p: p.nfe)
                summary.add(problem, ours, entry, _ratio(walls), _ratio(nfes))
    parts = [
        "# Work-precision benchmark",
        info_table(info),
        "Error: max abs over the output times against scipy DOP853 at 1e-13; atol = rtol·1e-3 "
        "for every library; float64; wall: median over interleaved repeats, one thread.",
        "## Equal-error comparison",
        "Median over neuralode's points of its cost divided by the peer's cost at the same "
        "error (the peer's curve interpolated in log-log); below 1× is better. n/a: the "
        "error ranges do not overlap. `dopri5-S`: neuralode's Dopri5 with the peers' "
        'embedded error weights, `Dopri5(embedded="torchdiffeq")`.',
        summary.render(),
        "## All points",
        table.render(),
    ]
    parts += ["## Notes", "\n".join(f"- {n}" for n in [*NOTES, *notes])]
    return "\n\n".join(parts)


NOTES = [
    "torchode controls each row of a (batch, dim) state on its own (per-sample), the others "
    "one norm over the whole state: at batch > 1 it takes other steps; its NFE counts "
    "batched calls of f.",
    "torchdyn shortens its steps to land on every output time (no interpolation), so its "
    "NFE grows with the number of outputs.",
    "Wall times on a loaded machine are noisy (see the load average above); NFE and errors "
    "are deterministic.",
]


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}×"


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------

COLOURS = {"neuralode": "C3", "torchdiffeq": "C0", "torchode": "C2", "torchdyn": "C1"}


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    names = list(dict.fromkeys(p.problem for p in points))
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 3.1 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for col, (cost, xlabel) in enumerate(
            [(lambda p: p.wall * 1e3, "wall time (ms)"), (lambda p: p.nfe, "function evaluations")]
        ):
            ax = axes[row][col]
            for label, _, method in ENTRIES:
                curve = sorted((p for p in points if p.problem == name and p.entry == label),
                               key=lambda p: p.rtol)  # fmt: skip
                if not curve:
                    continue
                style = ":" if label.endswith("-S") else ("-" if method == "dopri5" else "--")
                ax.plot([cost(p) for p in curve], [p.error for p in curve], style, marker=".",
                        color=COLOURS[label.split()[0]], label=label, linewidth=1.2)  # fmt: skip
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # (overlapping labels otherwise)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("max abs error")
            ax.set_title(name, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][1].legend(fontsize=7, loc="upper right")
    fig.suptitle("Work-precision (float64, atol = rtol·1e-3; lower left is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 MLP configurations, 3 repeats")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 5, quick 3)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--plot", type=Path, default=REPO_ROOT / "docs/images/work_precision.png")
    parser.add_argument("--replot", type=Path, help="report and plot the points of an --out run")
    args = parser.parse_args()
    if args.replot:
        saved = json.loads(args.replot.with_suffix(".json").read_text())
        points = [Point(**p) for p in saved["points"]]
        print(report(points, saved["notes"], saved["info"]))
        plot(points, args.plot)
        return
    repeats = args.repeats or (3 if args.quick else 5)
    rtols = (
        [10.0**-e for e in range(3, 10)] if args.quick else [10.0 ** (-e / 2) for e in range(6, 21)]
    )

    points: list[Point] = []
    notes: list[str] = []
    for problem in problems(args.quick):
        for rtol in rtols:
            print(f"{problem.label} rtol={rtol:g}", file=sys.stderr, flush=True)
            got, why = measure(problem, rtol, repeats)
            points += got
            notes += why
    info = hardware_info(["torchdiffeq", "torchode", "torchdyn"])
    info["repeats"] = f"{repeats}{' (--quick)' if args.quick else ''}"
    text = report(points, notes, info)
    publish(text, args.out)
    if args.out:
        raw = {"points": [dataclasses.asdict(p) for p in points], "notes": notes, "info": info}
        args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    plot(points, args.plot)
    print(f"plot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
