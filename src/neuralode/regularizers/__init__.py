"""Regularisers that keep learned dynamics cheap to solve: integrals along the trajectory.

A regulariser is an integral ``R = ∫ r(t, y, f) dt`` over the solve. It rides as one
extra quadrature state of the same solve (``solve(..., regularizers=[...])``), so it
costs no extra evaluation of ``f`` beyond what its integrand needs, works with every
gradient method and in per-sample mode (one value per sample), and by default stays out
of error control: the solve takes the steps it would take without it.

- :class:`KineticEnergy`: ``∫ ‖f(t, y)‖² dt`` (RNODE, Finlay et al., ICML 2020): straight
  trajectories at constant speed, which adaptive solvers take in few steps.
- :class:`JacobianFrobenius`: ``∫ ‖∂f/∂y‖_F² dt`` (RNODE), by Hutchinson's estimator
  ``‖εᵀ ∂f/∂y‖²`` (one vector-Jacobian product per evaluation, noise drawn once per
  solve as for the CNF's trace) or exactly.
- :class:`LocalError`: not an integral but the solver's own error estimate of one step
  from the solution at a random time (Pal et al., ICML 2023), for the ODE block.
"""

from __future__ import annotations

from ._augment import (
    AbstractRegularizer,
    JacobianFrobenius,
    KineticEnergy,
    solve_regularized,
    state_only,
)
from ._local import LocalError, local_error

__all__ = [
    "AbstractRegularizer",
    "JacobianFrobenius",
    "KineticEnergy",
    "LocalError",
    "local_error",
    "solve_regularized",
    "state_only",
]
