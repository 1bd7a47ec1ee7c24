"""REPORT.md: what the run shows, then every protocol's numbers beside the paper's.

The report opens with one line per claim of the paper (:meth:`Planner.claims`), computed
from the same findings as the verdicts in the protocols' sections below it, so that the
summary and the details cannot disagree. The protocols, their data and their thresholds
are documented in docs/protocols.md.
"""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ._run.markdown import table
from ._run.protocol import Claim, Context, Planner


def render(
    ctx: Context,
    planners: Sequence[Planner],
    walls: Mapping[str, float],
    failures: Mapping[str, str] | None = None,
    parallel: int | None = None,
) -> str:
    """The whole report; runs in ``failures`` (job → error message) are listed first.

    ``parallel`` is how many runs went at a time (for reading the wall times; ``None`` when
    this invocation ran nothing).
    """
    parts = [
        "# neuralode: the paper's experiments, reproduced",
        f"Preset **{ctx.preset}**, seed {ctx.seed}, written "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}. Chen, "
        "Rubanova, Bettencourt & Duvenaud, *Neural Ordinary Differential Equations* "
        "(NeurIPS 2018). Every number below is measured by this run (or reused from an "
        "earlier run in the same folder); the paper's are quoted beside them. The protocols, "
        "their data and the thresholds of every verdict are described in `docs/protocols.md` "
        "of the neuralode repository.",
        "## What this run shows",
        summary(ctx, planners),
        _environment(walls, parallel),
    ]
    if failures:
        parts += [
            "## Runs that failed",
            "These runs stopped with an error and are missing from the tables below; "
            "running the same command again retries them.",
            "\n".join(f"- `{job}`: {message}" for job, message in failures.items()),
        ]
    for planner in planners:
        parts += [f"## {planner.title}", planner.section(ctx, walls)]
    return "\n\n".join(parts) + "\n"


def verdict(claim: Claim) -> str:
    """``holds``, ``does NOT hold``, or why there is no verdict."""
    if claim.holds is None:
        return claim.note or "undecided"
    return "**holds**" if claim.holds else "**does NOT hold**"


def summary(ctx: Context, planners: Sequence[Planner]) -> str:
    """One table row per claim: protocol, claim, ours, the paper's, verdict, figure."""
    rows = []
    judged = held = 0
    for planner in planners:
        for claim in planner.claims(ctx):
            fig = "–"
            if claim.figure is not None and claim.figure.is_file():
                fig = f"[figure]({Path(os.path.relpath(claim.figure, ctx.out)).as_posix()})"
            rows.append([planner.name.upper(), claim.claim, claim.ours, claim.paper,
                         verdict(claim), fig])  # fmt: skip
            judged += claim.holds is not None
            held += bool(claim.holds)
    scale = (
        " At the demo preset every model trains for minutes: a verdict is a statement about "
        "this run, and some comparisons need the quick or full preset to settle."
        if ctx.preset == "demo"
        else ""
    )
    lead = (
        f"{held} of the {judged} claims judged here hold (each by its protocol's own "
        f"threshold); the others are reported without a verdict.{scale}"
    )
    return lead + "\n\n" + table(["", "claim", "ours", "paper", "verdict", "figure"], rows)


def _environment(walls: Mapping[str, float], parallel: int | None) -> str:
    by_protocol: dict[str, float] = {}
    for key, seconds in walls.items():
        protocol = key.split("/", 1)[0]
        by_protocol[protocol] = by_protocol.get(protocol, 0.0) + seconds
    rows: list[list[object]] = [
        ["machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"],
        ["torch threads per run", torch.get_num_threads()],
        ["python / torch", f"{platform.python_version()} / {torch.__version__}"],
    ]
    if parallel is not None:
        rows.append(["runs at a time", parallel])
    rows += [
        [f"wall time {p.upper()}", f"{s / 60:.1f} min"] for p, s in sorted(by_protocol.items())
    ]
    rows.append(["wall time, all runs (summed)", f"{sum(walls.values()) / 60:.1f} min"])
    return table(["", ""], rows)
