"""Explicit Runge–Kutta solvers: one tableau each, one generic step for all."""

from ._explicit_rk import AbstractSolver, ExplicitRK, StepResult
from ._tableau import ButcherTableau
from .adaptive_heun import AdaptiveHeun
from .bosh3 import Bosh3
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .fehlberg2 import Fehlberg2
from .fixed import RK4, Euler, Heun2, Heun3, Midpoint
from .tsit5 import Tsit5

# Every solver, for tests and docs; adding a solver means adding it here.
ALL_SOLVERS: tuple[type[ExplicitRK], ...] = (
    Euler,
    Midpoint,
    Heun2,
    Heun3,
    RK4,
    AdaptiveHeun,
    Fehlberg2,
    Bosh3,
    Dopri5,
    Tsit5,
    Dopri8,
)

__all__ = [
    "ALL_SOLVERS",
    "RK4",
    "AbstractSolver",
    "AdaptiveHeun",
    "Bosh3",
    "ButcherTableau",
    "Dopri5",
    "Dopri8",
    "Euler",
    "ExplicitRK",
    "Fehlberg2",
    "Heun2",
    "Heun3",
    "Midpoint",
    "StepResult",
    "Tsit5",
]
