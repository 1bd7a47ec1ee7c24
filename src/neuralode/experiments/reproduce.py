"""``neuralode reproduce``: the paper's experiments at a chosen scale, one command, one report.

A preset expands into a list of :class:`Job` s, each one training or evaluation run with a
fixed folder under ``--out``. Jobs whose results exist are reused; interrupted ones
resume from their checkpoints, so re-running after a kill never repeats finished work.
Every protocol then writes its section of ``REPORT.md`` from the runs' summaries.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ..data import find_image_files
from ._extras import require
from .config import MAX_THREADS, check_positive, check_seed
from .protocols import PLANNERS, Context, Job
from .report import render
from .runs import atomic_write_text, read_json, write_json

Preset = Literal["demo", "quick", "full"]
PROTOCOLS = tuple(PLANNERS)


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """Run the paper's experiments (protocols P1-P5) and write REPORT.md beside the paper's numbers.

    demo: about 10 minutes on a 2-core CPU, every protocol at a reduced but honest scale.
    quick: the P1-P5 sizes of REFERENCE.md (tens of minutes to hours on a CPU).
    full: the paper's own scale where feasible (a GPU or a long run).
    """

    preset: Preset = "demo"
    """Scale of every protocol."""
    only: str = ",".join(PROTOCOLS)
    """Comma-separated protocols to run, e.g. p1,p3."""
    out: Path = Path("runs/reproduce")
    """Folder of the runs and REPORT.md; re-running with the same --out reuses finished runs."""
    data_dir: Path | None = None
    """Folder with the Fashion-MNIST / MNIST IDX files (see `train classify --help`)."""
    seed: int = 0
    """Seed of every run."""
    threads: int | None = None
    """torch CPU threads (default: torch's choice)."""
    progress: bool = True
    """Show the overall progress bar and each run's bars."""
    runs: str = ""
    """Comma-separated run names to run (e.g. u2-cnf-m8; default all planned runs), so that
    several processes or machines sharing --out can split a long preset."""
    report_only: bool = False
    """Run nothing: write REPORT.md from the runs finished in --out (the others show as –)."""

    def __post_init__(self) -> None:
        check_positive(self, "threads", maximum=MAX_THREADS)
        check_seed(self, "seed")
        self.protocols()  # validates --only

    def protocols(self) -> list[str]:
        """The protocols named by ``--only``, in the report's order."""
        names = [p.strip().lower() for p in self.only.split(",") if p.strip()]
        unknown = sorted(set(names) - set(PROTOCOLS))
        if unknown or not names:
            raise ValueError(
                f"--only must list protocols from {', '.join(PROTOCOLS)}, got {self.only!r}"
            )
        return [p for p in PROTOCOLS if p in names]


def select_jobs(jobs: Sequence[Job], runs: str) -> list[Job]:
    """The jobs that ``--runs`` names (all of them when it is empty), checked."""
    names = [n.strip() for n in runs.split(",") if n.strip()]
    if not names:
        return list(jobs)
    known = [j.name for j in jobs]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"--runs names {', '.join(unknown)}, which the chosen protocols and preset do not "
            f"plan; their runs are: {', '.join(known)}"
        )
    return [j for j in jobs if j.name in names]


def choose_images(config: ReproduceConfig) -> tuple[str, str]:
    """Fashion-MNIST where its files are installed, else scikit-learn's digits, with why."""
    if find_image_files("fashion-mnist", "train", config.data_dir) and find_image_files(
        "fashion-mnist", "test", config.data_dir
    ):
        return "fashion-mnist", "Fashion-MNIST (MNIST is not reachable offline)"
    return "digits", (
        "scikit-learn's 8×8 digits upsampled to 28×28, because Fashion-MNIST is not "
        "installed (apt-get install dataset-fashion-mnist, or --data-dir)"
    )


class ReproduceIncomplete(RuntimeError):
    """Some runs failed; the report was written without them, and re-running retries them."""


def run_jobs(jobs: Sequence[Job], progress: bool) -> tuple[dict[str, float], dict[str, str]]:
    """Run every unfinished job in order under one overall progress bar.

    A job that raises is recorded and skipped, so that one diverging run does not cost the
    others (a failed job is not done, so the next ``reproduce`` retries it).

    Returns:
        Wall seconds of the jobs that ran, and the error message of each that failed.
    """
    bar: Any = None
    if progress:
        tqdm = require("tqdm").tqdm
        total = sum(j.cost for j in jobs)
        shape = "{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]"
        bar = tqdm(total=total, desc="reproduce", position=0, bar_format=shape)
    walls: dict[str, float] = {}
    failures: dict[str, str] = {}
    for i, job in enumerate(jobs):
        label = f"{job.protocol.upper()} {job.name} ({i + 1}/{len(jobs)})"
        if job.done():
            if bar is not None:
                bar.total -= job.cost  # reused work must not inflate the ETA
                bar.set_description(f"reproduce: reused {label}")
                bar.refresh()
            continue
        if bar is not None:
            bar.set_description(f"reproduce: {label}")
            bar.refresh()
        else:
            print(f"reproduce: {label}", flush=True)
        t0 = time.perf_counter()
        key = f"{job.protocol}/{job.name}"
        try:
            job.run()
        except Exception as exc:  # any failure: recorded, reported, retried on the next run
            failures[key] = f"{type(exc).__name__}: {exc}"
            print(f"reproduce: {label} FAILED: {failures[key]}", flush=True)
        else:
            walls[key] = time.perf_counter() - t0
        if bar is not None:
            bar.update(job.cost)
    if bar is not None:
        bar.close()
    return walls, failures


def reproduce(config: ReproduceConfig) -> Path:
    """Run the chosen protocols at the chosen preset and write ``OUT/REPORT.md``.

    Raises:
        ReproduceIncomplete: After writing the report, if some runs failed.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    dataset, note = choose_images(config)
    ctx = Context(config.preset, config.out, config.seed, config.data_dir, config.progress,
                  dataset, note)  # fmt: skip
    jobs = select_jobs([job for p in config.protocols() for job in PLANNERS[p].jobs(ctx)],
                       config.runs)  # fmt: skip
    ran, failures = ({}, {}) if config.report_only else run_jobs(jobs, config.progress)
    # Read after the runs, not before: another process sharing --out may have added its own.
    timings_path = config.out / "wall_times.json"
    walls = read_json(timings_path) if timings_path.is_file() else {}
    walls.update(ran)
    if ran:
        write_json(timings_path, walls)
    text = render(ctx, [PLANNERS[p] for p in config.protocols()], walls, failures)
    path = config.out / "REPORT.md"
    atomic_write_text(path, text)
    print(f"report: {path}")
    if failures:
        raise ReproduceIncomplete(
            f"{len(failures)} run(s) failed ({', '.join(failures)}); REPORT.md lists them and "
            "leaves them out. Run the same command again to retry them (finished runs are reused)"
        )
    return path
