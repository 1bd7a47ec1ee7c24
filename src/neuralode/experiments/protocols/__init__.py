"""The protocols of ``neuralode reproduce`` (shared/REFERENCE.md §4), in report order."""

from .base import Context, Job, Planner
from .classification import FigureThree, TableOne
from .latent import TableTwo

PLANNERS: dict[str, Planner] = {"p1": TableOne(), "p3": FigureThree(), "p4": TableTwo()}

__all__ = ["PLANNERS", "Context", "Job", "Planner"]
