"""Regulariser flags shared by the training commands (``--kinetic --jacobian --steer``).

Each command decides which of its models the flags apply to and refuses them for the
others; the penalties enter every loss the same way (:func:`penalize`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch

from ...regularizers import AbstractRegularizer, JacobianFrobenius, KineticEnergy
from .config import check_positive, flag


@dataclasses.dataclass(frozen=True)
class RegularizerOptions:
    """Penalties that keep the learned dynamics cheap to solve (0: off)."""

    kinetic: float = 0.0
    """Weight of the kinetic energy ∫‖f‖² dt of the model's ODE, per sample, added to the
    loss (RNODE, Finlay et al. 2020; 0: off). Recorded as train_kinetic."""
    jacobian: float = 0.0
    """Weight of the Jacobian's Frobenius norm ∫‖∂f/∂z‖²_F dt per sample (Hutchinson's
    estimator; 0: off). Recorded as train_jacobian."""
    steer: float = 0.0
    """STEER (Ghosh et al. 2020): each training batch solves to an end time drawn uniformly
    from [t1 - B, t1 + B]; evaluation uses t1 (0: off; B below the time span)."""
    local_error: float = 0.0
    """Weight of the solver's own scaled error estimate of one step from a random time of
    the solve, per sample (Pal et al. 2023; 0: off). Recorded as train_local_error."""

    def __post_init__(self) -> None:
        check_positive(self, "kinetic", "jacobian", "steer", "local_error", allow_zero=True)

    def regularizers(self) -> tuple[AbstractRegularizer, ...]:
        """The integrals that ``--kinetic`` and ``--jacobian`` switch on.

        Not ``--local-error``: only the ODE block takes it (``LocalError``).
        """
        chosen: list[AbstractRegularizer] = []
        if self.kinetic:
            chosen.append(KineticEnergy())
        if self.jacobian:
            chosen.append(JacobianFrobenius())
        return tuple(chosen)

    def refuse(self, names: tuple[str, ...], where: str) -> None:
        """Raise ``ValueError`` naming each of ``names`` that is set: they apply ``where``."""
        given = [flag(name) for name in names if getattr(self, name)]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{' and '.join(given)} {verb} {where}")


def penalize(
    loss: torch.Tensor,
    sums: dict[str, float],
    values: Mapping[str, torch.Tensor],
    options: RegularizerOptions,
    n: int,
) -> torch.Tensor:
    """``loss`` plus each weighted penalty per sample; their batch sums into ``sums``.

    ``values`` are the integrals of one batch's solve (sums over its ``n`` samples), as
    the models leave them in their ``regularization``.
    """
    for name, value in values.items():
        loss = loss + getattr(options, name) * value / n
        sums[name] = float(value.detach())
    return loss
