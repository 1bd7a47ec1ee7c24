"""P5 (Figs. 4 and 5): planar CNF vs planar NF, by reverse KL and by maximum likelihood."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from .._run.files import NUMBER, POSITIVE, TEXT, read_json
from .._run.markdown import figure, table
from .._run.protocol import Claim, Context, Job, Planner
from .._run.runs import RunDir
from .._run.training import run_training
from .scales import (
    DATASET_NAMES,
    DENSITY_BATCH,
    ML,
    ML_WIDTH,
    PAPER_CNF_ITERS,
    PAPER_NF_ITERS,
    SCALES,
    Scale,
    density_name,
    ml_name,
)
from .task import CNFConfig, CNFTask
from .verdicts import (
    density_findings,
    density_verdicts,
    equal_budget,
    equal_budget_cells,
    ml_holds,
    ml_verdicts,
)

# One-thread seconds per iteration, measured (density: the full preset's runs in
# docs/results/p5-full, batch 256; ML: docs/cnf.md "Measured costs"): only for the overall
# ETA. The CNF's cost grows with its NFE during training; the NF's with its layers.
CNF_DENSITY_STEP, NF_STEP, NF_LAYER_STEP = 0.06, 0.001, 0.00027
CNF_ML_STEP, NF_ML_STEP = 0.12, 0.05
# Figures, evaluation and log Z: seconds per run, for the ETA.
RUN_OVERHEAD = 10.0
EPOCHS_PER_RUN = 10
NOT_JUDGED_BUDGETS = (
    "reported, not judged at this budget: the CNF is far from converged (docs/protocols.md, P5)"
)


def _job(ctx: Context, name: str, cost: float, **flags: Any) -> Job:
    return flow_job(ctx, "p5", name, cost, **flags)


def flow_job(ctx: Context, protocol: str, name: str, cost: float, **flags: Any) -> Job:
    """A ``train cnf`` run with ``flags`` in ``OUT/<protocol>/<name>`` (``cost``: its steps)."""
    folder = ctx.folder(protocol, name)
    config = CNFConfig(out=folder, seed=ctx.seed, progress=ctx.progress, **flags)

    def run() -> None:
        resumed = dataclasses.replace(config, resume=RunDir(folder).started())
        run_training(resumed, CNFTask(resumed))

    return Job(protocol, name, run, (folder / "summary.json").is_file, cost + RUN_OVERHEAD)


def iters_per_epoch(cnf_iters: int) -> int:
    """An epoch of ``EPOCHS_PER_RUN`` in the CNF's budget (validation and NFE rows)."""
    # Both models validate as often as the CNF, EPOCHS_PER_RUN times in its budget: the NF's
    # history then has the CNF's budget, for the comparison at equal iterations.
    return max(1, cnf_iters // EPOCHS_PER_RUN)


class FlowComparison(Planner):
    """P5: (a) reverse KL on U1–U3, NF K vs CNF M = K; (b) maximum likelihood, CNF vs NF."""

    name = "p5"
    title = "P5 — Figs. 4 and 5: continuous vs planar normalizing flows"

    def jobs(self, ctx: Context) -> list[Job]:
        """One training run per target, model and size, then per dataset and model."""
        s = SCALES[ctx.preset]
        jobs = []
        for target in s.targets:
            for size in s.sizes:
                for model in ("nf", "cnf"):
                    iters = s.density_iters[model]
                    step = CNF_DENSITY_STEP if model == "cnf" else NF_STEP + NF_LAYER_STEP * size
                    jobs.append(_job(ctx, density_name(target, model, size), step * iters,
                                     task="density", target=target, model=model, width=size,
                                     iters=iters,
                                     iters_per_epoch=iters_per_epoch(s.density_iters["cnf"]),
                                     val_size=s.val_size, test_size=s.test_size,
                                     batch_size=DENSITY_BATCH,
                                     lr=s.density_lr))  # fmt: skip
        for dataset in s.datasets:
            for model in ("cnf", "nf"):
                iters = s.ml_iters[model]
                step = CNF_ML_STEP if model == "cnf" else NF_ML_STEP
                jobs.append(_job(ctx, ml_name(dataset, model), step * iters, task="ml",
                                 dataset=dataset, model=model, width=ML_WIDTH, iters=iters,
                                 iters_per_epoch=iters_per_epoch(s.ml_iters["cnf"]),
                                 val_size=s.val_size, test_size=s.test_size, **ML))  # fmt: skip
        return jobs

    def section(self, ctx: Context, walls: Mapping[str, float]) -> str:
        """The KL and NLL tables, budgets, NFE, wall times, figures and verdicts."""
        s = SCALES[ctx.preset]
        runs = self._runs(ctx)
        if not runs:
            return "(not run)"
        parts = [_intro(ctx, s)]
        kl = _kl_table(s, runs)
        if kl:
            parts += [kl, *density_verdicts(s, runs)]
        nll = _nll_table(s, runs)
        if nll:
            parts += [nll, *ml_verdicts(s, runs)]
        parts += [_runs_table(runs, walls), _figures(ctx, s, runs)]
        return "\n\n".join(parts)

    def claims(self, ctx: Context) -> list[Claim]:
        """(a) CNF at least as good as the NF at K = M, as run and at equal iterations; (b)."""
        s = SCALES[ctx.preset]
        runs = self._runs(ctx)
        return [*self._density_claims(ctx, s, runs),
                *(self._ml_claim(ctx, runs, d) for d in s.datasets)]  # fmt: skip

    def _density_claims(self, ctx: Context, s: Scale, runs: Mapping[str, Any]) -> list[Claim]:
        claim = "CNF with M units at least as good as planar NF with K = M layers (Fig. 4)"
        paper = (f"CNF fits at least as well ({PAPER_CNF_ITERS:,} CNF vs {PAPER_NF_ITERS:,} NF "
                 "iterations; no numbers)")  # fmt: skip
        f = density_findings(s, runs)
        if not f.cells:
            return [Claim(claim, "not run", paper, None, note="not run")]
        kl = "; ".join(
            f"{t} at {k}: {runs[density_name(t, 'cnf', k)]['test_kl']:.3f} vs "
            f"{runs[density_name(t, 'nf', k)]['test_kl']:.3f}"
            for t, k in f.cells
        )
        cnf_s, nf_s = (sum(runs[density_name(t, m, k)]["train_seconds"] for t, k in f.cells)
                       for m in ("cnf", "nf"))  # fmt: skip
        ours = (f"test KL CNF vs NF {kl}: CNF at most the NF's in {f.wins} of {len(f.cells)} "
                f"({s.density_iters['cnf']:,} vs {s.density_iters['nf']:,} iterations; "
                f"training {cnf_s:.0f} s vs {nf_s:.0f} s in all)")  # fmt: skip
        target, size = f.cells[-1]
        plot = ctx.folder("p5", density_name(target, "cnf", size)) / "plots" / "fit.png"
        figure_path = plot if plot.is_file() else None
        if s.judge_budgets:
            out = [Claim(claim, ours, paper, f.holds, figure_path,
                         "" if f.holds is not None else "cells missing")]  # fmt: skip
        else:
            out = [Claim(claim, ours, paper, None, figure_path, NOT_JUDGED_BUDGETS)]
        even = equal_budget_cells(f, runs)
        if even:
            won = sum(c <= n for _, c, n in even)
            cells = "; ".join(f"{cell}: {c:.3f} vs {n:.3f}" for cell, c, n in even)
            holds = won > f.planned / 2 if len(even) == f.planned else None
            out.append(Claim(
                f"{claim}, at equal iterations ({s.density_iters['cnf']:,})",
                f"best validation KL CNF vs NF {cells}: CNF at most the NF's in {won} of "
                f"{len(even)}", paper, holds, figure_path,
                "" if holds is not None else "cells missing"))  # fmt: skip
        return out

    def _ml_claim(self, ctx: Context, runs: Mapping[str, Any], dataset: str) -> Claim:
        name = DATASET_NAMES.get(dataset, dataset)
        claim = f"CNF fits {name} better than the planar NF by maximum likelihood (Fig. 5)"
        paper = "the CNF fits, the NF struggles (no numbers)"
        cnf, nf = runs.get(ml_name(dataset, "cnf")), runs.get(ml_name(dataset, "nf"))
        if cnf is None or nf is None:
            return Claim(claim, "not run", paper, None, note="not run")
        ours = (f"test NLL {cnf['test_nll']:.3f} (CNF, {cnf['iters']:,} iterations, "
                f"{cnf['train_seconds']:.0f} s) vs {nf['test_nll']:.3f} (NF, {nf['iters']:,}, "
                f"{nf['train_seconds']:.0f} s)")  # fmt: skip
        pair = equal_budget(cnf, nf, "nll")
        if pair is not None:
            ours += (f"; at equal iterations best validation NLL {pair[0]:.3f} vs "
                     f"{pair[1]:.3f}")  # fmt: skip
        plot = ctx.folder("p5", ml_name(dataset, "cnf")) / "plots" / "fit.png"
        return Claim(claim, ours, paper, ml_holds(cnf, nf), plot if plot.is_file() else None)

    def _runs(self, ctx: Context) -> dict[str, Any]:
        s = SCALES[ctx.preset]
        runs = {}
        for job in self.jobs(ctx):
            path = ctx.folder("p5", job.name) / "summary.json"
            if path.is_file():
                ml = job.name in {ml_name(d, m) for d in s.datasets for m in ("cnf", "nf")}
                runs[job.name] = read_json(path, summary_spec("nll" if ml else "kl"))
        return runs


def _intro(ctx: Context, s: Scale) -> str:
    note = ""
    if ctx.preset == "demo":
        note = (
            "**Demo preset**: K = M = 2 only (where the NF's few layers limit it most) and two "
            "circles only, 500 CNF iterations: the budgets are far below the paper's; the "
            "quick and full presets run every cell (at K = M = 8 and 32 the NF often wins "
            "there). "
        )
    return note + (
        f"(a) Reverse KL to U1–U3 ({', '.join(s.targets)} here): planar NF with K layers "
        f"(generative direction, invertibility constraint wᵀû ≥ −1) vs planar CNF with M units "
        f"(hypernetwork of t, t ∈ [0, 1], base N(0, I)); {s.density_iters['cnf']:,} CNF and "
        f"{s.density_iters['nf']:,} NF Adam iterations (the paper: {PAPER_CNF_ITERS:,} CNF "
        f"Adam and {PAPER_NF_ITERS:,} NF RMSprop iterations; {PAPER_NF_ITERS:,} planar-NF "
        f"iterations are out of reach on a CPU here), batch {DENSITY_BATCH}, constant lr "
        f"{s.density_lr:g}. The KL is "
        "KL(q‖p) = E_q[log q + U] + log Z with log Z by grid quadrature, on "
        f"{s.test_size:,} model samples of the best checkpoint (chosen on {s.val_size:,} "
        "fixed validation samples), ± one standard error. (b) Maximum likelihood on fresh "
        "samples: CNF with 64 units "
        "(torchdiffeq's cnf.py: base N(0, 0.1 I), t ∈ [0, 10]) vs NF with 64 one-unit "
        f"layers (normalizing direction, base N(0, I)); {s.ml_iters['cnf']:,} CNF and "
        f"{s.ml_iters['nf']:,} NF iterations, batch 512, lr 1e-3; test NLL in nats on "
        f"{s.test_size:,} fresh points. Every CNF: dopri5, rtol = atol = 1e-5, gradients by "
        "backprop through the solver (torchdiffeq's cnf.py default), exact trace in closed "
        "form (PlanarDynamics.forward_with_trace). Exact vs Hutchinson "
        'trace costs at D = 2 and D = 64 are measured in docs/cnf.md ("Measured costs").'
    )


def summary_spec(key: str) -> dict[str, Any]:
    """What the report reads from a P5 run's summary.json (``key``: ``"kl"`` or ``"nll"``)."""
    row = {"epoch": NUMBER, "nfe_forward": NUMBER, "nfe_backward": NUMBER, f"val_{key}": NUMBER}
    return {
        "model": TEXT,
        "iters": POSITIVE,
        "epochs": POSITIVE,
        "parameters": NUMBER,
        "train_seconds": NUMBER,
        f"test_{key}": NUMBER,
        f"test_{key}_stderr": NUMBER,
        "history": [row],
    }


def _score(summary: Mapping[str, Any], key: str) -> str:
    return f"{summary[f'test_{key}']:.3f} ± {summary[f'test_{key}_stderr']:.3f}"


def _kl_table(s: Scale, runs: Mapping[str, Any]) -> str:
    headers = ["target"] + [f"{m} {'M' if m == 'CNF' else 'K'} = {k}"
                            for k in s.sizes for m in ("NF", "CNF")]  # fmt: skip
    rows = []
    for target in s.targets:
        row: list[object] = [target]
        for size in s.sizes:
            for model in ("nf", "cnf"):
                got = runs.get(density_name(target, model, size))
                row.append("–" if got is None else _score(got, "kl"))
        rows.append(row)
    if all(c == "–" for r in rows for c in r[1:]):
        return ""
    return "**KL(q‖p) in nats** (lower is better)\n\n" + table(headers, rows)


def _nll_table(s: Scale, runs: Mapping[str, Any]) -> str:
    rows = []
    for dataset in s.datasets:
        cnf, nf = runs.get(ml_name(dataset, "cnf")), runs.get(ml_name(dataset, "nf"))
        if cnf is None and nf is None:
            continue
        rows.append([dataset, "–" if cnf is None else _score(cnf, "nll"),
                     "–" if nf is None else _score(nf, "nll")])  # fmt: skip
    if not rows:
        return ""
    headers = ["dataset", f"CNF, {ML_WIDTH} units", f"NF, {ML_WIDTH} layers"]
    return "**Test NLL in nats per point** (lower is better)\n\n" + table(headers, rows)


def _runs_table(runs: Mapping[str, Any], walls: Mapping[str, float]) -> str:
    rows = []
    for name, summary in runs.items():
        first, last = summary["history"][0], summary["history"][-1]
        nfe = "–"
        if summary["model"] == "cnf":
            nfe = (f"{first['nfe_forward']:.0f} → {last['nfe_forward']:.0f} / "
                   f"{first['nfe_backward']:.0f} → {last['nfe_backward']:.0f}")  # fmt: skip
        train = summary["train_seconds"]
        wall = walls.get(f"p5/{name}")
        rows.append([name, f"{summary['iters']:,}", f"{summary['parameters']:,}", nfe,
                     f"{train:.0f}", f"{1e3 * train / summary['iters']:.1f}",
                     "–" if wall is None else f"{wall:.0f}"])  # fmt: skip
    headers = ["run", "iterations", "parameters", "NFE-F / NFE-B per step (epoch 1 → last)",
               "train s", "ms / iteration",
               "wall s (last invocation, with evaluation and figures)"]  # fmt: skip
    return "**Budgets, solver work and times** (one thread)\n\n" + table(headers, rows)


def _figures(ctx: Context, s: Scale, runs: Mapping[str, Any]) -> str:
    links = []
    largest = max(s.sizes)
    names: Sequence[tuple[str, str]] = [
        *((density_name(t, m, largest), f"{t}, {m.upper()} {largest}")
          for t in s.targets for m in ("cnf", "nf")),
        *((ml_name(d, m), f"{d}, {m.upper()} {ML_WIDTH}")
          for d in s.datasets for m in ("cnf", "nf")),
    ]  # fmt: skip
    for name, caption in names:
        if name not in runs:
            continue
        plots = ctx.folder("p5", name) / "plots"
        links.append(figure(ctx.out, plots / "fit.png", f"{caption}: target or data, fit, samples"))
        if name.startswith(tuple(d for d in s.datasets)):
            links.append(figure(ctx.out, plots / "flow.png", f"{caption}: 5–100% of the flow"))
    return "**Figures**\n\n" + "\n\n".join(links)
