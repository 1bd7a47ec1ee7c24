"""P2: peak training memory of the ODE block, backprop vs adjoint vs checkpoint."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from .._run.files import NUMBER, TEXT, read_json, write_json
from .._run.markdown import table
from .._run.protocol import Claim, Context, Job, Planner
from .measurement import METHODS, MemoryPoint, measure

GRIDS = {
    "demo": ((4, 16, 64), (1e-1, 1e-3)),
    "quick": ((4, 16, 64, 256), (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)),
    "full": ((4, 16, 64, 256), (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)),
}
# The paper: backprop grows about 7 MB per evaluation at this size
# (docs/protocols.md#p2-training-memory).
PAPER_MB_PER_NFE = 7.0


# What the report reads from one point's JSON file.
RESULT = {"solver": TEXT, "peak_mb": NUMBER, "nfe_forward": NUMBER, "accepted": NUMBER}


def points(preset: str) -> list[MemoryPoint]:
    """The grid of a preset: every method at every RK4 step count and dopri5 tolerance."""
    steps, tols = GRIDS[preset]
    configs = [("rk4", float(n)) for n in steps] + [("dopri5", t) for t in tols]
    return [MemoryPoint(m, s, p) for s, p in configs for m in METHODS]


class MemoryTable(Planner):
    """One fresh process per point; results as JSON files under OUT/p2/."""

    name = "p2"
    title = "P2 — memory: the adjoint is O(1) in NFE, backprop is O(NFE)"

    def jobs(self, ctx: Context) -> list[Job]:
        """One job per point."""
        jobs = []
        for point in points(ctx.preset):
            path = _path(ctx, point)

            def run(point: MemoryPoint = point, path: Path = path) -> None:
                write_json(path, measure(point))

            cost = 3.0 + (point.param if point.solver == "rk4" else 10.0) * 0.2
            jobs.append(Job("p2", f"{point.method} {point.label}", run, path.is_file, cost))
        return jobs

    def section(self, ctx: Context, walls: Mapping[str, float]) -> str:
        """Peak MB per method and configuration, and the verdicts."""
        results = _results(ctx)
        labels = list(dict.fromkeys(p.label for p in points(ctx.preset)))
        rows = []
        for label in labels:
            row: list[object] = [label]
            for method in METHODS:
                r = results.get((method, label))
                row.append("–" if r is None else f"{r['peak_mb']:.0f}")
            nfe = results.get(("direct", label))
            row.append("–" if nfe is None else nfe["nfe_forward"])
            rows.append(row)
        intro = (
            "The ODE block of the width-64 ODE-Net, batch 64 (state 64×6×6), one training "
            "step (solve t = 0 → 1, backward of mean h(1)²), peak RSS growth in MB, one fresh "
            "process per point."
        )
        headers = ["configuration", *[f"{m} MB" for m in METHODS], "NFE-F"]
        return "\n\n".join([intro, table(headers, rows), *verdicts(results)])

    def claims(self, ctx: Context) -> list[Claim]:
        """Adjoint flat, backprop growing."""
        return claims(_results(ctx))


def _path(ctx: Context, point: MemoryPoint) -> Path:
    return ctx.folder("p2") / f"{point.method}-{point.label.replace(' ', '-')}.json"


def _results(ctx: Context) -> dict[tuple[str, str], dict[str, Any]]:
    """The measured points of the preset's grid, by (method, configuration)."""
    results = {}
    for point in points(ctx.preset):
        path = _path(ctx, point)
        if path.is_file():
            results[(point.method, point.label)] = read_json(path, RESULT)
    return results


def _slope(xs: list[float], ys: list[float]) -> float:
    # Plain sums and products: fmean and ** raise OverflowError on extreme values, where
    # this gives inf or nan (the numbers come from files).
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) * (x - mx) for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


# P2's acceptance (docs/protocols.md#p2-training-memory): the adjoint's peaks within this
# share of their median, per solver; backprop's growing (positive slope, beyond that band).
FLAT_WITHIN = 0.10


def spread(peaks: list[float]) -> float:
    """Largest distance of a peak from the median peak, as a share of the median."""
    mid = statistics.median(peaks)
    return max(abs(p - mid) for p in peaks) / mid if mid else math.inf


