"""Step-size control variants at equal error: the measurements behind the defaults.

neuralode's adaptive solvers start with Hairer's initial step and continue with the I
controller (safety 0.9, step ratio in [0.2, 10]), as torchdiffeq, scipy and Hairer's
DOPRI5 do (its PI variant aside). This checks those defaults against the alternatives
one would try, on what a user gets: the function evaluations (NFE) a variant needs to
reach the *error* the default reaches, not the same tolerance (a variant that takes
longer steps at one tolerance also makes larger errors).

For every problem and every ``rtol`` of the sweep (``atol = rtol * 1e-3``), neuralode's
Dopri5 solves in float64 with each variant; the error is the largest absolute
difference over the output times from a reference (scipy's DOP853 at 1e-13). A
variant's cost at one of the default's points is its NFE curve interpolated in log-log
at that error; the ratio to the default's NFE, median over the sweep, is the variant's
cost on that problem (below 1× it is cheaper). Deterministic: nothing is timed.

Problems: those of ``bench_work_precision.py`` (the MLP neural ODE over the forward grid,
Lotka–Volterra, Van der Pol μ = 1) and five more classic non-stiff tests: Van der Pol
μ = 10 (relaxation jumps), the Arenstorf orbit (close encounters), the Brusselator,
Kepler's problem at eccentricity 0.9 and a fast transient ``y' = −50 (y − cos t)``.

Usage: python benchmarks/bench_step_control.py [--quick] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _harness import Table, hardware_info, info_table, publish
from bench_forward import van_der_pol
from bench_work_precision import Point, Problem, cost_at, problems, reference
from torch import Tensor

from neuralode import Dopri5, PIDController, solve
from neuralode._norms import rms_norm
from neuralode.controllers.initial_step import select_initial_step

D = torch.float64
Field = Callable[[Tensor, Tensor], Tensor]
DEFAULT = "default"


@dataclass(frozen=True)
class Variant:
    """A controller setting; ``first_step``: Hairer's first step times this factor."""

    label: str
    settings: dict[str, object]
    first_step: float = 1.0


VARIANTS = [
    Variant(DEFAULT, {}),
    Variant("PI (pcoeff 0.4, icoeff 0.3)", {"pcoeff": 0.4, "icoeff": 0.3}),
    # Hairer's DOPRI5: h·safety·ε_n^−(0.2 − 0.75β)·ε_(n−1)^β with β = 0.04.
    Variant("PI as Hairer's DOPRI5 (0.2, 0.65)", {"pcoeff": 0.2, "icoeff": 0.65}),
    Variant("safety 0.8", {"safety": 0.8}),
    Variant("Hairer's PI, safety 0.8", {"pcoeff": 0.2, "icoeff": 0.65, "safety": 0.8}),
    Variant("safety 0.95", {"safety": 0.95}),
    Variant("step ratio at most 5", {"factor_max": 5.0}),
    Variant("no shorter step after an accepted one", {"shrink_after_accept": False}),
    Variant("first step ×0.5", {}, first_step=0.5),
    Variant("first step ×2", {}, first_step=2.0),
    Variant("first step ×4", {}, first_step=4.0),
]


# --------------------------------------------------------------------------------------------
# The extra problems
# --------------------------------------------------------------------------------------------


def arenstorf(t: Tensor, y: Tensor) -> Tensor:
    """The restricted three-body problem (Hairer, Nørsett & Wanner I, §II.0)."""
    mu = 0.012277471
    x, v, vx, vy = y[..., 0], y[..., 1], y[..., 2], y[..., 3]
    r1 = ((x + mu) ** 2 + v**2) ** 1.5
    r2 = ((x - 1 + mu) ** 2 + v**2) ** 1.5
    ax = x + 2 * vy - (1 - mu) * (x + mu) / r1 - mu * (x - 1 + mu) / r2
    ay = v - 2 * vx - (1 - mu) * v / r1 - mu * v / r2
    return torch.stack((vx, vy, ax, ay), dim=-1)


def brusselator(t: Tensor, y: Tensor) -> Tensor:
    x, v = y[..., 0], y[..., 1]
    return torch.stack((1 + x * x * v - 4 * x, 3 * x - x * x * v), dim=-1)


def kepler(t: Tensor, y: Tensor) -> Tensor:
    r3 = (y[..., 0] ** 2 + y[..., 1] ** 2) ** 1.5
    return torch.stack((y[..., 2], y[..., 3], -y[..., 0] / r3, -y[..., 1] / r3), dim=-1)


def transient(t: Tensor, y: Tensor) -> Tensor:
    return -50.0 * (y - torch.cos(t))


def extra_problems() -> list[Problem]:
    e = 0.9
    specs: list[tuple[str, Field, list[float], float]] = [
        ("Van der Pol μ=10, t∈[0,20]", van_der_pol(10.0), [2.0, 0.0], 20.0),
        # One period of the orbit (Hairer, Nørsett & Wanner I, eq. (0.2)).
        ("Arenstorf orbit, one period", arenstorf,
         [0.994, 0.0, 0.0, -2.00158510637908252240537862224], 17.0652165601579625588917206249),
        ("Brusselator, t∈[0,20]", brusselator, [1.5, 3.0], 20.0),
        ("Kepler e=0.9, one orbit", kepler, [1 - e, 0.0, 0.0, math.sqrt((1 + e) / (1 - e))],
         2 * math.pi),
        ("transient y'=−50(y−cos t), t∈[0,2]", transient, [0.0], 2.0),
    ]  # fmt: skip
    out = []
    for label, f, y0, t_end in specs:
        y = torch.tensor([y0], dtype=D)
        ts = torch.linspace(0.0, t_end, 21, dtype=D)
        out.append(Problem(label, f, y, ts, reference(f, y, ts)))
    return out


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    """One variant's solve of one problem at one tolerance."""

    point: Point  # (wall unused: 0)
    rejected: int


