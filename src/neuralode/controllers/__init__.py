"""Step-size controllers."""

from ._base import AbstractController, Decision, SolveStart
from .constant import ConstantStepSize, StepTo
from .initial_step import select_initial_step
from .pid import PIDController

__all__ = [
    "AbstractController",
    "ConstantStepSize",
    "Decision",
    "PIDController",
    "SolveStart",
    "StepTo",
    "select_initial_step",
]
