"""The protocols of ``neuralode reproduce`` (docs/protocols.md), in report order."""

from .._run.protocol import Claim, Context, Job, Planner
from ..classify.protocol import FigureThree, TableOne
from ..cnf.protocol import FlowComparison
from ..latent.protocol import TableTwo
from ..memory.protocol import MemoryTable

PLANNERS: dict[str, Planner] = {
    "p1": TableOne(),
    "p2": MemoryTable(),
    "p3": FigureThree(),
    "p4": TableTwo(),
    "p5": FlowComparison(),
}

__all__ = ["PLANNERS", "Claim", "Context", "Job", "Planner"]