def run(problem: Problem, variant: Variant, rtol: float) -> Result:
    atol = rtol * 1e-3
    settings: dict = {"rtol": rtol, "atol": atol, **variant.settings}
    extra = 0
    if variant.first_step != 1.0:
        # Hairer's step (one evaluation besides f(t0, y0), counted), scaled, as dt0.
        def flat(t: float, y: Tensor) -> Tensor:
            return problem.f(torch.tensor(t, dtype=D), y)

        y0 = problem.y0
        f0 = flat(float(problem.ts[0]), y0)
        dt = select_initial_step(flat, float(problem.ts[0]), y0, f0, direction=1.0,
                                 error_order=4, rtol=rtol, atol=atol, norm=rms_norm)  # fmt: skip
        settings["dt0"] = variant.first_step * dt
        extra = 1
    with torch.no_grad():
        sol = solve(problem.f, problem.y0, problem.ts, solver=Dopri5(),
                    controller=PIDController(**settings), max_steps=10**6)  # fmt: skip
    error = float((sol.ys - problem.reference).abs().max())
    nfe = int(sol.stats.nfe) + extra
    return Result(Point(problem.label, variant.label, rtol, 0.0, nfe, error), sol.stats.rejected)


def measure(problem_list: list[Problem], rtols: list[float]) -> list[Result]:
    results = []
    for problem in problem_list:
        print(problem.label, file=sys.stderr, flush=True)
        results += [run(problem, v, rtol) for v in VARIANTS for rtol in rtols]
    return results


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}×"


def report(results: list[Result], rtols: list[float], info: dict[str, str]) -> str:
    names = list(dict.fromkeys(r.point.problem for r in results))
    by: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        by.setdefault((r.point.problem, r.point.entry), []).append(r)

    def nfe_ratio(problem: str, label: str) -> float | None:
        # The variant's NFE curve read at each error the default reaches.
        curve = [r.point for r in by[problem, label]]
        ratios = []
        for p in (r.point for r in by[problem, DEFAULT]):
            cost = cost_at(curve, p.error, lambda q: q.nfe)
            if cost is not None:
                ratios.append(cost / p.nfe)
        return statistics.median(ratios) if ratios else None

    summary = Table(["variant", "median over problems", "range", "cheaper / dearer problems",
                     "NFE (all solves)", "rejected steps (all solves)"])  # fmt: skip
    per_problem = Table(["problem", *(v.label for v in VARIANTS[1:])])
    ratios = {v.label: [nfe_ratio(p, v.label) for p in names] for v in VARIANTS[1:]}
    for v in VARIANTS:
        mine = [r for r in results if r.point.entry == v.label]
        nfe, rejected = sum(r.point.nfe for r in mine), sum(r.rejected for r in mine)
        if v.label == DEFAULT:
            summary.add(v.label, "1×", "", "", nfe, rejected)
            continue
        known = [x for x in ratios[v.label] if x is not None]
        cheaper = sum(x < 0.99 for x in known)
        dearer = sum(x > 1.01 for x in known)
        summary.add(v.label, _ratio(statistics.median(known)),
                    f"{min(known):.2f}–{max(known):.2f}×", f"{cheaper} / {dearer}", nfe,
                    rejected)  # fmt: skip
    for i, name in enumerate(names):
        per_problem.add(name, *(_ratio(ratios[v.label][i]) for v in VARIANTS[1:]))
    points = Table(["problem", "rtol", *(v.label for v in VARIANTS)])
    for name in names:
        for rtol in rtols:
            row = [next(r for r in by[name, v.label] if r.point.rtol == rtol) for v in VARIANTS]
            points.add(name, f"{rtol:.0e}", *(f"{r.point.nfe} / {r.point.error:.1e}" for r in row))
    return "\n\n".join([
        "# Step-size control variants at equal error",
        info_table(info),
        f"neuralode Dopri5, float64, rtol {rtols[0]:.0e} … {rtols[-1]:.0e}, atol = rtol·1e-3; "
        "error: max abs over the output times against scipy DOP853 at 1e-13. A variant's "
        "cost: its NFE at the default's error (its curve interpolated in log-log) over the "
        "default's NFE, median over the sweep; below 1× is cheaper. Cheaper / dearer: "
        "problems with a ratio below 0.99 / above 1.01. The first-step variants count "
        "the evaluation Hairer's algorithm makes.",
        "## Summary", summary.render(),
        "## Per problem", per_problem.render(),
        "## All points (NFE / max abs error)", points.render(),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="3 MLP configurations, rtol down to 1e-8")  # fmt: skip
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rtols = [10.0**-k for k in range(3, 9 if args.quick else 11)]
    problem_list = problems(args.quick) + extra_problems()
    text = report(measure(problem_list, rtols), rtols, hardware_info())
    publish(text, args.out)


if __name__ == "__main__":
    main()
