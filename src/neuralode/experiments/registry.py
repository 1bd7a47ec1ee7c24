"""Every experiment of the ``neuralode`` command, in one table.

The command line takes its ``train`` and ``evaluate`` subcommands from :data:`EXPERIMENTS`,
and ``neuralode reproduce`` its protocols. Adding an experiment is its folder (task,
protocol...) and one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ._run.protocol import Planner
from ._run.training import Task
from .classify import task as classify
from .classify.evaluate import EvaluateClassifyConfig, evaluate_classify
from .classify.protocol import FigureThree, TableOne
from .cnf import task as cnf
from .cnf.protocol import FlowComparison
from .fast_dynamics.protocol import FastDynamics
from .latent import task as latent
from .latent.protocol import TableTwo
from .memory.protocol import MemoryTable


@dataclasses.dataclass(frozen=True)
class Train:
    """``neuralode train NAME``.

    Attributes:
        config: Its flags, one dataclass (tyro builds the parser and ``--help`` from it).
        task: Builds the :class:`~._run.training.Task` that the training loop runs.
        line: The one line printed from the run's summary at the end.
    """

    config: type
    task: Callable[[Any], Task]
    line: Callable[[dict[str, Any]], str]


@dataclasses.dataclass(frozen=True)
class Evaluate:
    """``neuralode evaluate NAME RUN_DIR``: its flags and the function that runs them."""

    config: type
    run: Callable[[Any], object]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment: its commands and its protocols of ``neuralode reproduce``.

    Attributes:
        name: Its subcommand under ``train`` and ``evaluate``.
        train: ``neuralode train NAME``, if it has one.
        evaluate: ``neuralode evaluate NAME``, if it has one.
        protocols: Its protocols (named ``p<N>``: the report shows them in N's order).
    """

    name: str
    train: Train | None = None
    evaluate: Evaluate | None = None
    protocols: tuple[Planner, ...] = ()


# In the order of the subcommands in --help.
EXPERIMENTS = (
    Experiment(
        "classify",
        train=Train(classify.ClassifyConfig, classify.ClassifyTask, classify.summary_line),
        evaluate=Evaluate(EvaluateClassifyConfig, evaluate_classify),
        protocols=(TableOne(), FigureThree()),
    ),
    Experiment("memory", protocols=(MemoryTable(),)),
    Experiment(
        "latent-ode",
        train=Train(latent.LatentConfig, latent.LatentTask, latent.summary_line),
        protocols=(TableTwo(),),
    ),
    Experiment(
        "cnf",
        train=Train(cnf.CNFConfig, cnf.CNFTask, cnf.summary_line),
        protocols=(FlowComparison(),),
    ),
    # Beyond the paper: classify's and cnf's models with the regularisers.
    Experiment("fast-dynamics", protocols=(FastDynamics(),)),
)


def _planners() -> dict[str, Planner]:
    planners = [p for experiment in EXPERIMENTS for p in experiment.protocols]
    by_name = {p.name: p for p in sorted(planners, key=lambda p: int(p.name.removeprefix("p")))}
    if len(by_name) != len(planners):
        raise ValueError(f"two protocols share a name: {[p.name for p in planners]}")
    return by_name


# The protocols of ``neuralode reproduce`` (docs/protocols.md), in report order.
PLANNERS: dict[str, Planner] = _planners()
