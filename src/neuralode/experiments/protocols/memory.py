"""P2: peak training memory of the ODE block, backprop vs adjoint vs checkpoint."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from ..files import NUMBER, TEXT, read_json, write_json
from ..memory import METHODS, MemoryPoint, measure
from .base import Context, Job, Planner
from .markdown import table

GRIDS = {
    "demo": ((4, 16, 64), (1e-1, 1e-3)),
    "quick": ((4, 16, 64, 256), (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)),
    "full": ((4, 16, 64, 256), (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)),
}
# The paper: backprop grows about 7 MB per evaluation at this size (REFERENCE §1).
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
            path = ctx.folder("p2") / f"{point.method}-{point.label.replace(' ', '-')}.json"

            def run(point: MemoryPoint = point, path: Any = path) -> None:
                write_json(path, measure(point))

            cost = 3.0 + (point.param if point.solver == "rk4" else 10.0) * 0.2
            jobs.append(Job("p2", f"{point.method} {point.label}", run, path.is_file, cost))
        return jobs

    def section(self, ctx: Context, walls: Mapping[str, float]) -> str:
        """Peak MB per method and configuration, and the verdicts."""
        results: dict[tuple[str, str], dict[str, Any]] = {}
        for point in points(ctx.preset):
            path = ctx.folder("p2") / f"{point.method}-{point.label.replace(' ', '-')}.json"
            if path.is_file():
                results[(point.method, point.label)] = read_json(path, RESULT)
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


def _slope(xs: list[float], ys: list[float]) -> float:
    # Plain sums and products: fmean and ** raise OverflowError on extreme values, where
    # this gives inf or nan (the numbers come from files).
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) * (x - mx) for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def verdicts(results: Mapping[tuple[str, str], Mapping[str, Any]]) -> list[str]:
    """The acceptance of P2, computed: adjoint flat within ±10%, backprop growing with NFE."""
    out = []
    by = {m: [r for (mm, _), r in results.items() if mm == m] for m in METHODS}
    for solver in ("rk4", "dopri5"):
        # Flat in NFE for a given method; a 7-stage step holds more tensors than a 4-stage
        # one, so the two solvers' levels differ by a constant.
        runs = [r for r in by["backsolve"] if r["solver"] == solver]
        if len(runs) < 2:
            continue
        peaks = [r["peak_mb"] for r in runs]
        mid = statistics.median(peaks)
        spread = max(abs(p - mid) for p in peaks) / mid if mid else math.inf
        nfe = [r["nfe_forward"] for r in runs]
        verdict = "flat within ±10%: matches" if spread <= 0.10 else "NOT flat within ±10%"
        out.append(
            f"- Adjoint, {solver}: {min(peaks):.0f}–{max(peaks):.0f} MB while NFE-F ranges "
            f"{min(nfe)}–{max(nfe)}: within ±{100 * spread:.0f}% of its median ({verdict})."
        )
    if len(by["direct"]) >= 2:
        xs = [float(r["nfe_forward"]) for r in by["direct"]]
        slope = _slope(xs, [r["peak_mb"] for r in by["direct"]])
        out.append(
            f"- Backprop: {slope:.2f} MB per function evaluation (least squares over the grid; "
            f"the paper: about {PAPER_MB_PER_NFE:.0f} MB): memory grows linearly with NFE."
        )
    if len(by["checkpoint"]) >= 2:
        xs = [float(r["accepted"]) for r in by["checkpoint"]]
        slope = _slope(xs, [r["peak_mb"] for r in by["checkpoint"]])
        out.append(
            f"- Checkpoint (exact gradients): {slope:.2f} MB per accepted step, one state per "
            "step instead of every stage's graph."
        )
    return out
