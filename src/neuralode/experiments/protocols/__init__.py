"""The protocols of ``neuralode reproduce`` (shared/REFERENCE.md §4), in report order."""

from .base import Context, Job, Planner
from .classification import FigureThree, TableOne
from .flows import FlowComparison
from .latent import TableTwo
from .memory import MemoryTable

PLANNERS: dict[str, Planner] = {
    "p1": TableOne(),
    "p2": MemoryTable(),
    "p3": FigureThree(),
    "p4": TableTwo(),
    "p5": FlowComparison(),
}

__all__ = ["PLANNERS", "Context", "Job", "Planner"]
