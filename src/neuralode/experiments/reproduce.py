"""``neuralode reproduce``: the paper's experiments at a chosen scale, one command, one report.

A preset expands into a list of :class:`Job` s, each one training or evaluation run with a
fixed folder under ``--out``. Jobs whose results exist are reused; interrupted ones
resume from their checkpoints, so re-running after a kill never repeats finished work.
Every protocol then writes its section of ``REPORT.md`` from the runs' summaries.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from ..data import find_image_files
from ._run.config import MAX_THREADS, check_out_folder, check_positive, check_seed
from ._run.extras import require
from ._run.files import NUMBERS, atomic_write_text, read_json, write_json
from ._run.protocol import Context, Job
from .registry import PLANNERS
from .report import render
from .report_html import to_html

Preset = Literal["demo", "quick", "full"]
PROTOCOLS = tuple(PLANNERS)
# What runs without --only: the paper's protocols (P6 and later go beyond it).
DEFAULT_PROTOCOLS = tuple(name for name, planner in PLANNERS.items() if planner.default)


@dataclasses.dataclass(frozen=True)
class ReproduceConfig:
    """Run the paper's experiments (protocols P1-P5) and write REPORT.md beside the paper's numbers.

    P6 (beyond the paper: regularisers that cut the solver's work) runs only with --only p6.

    demo: about 5 minutes on a quiet 2-core CPU, every protocol at a reduced but honest scale.
    quick: the protocols' own sizes (tens of minutes to hours on a CPU).
    full: the paper's own scale where feasible (a GPU or a long run).
    The protocols, their sizes and thresholds: docs/protocols.md.
    """

    preset: Preset = "demo"
    """Scale of every protocol."""
    only: str = ",".join(DEFAULT_PROTOCOLS)
    """Comma-separated protocols to run, e.g. p1,p3 (p6 only when named)."""
    out: Path = Path("runs/reproduce")
    """Folder of the runs and REPORT.md; re-running with the same --out reuses finished runs."""
    data_dir: Path | None = None
    """Folder with the Fashion-MNIST / MNIST IDX files (see `train classify --help`)."""
    seed: int = 0
    """Seed of every run."""
    parallel: int | None = None
    """Runs at a time, each in its own process (default: usable CPU cores / threads per run).
    1 runs them one after the other in this process."""
    threads: int | None = None
    """torch CPU threads per run (default: 1 when runs go in parallel, else torch's choice)."""
    progress: bool = True
    """Show the overall progress bar (with --parallel 1, also each run's own bars)."""
    runs: str = ""
    """Comma-separated run names to run (e.g. u2-cnf-m8; default all planned runs), so that
    several processes or machines sharing --out can split a long preset."""
    report_only: bool = False
    """Run nothing: write REPORT.md from the runs finished in --out (the others show as –)."""

    def __post_init__(self) -> None:
        check_positive(self, "threads", "parallel", maximum=MAX_THREADS)
        check_seed(self, "seed")
        check_out_folder(self.out, "runs/reproduce-2", "runs/reproduce")
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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def unique(jobs: Sequence[Job]) -> list[Job]:
    """Each job once, in order (P3 plans P1's ODE-Net run too)."""
    seen: dict[str, Job] = {}
    for job in jobs:
        seen.setdefault(job.key, job)
    return list(seen.values())


class Progress:
    """One bar over the whole job, with an ETA from the jobs' cost model.

    The bar counts the jobs' costs (seconds of one core). A running job is credited with
    its elapsed time, scaled by how the finished jobs' wall times compared with their
    costs, up to 95% of its cost until it finishes; tqdm's ETA follows from that rate, so
    it reflects both the parallelism and how busy the machine is.
    """

    def __init__(self, jobs: Sequence[Job], enabled: bool, parallel: int) -> None:
        self.bar: Any = None
        self.credited: dict[str, float] = {}
        self.wall = self.cost = 0.0
        self.done = 0
        self.jobs = len(jobs)
        if enabled and jobs:
            tqdm = require("tqdm").tqdm
            shape = "{desc} |{bar}| {percentage:3.0f}% [{elapsed}<{remaining}]"
            self.bar = tqdm(total=sum(j.cost for j in jobs), desc="reproduce", position=0,
                            bar_format=shape)  # fmt: skip
        minutes = sum(j.cost for j in jobs) / 60
        print(f"reproduce: {len(jobs)} run(s), {parallel} at a time, about {minutes:.0f} min "
              "of one-core work", flush=True)  # fmt: skip

    def start(self, job: Job) -> None:
        """Without a bar, say which run starts."""
        if self.bar is None:
            print(f"reproduce: {job.protocol.upper()} {job.name}", flush=True)

    def show(self, running: Mapping[str, tuple[Job, float]]) -> None:
        """Credit the running jobs for their elapsed time and name them."""
        names = ", ".join(f"{job.protocol.upper()} {job.name}" for job, _ in running.values())
        label = f"reproduce ({self.done}/{self.jobs} done): {names or 'writing the report'}"
        if self.bar is None:
            return
        speed = self.cost / self.wall if self.wall > 0 else 1.0
        now = time.perf_counter()
        for key, (job, t0) in running.items():
            credit = min(0.95 * job.cost, (now - t0) * speed)
            self._advance(key, credit)
        self.bar.set_description(label, refresh=False)
        self.bar.refresh()

    def finish(self, job: Job, seconds: float | None) -> None:
        """A job ended (``seconds`` is ``None`` if it failed); credit its whole cost."""
        self.done += 1
        if seconds is not None:
            self.wall, self.cost = self.wall + seconds, self.cost + job.cost
        self._advance(job.key, job.cost)

    def _advance(self, key: str, credit: float) -> None:
        gained = credit - self.credited.get(key, 0.0)
        if gained > 0 and self.bar is not None:
            self.credited[key] = credit
            self.bar.update(gained)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()


def _worker_init(threads: int) -> None:
    # Children of a run (P2's fresh measuring processes) inherit the thread count too.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    # A worker outlives a parent killed by SIGTERM or SIGKILL (only Ctrl-C reaches the whole
    # process group): it would go on training and writing into OUT, and a re-run would find
    # its runs locked or half-written. It exits with its parent instead; checkpoints are
    # written atomically, so a later re-run resumes from the last one.
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()
    os._exit(1)


def _log_path(ctx: Context, key: str) -> Path:
    return ctx.out / "logs" / (re.sub(r"[^\w.-]+", "-", key) + ".log")


def run_planned(ctx: Context, key: str) -> tuple[float | None, str | None]:
    """Run the planned job ``key`` in this (worker) process, its output in ``OUT/logs/``.

    The job is planned again here from the context rather than sent: its ``run`` is a
    closure, which cannot cross a process boundary.

    Returns:
        Its wall seconds, or the error message if it failed.
    """
    job = next(j for p in PLANNERS.values() for j in p.jobs(ctx) if j.key == key)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        log = None
        if multiprocessing.parent_process() is not None:
            # A worker's output would interleave with the other runs' and the overall bar.
            log = _log_path(ctx, key)
            log.parent.mkdir(parents=True, exist_ok=True)
            f = stack.enter_context(open(log, "w", buffering=1))  # lines survive a kill
            stack.enter_context(contextlib.redirect_stdout(f))
            stack.enter_context(contextlib.redirect_stderr(f))
        try:
            job.run()
        except Exception as exc:  # any failure: recorded, reported, retried on the next run
            traceback.print_exc()
            return None, f"{type(exc).__name__}: {exc}" + (f" (log: {log})" if log else "")
    return time.perf_counter() - t0, None


def run_jobs(
    ctx: Context, jobs: Sequence[Job], progress: bool, parallel: int = 1, threads: int = 1
) -> tuple[dict[str, float], dict[str, str]]:
    """Run every unfinished job under one overall progress bar, ``parallel`` at a time.

    With ``parallel`` > 1 each job runs in a worker process with ``threads`` torch threads
    (planned again there from ``ctx``); the longest ready job starts first, and a job
    waits for the jobs it depends on (``Job.after``). With ``parallel`` = 1 the jobs run
    here, one after the other. A job that raises is recorded and skipped, so that one
    diverging run does not cost the others (a failed job is not done, so the next
    ``reproduce`` retries it); the jobs that depend on it are skipped with it.

    Returns:
        Wall seconds of the jobs that ran, and the error message of each that failed.
    """
    todo = [j for j in unique(jobs) if not j.done()]  # reused work must not inflate the ETA
    bar = Progress(todo, progress, min(parallel, len(todo)) or 1)
    walls: dict[str, float] = {}
    failures: dict[str, str] = {}
    order = sorted(todo, key=lambda j: -j.cost) if parallel > 1 else todo
    waiting = {j.key: j for j in order}
    running: dict[str, tuple[Job, float]] = {}

    def ready() -> Job | None:
        for job in waiting.values():
            blocked = [k for k in job.after if k in waiting or k in running]
            failed = [k for k in job.after if k in failures]
            if failed:
                del waiting[job.key]
                failures[job.key] = f"not run, because {', '.join(failed)} failed"
                bar.finish(job, None)
                return ready()
            if not blocked:
                return job
        return None

    def record(job: Job, seconds: float | None, error: str | None) -> None:
        if error is None and seconds is not None:
            walls[job.key] = seconds
        else:
            failures[job.key] = error or "failed"
            print(f"reproduce: {job.protocol.upper()} {job.name} FAILED: {failures[job.key]}",
                  flush=True)  # fmt: skip
        bar.finish(job, seconds)

    try:
        if parallel <= 1:
            _run_here(waiting, running, ready, record, bar)
        else:
            _run_in_pool(ctx, waiting, running, ready, record, bar, parallel, threads)
    finally:
        bar.close()
    for key in waiting:  # only possible if what they wait for can never finish
        failures[key] = f"not run: waits for {', '.join(waiting[key].after)}"
    return walls, failures


def _run_here(waiting: dict[str, Job], running: dict[str, tuple[Job, float]],
              ready: Callable[[], Job | None],
              record: Callable[[Job, float | None, str | None], None],
              bar: Progress) -> None:  # fmt: skip
    """Run the ready jobs in this process, one after the other (``--parallel 1``)."""
    while (job := ready()) is not None:
        del waiting[job.key]
        running[job.key] = (job, time.perf_counter())
        bar.start(job)
        bar.show(running)
        t0 = time.perf_counter()
        try:
            job.run()
        except Exception as exc:  # recorded, reported, retried on the next run
            record(job, None, f"{type(exc).__name__}: {exc}")
        else:
            record(job, time.perf_counter() - t0, None)
        del running[job.key]


def worker_pool(parallel: int, threads: int) -> concurrent.futures.Executor:
    """``parallel`` worker processes with ``threads`` torch threads each."""
    # spawn, not fork: a forked child of a process that has used torch's thread pools can
    # deadlock; each worker imports torch once and then takes job after job.
    return concurrent.futures.ProcessPoolExecutor(
        parallel, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
        initargs=(threads,),
    )  # fmt: skip


def _run_in_pool(ctx: Context, waiting: dict[str, Job], running: dict[str, tuple[Job, float]],
                 ready: Callable[[], Job | None],
                 record: Callable[[Job, float | None, str | None], None],
                 bar: Progress, parallel: int, threads: int) -> None:  # fmt: skip
    pool = worker_pool(parallel, threads)
    futures: dict[concurrent.futures.Future[Any], Job] = {}
    try:
        while waiting or futures:
            while len(futures) < parallel and (job := ready()) is not None:
                del waiting[job.key]
                running[job.key] = (job, time.perf_counter())
                bar.start(job)
                futures[pool.submit(run_planned, ctx, job.key)] = job
            if not futures:  # nothing runnable left: the rest waited on failed jobs
                break
            finished, _ = concurrent.futures.wait(
                futures, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in finished:
                job = futures.pop(future)
                del running[job.key]
                try:
                    seconds, error = future.result()
                except Exception as exc:  # the worker process itself died
                    seconds, error = None, f"{type(exc).__name__}: {exc}"
                record(job, seconds, error)
            bar.show(running)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def reproduce(config: ReproduceConfig) -> Path:
    """Run the chosen protocols at the chosen preset and write ``OUT/REPORT.md``.

    Raises:
        ReproduceIncomplete: After writing the report, if some runs failed.
    """
    threads = config.threads or 1
    parallel = config.parallel or max(1, usable_cores() // threads)
    if config.threads or parallel > 1:
        torch.set_num_threads(threads)
    dataset, note = choose_images(config)
    # Runs in worker processes draw no bars of their own: the overall bar is the one shown.
    ctx = Context(config.preset, config.out, config.seed, config.data_dir,
                  config.progress and parallel == 1, dataset, note)  # fmt: skip
    jobs = select_jobs([job for p in config.protocols() for job in PLANNERS[p].jobs(ctx)],
                       config.runs)  # fmt: skip
    ran: dict[str, float] = {}
    failures: dict[str, str] = {}
    if not config.report_only:
        ran, failures = run_jobs(ctx, jobs, config.progress, parallel, threads)
    # Read after the runs, not before: another process sharing --out may have added its own.
    timings_path = config.out / "wall_times.json"
    walls = read_json(timings_path, NUMBERS) if timings_path.exists() else {}
    walls.update(ran)
    if ran:
        write_json(timings_path, walls)
    text = render(ctx, [PLANNERS[p] for p in config.protocols()], walls, failures,
                  None if config.report_only else parallel)  # fmt: skip
    path = config.out / "REPORT.md"
    atomic_write_text(path, text)
    # The same report as one page that opens anywhere: figures embedded, nothing loaded.
    atomic_write_text(config.out / "REPORT.html", to_html(text, config.out))
    print(f"report: {path} (and {path.with_suffix('.html').name}, self-contained)")
    if failures:
        raise ReproduceIncomplete(
            f"{len(failures)} run(s) failed ({', '.join(failures)}); REPORT.md lists them and "
            "leaves them out. Run the same command again to retry them (finished runs are reused)"
        )
    return path
