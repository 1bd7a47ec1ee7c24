"""REPORT.md: every protocol's numbers beside the paper's, with hardware, versions, times."""

from __future__ import annotations

import datetime
import os
import platform
from collections.abc import Mapping, Sequence

import torch

from .protocols import Context, Planner
from .protocols.markdown import table


def render(
    ctx: Context,
    planners: Sequence[Planner],
    walls: Mapping[str, float],
    failures: Mapping[str, str] | None = None,
) -> str:
    """The whole report; runs in ``failures`` (job → error message) are listed first."""
    parts = [
        "# neuralode: the paper's experiments, reproduced",
        f"Preset **{ctx.preset}**, seed {ctx.seed}, written "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}. Chen, "
        "Rubanova, Bettencourt & Duvenaud, *Neural Ordinary Differential Equations* "
        "(NeurIPS 2018); protocols from shared/REFERENCE.md §4. Every number below is "
        "measured by this run (or reused from an earlier run in the same folder); the "
        "paper's are quoted beside them.",
        _environment(walls),
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


def _environment(walls: Mapping[str, float]) -> str:
    by_protocol: dict[str, float] = {}
    for key, seconds in walls.items():
        protocol = key.split("/", 1)[0]
        by_protocol[protocol] = by_protocol.get(protocol, 0.0) + seconds
    rows: list[list[object]] = [
        ["machine", f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}"],
        ["torch threads", torch.get_num_threads()],
        ["python / torch", f"{platform.python_version()} / {torch.__version__}"],
    ]
    rows += [
        [f"wall time {p.upper()}", f"{s / 60:.1f} min"] for p, s in sorted(by_protocol.items())
    ]
    rows.append(["wall time, all runs", f"{sum(walls.values()) / 60:.1f} min"])
    return table(["", ""], rows)
