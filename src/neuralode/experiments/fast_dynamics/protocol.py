"""P6, beyond the paper: does each regulariser make the learned dynamics cheaper to solve?

The ODE-Net of P1 and the maximum-likelihood CNF of P5 (on its toy datasets) are trained
once without a regulariser and once with each, at equal training budget (P1's and P5's
sizes at the preset). A regulariser passes where the trained model's test NFE is at most
half the unregularised one's, at most 0.3 accuracy points (ODE-Net) or 0.02 nats (CNF)
worse, and its training wall time no higher. Not part of the default ``reproduce`` run:
``neuralode reproduce --only p6``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._run.files import NUMBER, read_json
from .._run.markdown import figure, table
from .._run.protocol import Claim, Context, Job, Planner
from ..classify.protocol import scale as p1_scale
from ..classify.protocol import train_job
from ..cnf.protocol import CNF_ML_STEP, flow_job, iters_per_epoch
from ..cnf.scales import ML, ML_WIDTH, SCALES
from ..cnf.task import ML_T1
from .verdicts import Outcome, judge

# The ODE-Net of P1 at width 32. Weights: each penalty about 5% of the initial
# cross-entropy. The ODE function ends in a group norm, so ‖f‖² per image stays about its
# size (32 × 6 × 6 = 1,152) and the Jacobian term starts near 4,000 (digits, 3 epochs,
# backsolve). Jacobian 1e-3 (penalty about 4) kept the model at chance; 1e-5 trained to
# 41.8% against 44.6% without, test NFE 20 against 26. The local error starts near 0.04
# per image (0.1 left it at 0.4% of the loss): weight 2. Not tuned beyond that.
WIDTH = 32
ODENET_KINETIC, ODENET_JACOBIAN, ODENET_LOCAL = 1e-4, 1e-5, 2.0
ODENET_VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "kinetic": {"kinetic": ODENET_KINETIC},
    "jacobian": {"jacobian": ODENET_JACOBIAN},
    "rnode": {"kinetic": ODENET_KINETIC, "jacobian": ODENET_JACOBIAN},
    "local": {"local_error": ODENET_LOCAL},
    "steer": {"steer": 0.5},
    "anode": {"augment_dim": 8},
}
# The CNF of P5 (b): t ∈ [0, 10]; STEER's half-width is half of that. Weights from one
# short calibration (two moons, 200 iterations, both penalties on): at 0.1 they were about
# 2% of the loss (kinetic 0.33, Jacobian 0.41 per sample against NLL 2.9) and NFE-F stayed
# 50 as without; at 1.0 NFE-F fell to 44 at +0.05 nats. Not tuned beyond that.
CNF_WEIGHT = 0.5
CNF_VARIANTS: dict[str, dict[str, Any]] = {
    "none": {},
    "kinetic": {"kinetic": CNF_WEIGHT},
    "jacobian": {"jacobian": CNF_WEIGHT},
    "rnode": {"kinetic": CNF_WEIGHT, "jacobian": CNF_WEIGHT},
    "steer": {"steer": ML_T1 / 2},
}
LABELS = {
    "none": "none",
    "kinetic": "kinetic energy (RNODE)",
    "jacobian": "Jacobian Frobenius (RNODE)",
    "rnode": "kinetic + Jacobian (RNODE)",
    "local": "local error (Pal et al.)",
    "steer": "STEER",
    "anode": "ANODE (+8 channels)",
}
# What each method's paper reports, for the summary's "paper" column.
LITERATURE = {
    "kinetic": "RNODE (Finlay et al. 2020): FFJORD trains about 2.8× faster at equal bits/dim",
    "jacobian": "RNODE (Finlay et al. 2020): FFJORD trains about 2.8× faster at equal bits/dim",
    "rnode": "RNODE (Finlay et al. 2020): FFJORD trains about 2.8× faster at equal bits/dim",
    "local": "Pal et al. 2021 and 2023: NFE 0.56–0.73× at equal accuracy",
    "steer": "STEER (Ghosh et al. 2020): fewer NFE at comparable accuracy or likelihood",
    "anode": "ANODE (Dupont et al. 2019): fewer NFE and better generalisation",
}
# Rough step costs against the plain model, for the ETA: a Jacobian penalty adds a
# vector-Jacobian product per evaluation; ANODE widens the ODE function by 8 / 32.
COST = {"none": 1.0, "kinetic": 1.0, "jacobian": 2.0, "rnode": 2.0, "local": 1.5, "steer": 1.0,
        "anode": 1.6}  # fmt: skip

SUMMARY_CLASSIFY = {
    "test_accuracy": NUMBER,
    "test_nfe_forward": NUMBER,
    "train_seconds": NUMBER,
    "history": [{"epoch": NUMBER, "nfe_forward": NUMBER, "nfe_backward": NUMBER}],
}
SUMMARY_CNF = {
    "test_nll": NUMBER,
    "test_nll_stderr": NUMBER,
    "test_nfe_forward": NUMBER,
    "train_seconds": NUMBER,
    "history": [{"epoch": NUMBER, "nfe_forward": NUMBER, "nfe_backward": NUMBER}],
}


def odenet_name(variant: str) -> str:
    """Folder of an ODE-Net run, e.g. ``odenet-kinetic``."""
    return f"odenet-{variant}"


def cnf_name(dataset: str, variant: str) -> str:
    """Folder of a CNF run, e.g. ``moons-cnf-steer``."""
    return f"{dataset}-cnf-{variant}"


class FastDynamics(Planner):
    """P6: the ODE-Net and the ML CNF, each regulariser against none at equal budget."""

    name = "p6"
    title = "P6 — beyond the paper: regularisers that cut the solver's work"
    # Not in the default run of `neuralode reproduce` (nor `make demo`): --only p6.
    default = False

    def jobs(self, ctx: Context) -> list[Job]:
        """Every ODE-Net variant, then every CNF variant on every dataset of P5 (b)."""
        jobs = [train_job(ctx, "p6", odenet_name(v), "odenet", WIDTH, COST[v], **flags)
                for v, flags in ODENET_VARIANTS.items()]  # fmt: skip
        s = SCALES[ctx.preset]
        iters = s.ml_iters["cnf"]
        for dataset in s.datasets:
            for variant, flags in CNF_VARIANTS.items():
                jobs.append(flow_job(ctx, "p6", cnf_name(dataset, variant),
                                     CNF_ML_STEP * COST[variant] * iters, task="ml",
                                     dataset=dataset, model="cnf", width=ML_WIDTH, iters=iters,
                                     iters_per_epoch=iters_per_epoch(iters),
                                     val_size=s.val_size, test_size=s.test_size, **ML,
                                     **flags))  # fmt: skip
        return jobs

    def section(self, ctx: Context, walls: Mapping[str, float]) -> str:
        """Per model: the table against none, the verdicts, and NFE over training."""
        odenet, cnfs = _odenet_runs(ctx), _cnf_runs(ctx)
        if not odenet and not any(cnfs.values()):
            return "(not run)"
        plots = _plots(ctx, odenet, cnfs)
        parts = [_intro(ctx)]
        if odenet:
            parts += [f"**ODE-Net (P1, width {WIDTH})**", _table(judge_all(odenet, "accuracy")),
                      figure(ctx.out, plots["odenet"],
                             "ODE-Net: NFE per training step, by regulariser")]  # fmt: skip
        for dataset, runs in cnfs.items():
            if runs:
                parts += [f"**CNF by maximum likelihood on {dataset} (P5 b)**",
                          _table(judge_all(runs, "nll"))]  # fmt: skip
        if any(cnfs.values()):
            parts.append(figure(ctx.out, plots["cnf"],
                                "CNF: NFE per training step, by regulariser"))  # fmt: skip
        return "\n\n".join(parts)

    def claims(self, ctx: Context) -> list[Claim]:
        """One per regulariser and model: the targets against the unregularised run."""
        odenet, cnfs = _odenet_runs(ctx), _cnf_runs(ctx)
        # The summary comes before the section in the report: the figures are drawn here too.
        plots = _plots(ctx, odenet, cnfs)
        out = _claims("ODE-Net", judge_all(odenet, "accuracy"), ODENET_VARIANTS,
                      plots["odenet"])  # fmt: skip
        for dataset, runs in cnfs.items():
            out += _claims(f"CNF ({dataset})", judge_all(runs, "nll"), CNF_VARIANTS, plots["cnf"])
        return out


def judge_all(runs: Mapping[str, Mapping[str, Any]], score: str) -> dict[str, Outcome]:
    """Each finished variant judged against ``none`` (``{}`` until ``none`` has run)."""
    base = runs.get("none")
    if base is None:
        return {}
    return {variant: judge(summary, base, score) for variant, summary in runs.items()}


def _odenet_runs(ctx: Context) -> dict[str, dict[str, Any]]:
    return _read(ctx, {v: odenet_name(v) for v in ODENET_VARIANTS}, SUMMARY_CLASSIFY)


def _cnf_runs(ctx: Context) -> dict[str, dict[str, dict[str, Any]]]:
    datasets = SCALES[ctx.preset].datasets
    return {d: _read(ctx, {v: cnf_name(d, v) for v in CNF_VARIANTS}, SUMMARY_CNF)
            for d in datasets}  # fmt: skip


def _read(ctx: Context, names: Mapping[str, str], spec: dict[str, Any]
          ) -> dict[str, dict[str, Any]]:  # fmt: skip
    found = {}
    for variant, name in names.items():
        path = ctx.folder("p6", name) / "summary.json"
        if path.is_file():
            found[variant] = read_json(path, spec)
    return found


def _intro(ctx: Context) -> str:
    s, p1 = SCALES[ctx.preset], p1_scale(ctx)
    odenet = ", ".join(f"{LABELS[v]} {_flags(f)}" for v, f in ODENET_VARIANTS.items() if f)
    cnf = ", ".join(f"{LABELS[v]} {_flags(f)}" for v, f in CNF_VARIANTS.items() if f)
    return (
        f"Beyond the paper: the ODE-Net of P1 (width {WIDTH}, "
        f"{p1.epochs} epochs on {p1.train_size or 'all'} {ctx.image_dataset} images) and the "
        f"maximum-likelihood CNF of P5 (b) (64 units, {s.ml_iters['cnf']:,} iterations on "
        f"{', '.join(s.datasets)}), each trained without a regulariser and with each of: "
        f"ODE-Net {odenet}; CNF {cnf}; same seed, data and budget. Test NFE is the "
        "forward evaluations per test batch of the best checkpoint (eval mode: no STEER, no "
        "penalty); NFE-F / NFE-B are per training step, mean over epochs. Targets "
        "(docs/protocols.md, P6): test NFE ≤ 0.5× the unregularised model's, at most 0.3 "
        "accuracy points (ODE-Net) or 0.02 nats (CNF) worse, training wall time no higher. "
        "The weights are not tuned: a miss says so for these weights only. Training times "
        "are each run's own; runs that went in parallel shared the machine (compare "
        "times from `--parallel 1`)."
    )


def _flags(flags: Mapping[str, Any]) -> str:
    return "(" + ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in flags.items()) + ")"


def _table(outcomes: Mapping[str, Outcome]) -> str:
    rows = [[LABELS[v], o.score_text, o.delta_text, f"{o.test_nfe:.1f}", f"{o.nfe_ratio:.2f}×",
             f"{o.nfe_f:.0f} / {o.nfe_b:.0f}", f"{o.seconds:.0f}", f"{o.time_ratio:.2f}×",
             "–" if v == "none" else o.verdict]
            for v, o in outcomes.items()]  # fmt: skip
    headers = ["regulariser", "test score", "vs none", "test NFE", "vs none",
               "train NFE-F / NFE-B per step", "train s", "vs none", "verdict"]  # fmt: skip
    return table(headers, rows)


def _claims(model: str, outcomes: Mapping[str, Outcome], variants: Mapping[str, Any],
            plot: Path) -> list[Claim]:  # fmt: skip
    out = []
    for variant in variants:
        if variant == "none":
            continue
        claim = f"{model} with {LABELS[variant]}: test NFE ≤ 0.5×, no worse, no slower"
        o = outcomes.get(variant)
        if o is None:
            out.append(Claim(claim, "not run", LITERATURE[variant], None, note="not run"))
            continue
        ours = (
            f"test NFE {o.test_nfe:.1f} ({o.nfe_ratio:.2f}×), {o.score_text} "
            f"({o.delta_text}), training {o.seconds:.0f} s ({o.time_ratio:.2f}×)"
        )
        out.append(Claim(claim, ours, LITERATURE[variant], o.holds,
                         plot if plot.is_file() else None))  # fmt: skip
    return out


def _plots(ctx: Context, odenet: Mapping[str, Mapping[str, Any]],
           cnfs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Path]:  # fmt: skip
    """NFE over training for the finished runs: ``{"odenet": path, "cnf": path}``."""
    from .plots import plot_nfe_over_training  # matplotlib only when a report is drawn

    paths = {family: ctx.folder("p6") / f"nfe_{family}.png" for family in ("odenet", "cnf")}
    if odenet:
        plot_nfe_over_training({"ODE-Net": odenet}, LABELS, paths["odenet"])
    if any(cnfs.values()):
        plot_nfe_over_training(cnfs, LABELS, paths["cnf"])
    return paths
