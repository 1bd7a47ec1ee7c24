"""Lang & Verwer's ROS3P: a third-order Rosenbrock method for parabolic problems."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ._rosenbrock import Rosenbrock, RosenbrockTableau

# Hairer & Wanner's form, as in the paper (Lang & Verwer 2001, §3; OrdinaryDiffEq.jl prints
# the transformed form, which converts back to these values):
# γ = 1/2 + √3/6, α21 = α31 = 1, α32 = 0, γ21 = −1, γ31 = −γ, γ32 = −(1/2 + √3/3),
# b = (2/3, 0, 1/3), b̂ = (1/3, 1/3, 1/3). The second and third stages evaluate f at the
# same point y0 + K1 (two evaluations of f per step, the step's f0 included).
_GAMMA = 0.5 + math.sqrt(3) / 6

ROS3P_TABLEAU = RosenbrockTableau(
    name="ROS3P",
    gamma=_GAMMA,
    alpha=((), (1.0,), (1.0, 0.0)),
    gammas=((), (-1.0,), (-_GAMMA, -(0.5 + math.sqrt(3) / 3))),
    b=(2 / 3, 0.0, 1 / 3),
    order=3,
    b_hat=(1 / 3, 1 / 3, 1 / 3),
    embedded_order=2,
)


@dataclass(frozen=True)
class ROS3P(Rosenbrock):
    """Lang & Verwer's ROS3P: an A-stable Rosenbrock 3(2) pair for loose tolerances.

    Order 3 (with the exact Jacobian; also for the stiff parabolic PDEs it was designed
    for, where many Rosenbrock methods lose order), error estimated with an embedded
    order-2 solution, 3 stages, not FSAL: the second and third stages share their point,
    so each step takes one evaluation of ``f`` at a stage, one at ``(t1, y1)`` (the next
    step's ``f0``), one Jacobian and ``∂f/∂t`` (by autograd), one LU factorisation of
    ``I − hγJ`` and three linear solves; no Newton iteration. A-stable, not L-stable
    (``R(∞) = 1 − √3 ≈ −0.73``): very stiff modes are damped slowly from step to step,
    so prefer :class:`Rosenbrock23` or :class:`Rodas5P` on problems with large
    transients. Cubic Hermite dense output (3rd order; the paper gives none). For rtol
    1e-2 to 1e-5.

    Reference: J. Lang and J. G. Verwer, "ROS3P — an accurate third-order Rosenbrock
    solver designed for parabolic problems", BIT Numerical Mathematics 41 (2001),
    731–738.
    """

    tableau: ClassVar[RosenbrockTableau] = ROS3P_TABLEAU