class Flatness(NamedTuple):
    """The adjoint's peaks under one solver: range in MB, spread around the median, NFE-F."""

    low: float
    high: float
    spread: float
    nfe_low: int
    nfe_high: int

    def describe(self) -> str:
        """``"38–41 MB (±4%) over NFE 16–256"``."""
        return (f"{self.low:.0f}–{self.high:.0f} MB (±{100 * self.spread:.0f}%) over NFE "
                f"{self.nfe_low}–{self.nfe_high}")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Findings:
    """P2's claims computed from the measured points (``None`` where too few ran)."""

    flat: dict[str, Flatness]  # by solver
    backprop_slope: float | None
    backprop_spread: float | None
    checkpoint_slope: float | None

    @property
    def backprop_grows(self) -> bool | None:
        """Backprop's memory grows with NFE: positive slope and not flat."""
        if self.backprop_slope is None or self.backprop_spread is None:
            return None
        return self.backprop_slope > 0 and self.backprop_spread > FLAT_WITHIN


def findings(results: Mapping[tuple[str, str], Mapping[str, Any]]) -> Findings:
    """Slopes and spreads of every method, from the measured points."""
    by = {m: [r for (mm, _), r in results.items() if mm == m] for m in METHODS}
    flat = {}
    for solver in ("rk4", "dopri5"):
        # Flat in NFE for a given method; a 7-stage step holds more tensors than a 4-stage
        # one, so the two solvers' levels differ by a constant.
        runs = [r for r in by["backsolve"] if r["solver"] == solver]
        if len(runs) >= 2:
            peaks = [r["peak_mb"] for r in runs]
            nfe = [r["nfe_forward"] for r in runs]
            flat[solver] = Flatness(min(peaks), max(peaks), spread(peaks), min(nfe), max(nfe))
    slope = width = ckpt = None
    if len(by["direct"]) >= 2:
        peaks = [r["peak_mb"] for r in by["direct"]]
        slope = _slope([float(r["nfe_forward"]) for r in by["direct"]], peaks)
        width = spread(peaks)
    if len(by["checkpoint"]) >= 2:
        xs = [float(r["accepted"]) for r in by["checkpoint"]]
        ckpt = _slope(xs, [r["peak_mb"] for r in by["checkpoint"]])
    return Findings(flat, slope, width, ckpt)


def verdicts(results: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[str]:
    """The acceptance of P2, computed: adjoint flat within ±10%, backprop growing with NFE."""
    f = findings(results)
    out = []
    for solver, flat in f.flat.items():
        verdict = (f"flat within ±{100 * FLAT_WITHIN:.0f}%: matches" if flat.spread <= FLAT_WITHIN
                   else f"NOT flat within ±{100 * FLAT_WITHIN:.0f}%")  # fmt: skip
        out.append(
            f"- Adjoint, {solver}: {flat.low:.0f}–{flat.high:.0f} MB while NFE-F ranges "
            f"{flat.nfe_low}–{flat.nfe_high}: within ±{100 * flat.spread:.0f}% of its median "
            f"({verdict})."
        )
    if f.backprop_slope is not None:
        grows = "matches" if f.backprop_grows else "does NOT match"
        out.append(
            f"- Backprop: {f.backprop_slope:.2f} MB per function evaluation (least squares "
            f"over the grid; the paper: about {PAPER_MB_PER_NFE:.0f} MB); its peaks spread "
            f"±{100 * (f.backprop_spread or 0):.0f}% around their median (acceptance: a positive "
            f"slope and beyond ±{100 * FLAT_WITHIN:.0f}%, memory growing with NFE): {grows}."
        )
    if f.checkpoint_slope is not None:
        out.append(
            f"- Checkpoint (exact gradients): {f.checkpoint_slope:.2f} MB per accepted step, one "
            "state per step instead of every stage's graph."
        )
    return out


def claims(results: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[Claim]:
    """The "What this run shows" lines of P2, from the same findings as its verdicts."""
    f = findings(results)
    if not f.flat:
        adjoint = Claim("Adjoint training memory is constant in NFE", "not run", "O(1)", None,
                        note="not run")  # fmt: skip
    else:
        ours = "; ".join(f"{solver} {flat.describe()}" for solver, flat in f.flat.items())
        holds = all(flat.spread <= FLAT_WITHIN for flat in f.flat.values())
        adjoint = Claim("Adjoint training memory is constant in NFE", ours, "O(1)", holds)
    backprop = Claim(
        "Backprop through the solver grows linearly in NFE",
        "not run" if f.backprop_slope is None else f"{f.backprop_slope:.2f} MB per evaluation",
        f"about {PAPER_MB_PER_NFE:.0f} MB per evaluation",
        f.backprop_grows,
        note="" if f.backprop_slope is not None else "not run",
    )
    return [adjoint, backprop]
