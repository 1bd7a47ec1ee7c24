"""neuralode: differentiable ODE solvers and neural ODE models for PyTorch."""

from ._norms import max_norm, rms_norm
from ._problem import PerSampleTuning
from ._solution import Solution, SolverError, Stats, Status
from ._solve import solve
from .adjoints import AbstractAdjoint, BacksolveAdjoint, CheckpointAdjoint, DirectAdjoint
from .controllers import AbstractController, ConstantStepSize, PIDController, StepTo
from .regularizers import AbstractRegularizer, JacobianFrobenius, KineticEnergy
from .solvers import (
    ALL_SOLVERS,
    RK4,
    SDIRK2,
    TRBDF2,
    AbstractSolver,
    AdaptiveHeun,
    Bosh3,
    ButcherTableau,
    Dopri5,
    Dopri8,
    Euler,
    Fehlberg2,
    Heun2,
    Heun3,
    ImplicitEuler,
    ImplicitMidpoint,
    Kvaerno3,
    Kvaerno5,
    Midpoint,
    Newton,
    Trapezoid,
    Tsit5,
)

__version__ = "0.1.0"

__all__ = [
    "ALL_SOLVERS",
    "RK4",
    "AbstractAdjoint",
    "AbstractController",
    "AbstractRegularizer",
    "AbstractSolver",
    "AdaptiveHeun",
    "BacksolveAdjoint",
    "Bosh3",
    "ButcherTableau",
    "CheckpointAdjoint",
    "ConstantStepSize",
    "DirectAdjoint",
    "Dopri5",
    "Dopri8",
    "Euler",
    "Fehlberg2",
    "Heun2",
    "Heun3",
    "ImplicitEuler",
    "ImplicitMidpoint",
    "JacobianFrobenius",
    "KineticEnergy",
    "Kvaerno3",
    "Kvaerno5",
    "Midpoint",
    "Newton",
    "PIDController",
    "PerSampleTuning",
    "SDIRK2",
    "Solution",
    "SolverError",
    "Stats",
    "Status",
    "StepTo",
    "TRBDF2",
    "Trapezoid",
    "Tsit5",
    "max_norm",
    "rms_norm",
    "solve",
]
