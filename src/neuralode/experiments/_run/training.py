"""THE training loop, shared by every experiment: data → model → optimiser → epochs.

An experiment is a :class:`Task`: it builds its data, model and optimiser, yields training
batches, turns a batch into a loss, and evaluates a split. :func:`fit` does everything
else the same way for all of them: seeding, DDP, progress, the NaN check, validation,
atomic checkpoints, exact resume, metrics.csv, plots and summary.json.

Exact resume: nothing random is carried from one epoch to the next. Every epoch re-seeds
the global RNG from ``(seed, epoch, rank)`` and tasks draw their shuffles and
augmentations from :func:`epoch_generator`, so epoch ``e`` does the same thing whether it
follows epoch ``e - 1`` in the same process or a ``--resume``.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import platform
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from ..._solution import Stats
from .config import RunOptions
from .distributed import World, unwrap
from .failures import TrainingInterrupted, bad_weight, check_finite, failures
from .progress import Progress
from .runs import BEST, RunDir, default_run_dir

Schedule = Literal["constant", "cosine"]


def lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: Schedule, steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The scheduler of a ``--schedule`` flag: ``None`` (constant) or cosine to 0 over ``steps``."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    return None


class Task(abc.ABC):
    """What an experiment supplies to :func:`fit`.

    After :meth:`setup`, ``model``, ``optimizer`` and ``scheduler`` (stepped once per
    training step, or ``None``) must be set.

    Attributes:
        experiment: Name of the experiment (the run folder's parent, e.g. ``"classify"``).
        epochs: Number of epochs (an epoch is ``steps_per_epoch()`` training steps).
        select: Validation metric that picks the best checkpoint (e.g. ``"accuracy"``).
        higher_is_better: Direction of ``select``.
        max_grad_norm: If set, the gradient's global 2-norm is clipped to it before each
            optimiser step (after DDP's all-reduce, so every rank clips alike).
        size_flags: Config fields that set the memory a run needs, named when it runs out.
    """

    experiment: str = "experiment"
    epochs: int = 1
    select: str = "loss"
    higher_is_better: bool = False
    max_grad_norm: float | None = None
    size_flags: tuple[str, ...] = ()

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    @abc.abstractmethod
    def setup(self, world: World) -> None:
        """Load data and build model, optimiser and scheduler (global RNG already seeded)."""

    @abc.abstractmethod
    def steps_per_epoch(self) -> int:
        """Training steps in one epoch (for progress and learning-rate schedules)."""

    @abc.abstractmethod
    def train_batches(self, epoch: int, world: World) -> Iterable[Any]:
        """This rank's share of each global batch of ``epoch``, in order."""

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss of a batch, and metric *sums* over it with the sample count as ``"n"``."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, split: str, world: World) -> dict[str, float]:
        """Metrics (means over the whole split, summed over ranks) of ``"val"`` or ``"test"``."""

    def plots(self, run: RunDir, history: list[dict[str, Any]]) -> list[str]:
        """Draw task-specific figures into ``run.plots``; return their file names."""
        return []

    def describe(self) -> dict[str, Any]:
        """Task facts for summary.json (parameter count, dataset sizes...)."""
        return {}


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A private generator for one epoch's shuffle (``stream`` 0) or augmentation (others).

    The same on every rank for the same ``stream``, so all ranks agree on the global batch.
    """
    return torch.Generator().manual_seed(_mix(seed, epoch, stream))


def _mix(*parts: int) -> int:
    # A simple injective-enough mix into 63 bits; the exact values only need to differ.
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2**63 - 1)
    return value


def solver_work(model: nn.Module) -> tuple[int, int]:
    """Forward and backward function evaluations of every solve in ``model``'s last step.

    Counts every submodule with a :class:`~neuralode.Stats` ``stats`` attribute (ODE blocks)
    or a ``solve_stats`` list of them (models that solve several ODEs per call, such as
    :class:`~neuralode.nn.LatentODE`).
    """
    forward = backward = 0
    for module in model.modules():
        stats = getattr(module, "stats", None)
        found = [stats] if isinstance(stats, Stats) else getattr(module, "solve_stats", [])
        for s in found:
            if isinstance(s, Stats):
                forward += s.nfe
                backward += s.nfe_backward
    return forward, backward


def run_training(config: RunOptions, task: Task) -> dict[str, Any] | None:
    """Run ``task`` under ``config``'s run options (in one process or under torchrun).

    Returns:
        The run's summary on rank 0; ``None`` on the other ranks (which print nothing).
    """
    world = World.from_environment(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    run = RunDir(world.broadcast(config.out or default_run_dir(task.experiment)))
    try:
        # Data and model before the folder: a dataset, size or memory error must not leave
        # a run folder behind that the corrected command would refuse to overwrite.
        prepare_task(task, world, config)
        if world.is_main:
            run.prepare(config, resume=config.resume)
        world.barrier()
        summary = fit(task, run, world, config, prepared=True)
    finally:
        world.close()
        run.release()
    if not world.is_main:
        return None
    print(f"run folder: {run.path}")
    return summary


def prepare_task(task: Task, world: World, options: RunOptions) -> None:
    """Seed the global RNG and set ``task`` up (data, model, optimiser).

    Raises:
        OutOfMemory: The data or the model did not fit; the message names the size flags.
    """
    torch.manual_seed(options.seed)
    with failures("building the data and the model", 0, task.size_flags, options):
        task.setup(world)


def fit(
    task: Task, run: RunDir, world: World, options: RunOptions, *, prepared: bool = False
) -> dict[str, Any]:
    """Train ``task`` for ``task.epochs`` epochs in ``run``, then test the best checkpoint once.

    Args:
        task: The experiment.
        run: Its folder (prepared by :meth:`RunDir.prepare`).
        world: This process's place among the training processes.
        options: Seed, resume and progress settings (the experiment's whole config).
        prepared: :func:`prepare_task` has already been called.

    Returns:
        The summary also written to ``summary.json``.

    Raises:
        TrainingDiverged: On a non-finite loss, weight or validation metric, or a solver
            failure; the last checkpoint stays as it was.
        TrainingInterrupted: On Ctrl-C; the last checkpoint stays as it was.
        OutOfMemory: A batch, the data or the model did not fit.
    """
    if not prepared:
        prepare_task(task, world, options)
    where = _Where()
    try:
        return _fit(task, run, world, options, where)
    except KeyboardInterrupt as exc:
        if isinstance(exc, TrainingInterrupted):
            raise
        raise TrainingInterrupted(
            f"interrupted at {where.text}; continue with --resume (it redoes the work since "
            "the last checkpoint, exactly)"
        ) from None


@dataclasses.dataclass
class _Where:
    """Where training is, for the message of an interruption."""

    text: str = "the start of training"


def _fit(
    task: Task, run: RunDir, world: World, options: RunOptions, where: _Where
) -> dict[str, Any]:
    seed, epochs = options.seed, task.epochs
    progress = options.progress and world.is_main
    model = world.wrap(task.model)
    history, best, start = _resume(task, run, world, options)
    for epoch in range(start, epochs):
        torch.manual_seed(_mix(seed, epoch, 1 + world.rank))
        row = _train_epoch(task, model, world, epoch, progress, options, where)
        where.text = f"epoch {epoch + 1}, after its last step (validating and saving)"
        with failures(f"epoch {epoch + 1}, validation", epoch, task.size_flags, options):
            val = task.evaluate(model, "val", world)
        metrics = {f"the validation {k}": v for k, v in val.items()}
        check_finite(metrics, world, epoch, f"in the validation after epoch {epoch + 1}")
        row.update({f"val_{k}": v for k, v in val.items()})
        history.append(row)
        score = row[f"val_{task.select}"]
        if not best or _better(score, best["score"], task.higher_is_better):
            best = {"score": score, "epoch": epoch + 1}
        if world.is_main:
            if best["epoch"] == epoch + 1:
                run.save_checkpoint({"model": unwrap(model).state_dict()}, BEST)
            run.save_checkpoint(_state(task, history, best, epoch + 1))
            run.write_metrics(history)
            _report_epoch(row, epochs)
        world.barrier()

    where.text = "the final test of the best checkpoint"
    run.restore(task.model, run.load_checkpoint(BEST)["model"], BEST)
    t0 = time.perf_counter()
    test = task.evaluate(model, "test", world)
    summary = {
        "experiment": task.experiment,
        **task.describe(),
        "epochs": epochs,
        "best_epoch": best["epoch"],
        f"best_val_{task.select}": best["score"],
        **{f"test_{k}": v for k, v in test.items()},
        "test_seconds": time.perf_counter() - t0,
        "train_seconds": sum(r["train_seconds"] for r in history),
        "history": history,
        "environment": environment(world),
    }
    if world.is_main:
        summary["plots"] = _draw(task, run, history)
        run.write_summary(summary)
    world.barrier()
    return summary


def _resume(
    task: Task, run: RunDir, world: World, options: RunOptions
) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """History, best epoch and the epoch to start from: the checkpoint's with ``--resume``.

    Restores the model, optimiser and scheduler from the checkpoint when it resumes.
    """
    if not (options.resume and run.has_checkpoint()):
        return [], {}, 0
    state = run.load_training_state(f"val_{task.select}")
    run.restore(task.model, state["model"])
    run.restore(task.optimizer, state["optimizer"])
    if task.scheduler is not None:
        run.restore(task.scheduler, state["scheduler"])
    history: list[dict[str, Any]] = state["history"]
    if world.is_main:
        # The checkpoint's history is the truth: a run killed between its last
        # checkpoint and metrics.csv (or resumed once finished) would keep a stale table.
        run.write_metrics(history)
    return history, state["best"], state["epoch"]


def _train_epoch(
    task: Task, model: nn.Module, world: World, epoch: int, show: bool, options: RunOptions,
    where: _Where,
) -> dict[str, Any]:  # fmt: skip
    model.train()
    sums: dict[str, float] = {}
    nfe_f = nfe_b = 0
    steps = task.steps_per_epoch()
    bar = Progress(task.train_batches(epoch, world), total=steps,
                   description=f"epoch {epoch + 1}/{task.epochs}", enabled=show)  # fmt: skip
    t0 = time.perf_counter()
    where.text = f"epoch {epoch + 1} step 1 of {steps}"
    try:
        for step, batch in enumerate(bar):
            at = f"epoch {epoch + 1}, step {step + 1} of {steps}"
            where.text = f"epoch {epoch + 1} step {step + 1} of {steps}"
            with failures(f"epoch {epoch + 1}, training step {step + 1} of {steps}", epoch,
                          task.size_flags, options):  # fmt: skip
                loss, metrics = task.loss(model, batch)
                check_finite({"the training loss": float(loss.detach())}, world, epoch, f"at {at}")
                task.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if task.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), task.max_grad_norm)
                task.optimizer.step()
            # A finite loss can still give an infinite gradient (or a step too large for
            # float32): the weights it leaves must not reach a checkpoint.
            check_finite(bad_weight(model), world, epoch, f"after the optimiser step at {at}")
            if task.scheduler is not None:
                task.scheduler.step()
            f, b = solver_work(model)
            nfe_f, nfe_b = nfe_f + f, nfe_b + b
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.show({**_means(sums), "nfe_f": f, "nfe_b": b})
    finally:
        bar.close()  # also on an error, so that its message starts on a line of its own
    elapsed = time.perf_counter() - t0
    totals = world.sum({**sums, "nfe_f": nfe_f, "nfe_b": nfe_b, "steps": steps})
    per_step = world.size * max(totals["steps"], 1)
    return {
        "epoch": epoch + 1,
        **{f"train_{k}": v for k, v in _means(totals).items() if k not in ("nfe_f", "nfe_b")},
        "nfe_forward": totals["nfe_f"] / per_step,
        "nfe_backward": totals["nfe_b"] / per_step,
        "lr": task.optimizer.param_groups[0]["lr"],
        "train_seconds": elapsed,
    }


def _better(score: float, incumbent: float, higher_is_better: bool) -> bool:
    # Ties keep the earlier epoch; a NaN score never wins.
    return score > incumbent if higher_is_better else score < incumbent


def _means(sums: Mapping[str, float]) -> dict[str, float]:
    n = max(sums.get("n", 0.0), 1.0)
    return {k: v / n for k, v in sums.items() if k not in ("n", "steps")}


def _state(task: Task, history: list[dict[str, Any]], best: dict[str, Any],
           epoch: int) -> dict[str, Any]:  # fmt: skip
    return {
        "epoch": epoch,
        "model": unwrap(task.model).state_dict(),
        "optimizer": task.optimizer.state_dict(),
        "scheduler": None if task.scheduler is None else task.scheduler.state_dict(),
        "history": history,
        "best": best,
    }


def _report_epoch(row: Mapping[str, Any], epochs: int) -> None:
    # One line per epoch even without bars (--no-progress), for logs of long runs.
    shown = ", ".join(
        f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and isinstance(v, float)
    )
    print(f"epoch {row['epoch']}/{epochs}: {shown}", flush=True)


def _draw(task: Task, run: RunDir, history: list[dict[str, Any]]) -> list[str]:
    from .plots import plot_history

    return plot_history(history, run.plots) + task.plots(run, history)


def environment(world: World) -> dict[str, Any]:
    """Versions and hardware, for summaries and reports."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "world_size": world.size,
        "device": str(world.device),
    }
