"""The acceptance of P5, computed: (a) CNF vs NF by reverse KL, (b) by maximum likelihood."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from .scales import PAPER_CNF_ITERS, PAPER_NF_ITERS, Scale, density_name, ml_name


@dataclasses.dataclass(frozen=True)
class DensityFindings:
    """Part (a) computed: the cells run, those the NF won, and the verdict."""

    cells: list[tuple[str, int]]
    losses: list[str]
    planned: int

    @property
    def wins(self) -> int:
        """Cells where the CNF's KL is at most the NF's."""
        return len(self.cells) - len(self.losses)

    @property
    def holds(self) -> bool | None:
        """Most planned cells won; ``None`` while the cells not run could change it."""
        # "Most" of the planned cells: a partial report (--runs, --report-only) decides only
        # once the cells still missing cannot change the answer.
        missing = self.planned - len(self.cells)
        if self.wins > self.planned / 2:
            return True
        if self.wins + missing <= self.planned / 2:
            return False
        return None


def density_findings(s: Scale, runs: Mapping[str, Any]) -> DensityFindings:
    """Part (a)'s cells where both models finished, and where the NF's KL is lower."""
    cells, losses = [], []
    for target in s.targets:
        for size in s.sizes:
            cnf = runs.get(density_name(target, "cnf", size))
            nf = runs.get(density_name(target, "nf", size))
            if cnf is None or nf is None:
                continue
            cells.append((target, size))
            if cnf["test_kl"] > nf["test_kl"]:
                losses.append(f"{target} at {size} ({cnf['test_kl']:.3f} vs {nf['test_kl']:.3f})")
    return DensityFindings(cells, losses, len(s.targets) * len(s.sizes))


def density_verdicts(s: Scale, runs: Mapping[str, Any]) -> list[str]:
    """Part (a)'s acceptance: CNF KL ≤ NF KL at K = M in most cells, computed."""
    f = density_findings(s, runs)
    if not f.cells:
        return []
    missing = f.planned - len(f.cells)
    if not s.judge_budgets:
        ok = "not judged at this budget, where the CNF is far from converged"
    elif f.holds is None:
        ok = f"undecided, {missing} of {f.planned} cells not run yet"
    else:
        ok = "matches" if f.holds else "does NOT match"
    out = [
        f"- (a) The CNF's KL is at most the NF's at K = M in {f.wins} of {len(f.cells)} cells"
        + (f" run ({f.planned} planned)" if missing else "")
        + f" (acceptance: most cells, after Fig. 4): {ok}."
        + (f" The NF is lower for {'; '.join(f.losses)}." if f.losses else "")
    ]
    ratio = s.density_iters["nf"] / s.density_iters["cnf"]
    out.append(
        f"- (a) The NF had {ratio:.0f}× the CNF's iterations here (the paper: "
        f"{PAPER_NF_ITERS // PAPER_CNF_ITERS}×), at a fraction of the cost per iteration."
    )
    even = equal_budget_cells(f, runs)
    if even:
        lost = [f"{cell} ({c:.3f} vs {n:.3f})" for cell, c, n in even if c > n]
        out.append(
            f"- (a) At equal iterations (each model's best validation KL within the CNF's "
            f"budget, the NF's read from its epochs up to that point): the CNF's is at most "
            f"the NF's in {len(even) - len(lost)} of {len(even)} cells (acceptance: most "
            f"of the {f.planned} planned)"
            + (f"; the NF is lower for {'; '.join(lost)}." if lost else ".")
        )
    return out


def equal_budget_cells(f: DensityFindings, runs: Mapping[str, Any]
                       ) -> list[tuple[str, float, float]]:  # fmt: skip
    """Part (a) at equal iterations: (cell, CNF's best validation KL, NF's) where both have one."""
    even = []
    for target, size in f.cells:
        pair = equal_budget(runs[density_name(target, "cnf", size)],
                            runs[density_name(target, "nf", size)], "kl")  # fmt: skip
        if pair is not None:
            even.append((f"{target} at {size}", *pair))
    return even


def equal_budget(
    cnf: Mapping[str, Any], nf: Mapping[str, Any], key: str
) -> tuple[float, float] | None:
    """Best validation ``key`` of each model within the CNF's iterations, or ``None``.

    ``None`` when either has no epoch that ends within that budget. The NF usually trains
    for more iterations than the CNF (each costs far less); its per-epoch validation
    history tells what it had reached at the CNF's budget.
    """

    def best_within(summary: Mapping[str, Any], iters: int) -> float | None:
        per_epoch = summary["iters"] / summary["epochs"]
        scores = [row[f"val_{key}"] for row in summary["history"]
                  if row["epoch"] * per_epoch <= iters]  # fmt: skip
        return min(scores) if scores else None

    budget = cnf["iters"]
    c, n = best_within(cnf, budget), best_within(nf, budget)
    return None if c is None or n is None else (c, n)


def ml_verdicts(s: Scale, runs: Mapping[str, Any]) -> list[str]:
    """Part (b)'s acceptance per dataset: CNF NLL < NF NLL (see :func:`ml_holds`)."""
    out = []
    for dataset in s.datasets:
        cnf, nf = runs.get(ml_name(dataset, "cnf")), runs.get(ml_name(dataset, "nf"))
        if cnf is None or nf is None:
            continue
        gap = nf["test_nll"] - cnf["test_nll"]
        error = math.hypot(cnf["test_nll_stderr"], nf["test_nll_stderr"])  # no overflow
        better = "lower" if gap > 0 else "higher"
        verdict = " (acceptance: lower, also at equal iterations): " + (
            "matches." if ml_holds(cnf, nf) else "does NOT match."
        )
        even = equal_budget(cnf, nf, "nll")
        at_budget = "" if even is None else (
            f" At equal iterations ({cnf['iters']:,}), best validation NLL {even[0]:.3f} "
            f"(CNF) vs {even[1]:.3f} (NF)."
        )  # fmt: skip
        out.append(
            f"- (b) {dataset}: test NLL {cnf['test_nll']:.3f} (CNF) vs {nf['test_nll']:.3f} "
            f"(NF): the CNF's is {better} by {abs(gap):.3f} nats (standard error of the "
            f"difference {error:.3f}){verdict}{at_budget}"
        )
    return out


def ml_holds(cnf: Mapping[str, Any], nf: Mapping[str, Any]) -> bool:
    """Part (b)'s acceptance on one dataset: the CNF's NLL below the NF's.

    At the end (test NLL), and also by best validation NLL at equal iterations where the
    NF's history has that point.
    """
    pair = equal_budget(cnf, nf, "nll")
    if pair is not None and pair[0] >= pair[1]:
        return False
    return bool(cnf["test_nll"] < nf["test_nll"])
