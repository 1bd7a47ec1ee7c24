"""Solvers: explicit Runge–Kutta (one tableau each, one generic step), implicit, Rosenbrock."""

from ._dirk import DIRK, DIRKTableau
from ._explicit_rk import AbstractSolver, ExplicitRK, StepResult
from ._firk import FIRK, FIRKTableau
from ._implicit import ImplicitRK
from ._krylov import GMRES
from ._newton import Newton
from ._rosenbrock import Rosenbrock, RosenbrockTableau
from ._tableau import ButcherTableau
from .adams import AdamsBashforth, AdamsBashforthMoulton
from .adaptive_heun import AdaptiveHeun
from .bosh3 import Bosh3
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .fehlberg2 import Fehlberg2
from .fixed import RK4, Euler, Heun2, Heun3, Midpoint
from .implicit_fixed import (
    SDIRK2,
    TRBDF2,
    GaussLegendre4,
    GaussLegendre6,
    ImplicitEuler,
    ImplicitMidpoint,
    RadauIIA3,
    RadauIIA5,
    Trapezoid,
)
from .kvaerno3 import Kvaerno3
from .kvaerno5 import Kvaerno5
from .radau5 import Radau5
from .rodas5p import Rodas5P
from .ros3p import ROS3P
from .rosenbrock23 import Rosenbrock23
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
# The implicit (stiff) solvers, for their own tests and docs.
IMPLICIT_SOLVERS: tuple[type[ImplicitRK], ...] = (
    ImplicitEuler,
    ImplicitMidpoint,
    Trapezoid,
    SDIRK2,
    TRBDF2,
    RadauIIA3,
    RadauIIA5,
    GaussLegendre4,
    GaussLegendre6,
    Kvaerno3,
    Kvaerno5,
    Radau5,
)
# The Rosenbrock (linearly implicit) solvers: one Jacobian, one LU, no Newton per step.
ROSENBROCK_SOLVERS: tuple[type[Rosenbrock], ...] = (Rosenbrock23, ROS3P, Rodas5P)
# The multistep methods: they carry a history of f from step to step (a solver state).
MULTISTEP_SOLVERS: tuple[type[AdamsBashforth], ...] = (AdamsBashforth, AdamsBashforthMoulton)

__all__ = [
    "ALL_SOLVERS",
    "RK4",
    "SDIRK2",
    "TRBDF2",
    "AbstractSolver",
    "AdamsBashforth",
    "AdamsBashforthMoulton",
    "AdaptiveHeun",
    "Bosh3",
    "ButcherTableau",
    "DIRK",
    "DIRKTableau",
    "Dopri5",
    "Dopri8",
    "Euler",
    "FIRK",
    "FIRKTableau",
    "GaussLegendre4",
    "GaussLegendre6",
    "ExplicitRK",
    "Fehlberg2",
    "Heun2",
    "Heun3",
    "IMPLICIT_SOLVERS",
    "ImplicitEuler",
    "ImplicitMidpoint",
    "ImplicitRK",
    "Kvaerno3",
    "Kvaerno5",
    "MULTISTEP_SOLVERS",
    "Midpoint",
    "GMRES",
    "Newton",
    "RadauIIA3",
    "Radau5",
    "RadauIIA5",
    "ROS3P",
    "ROSENBROCK_SOLVERS",
    "Rodas5P",
    "Rosenbrock",
    "Rosenbrock23",
    "RosenbrockTableau",
    "StepResult",
    "Trapezoid",
    "Tsit5",
]
