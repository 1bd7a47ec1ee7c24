"""An ODE block: a residual stack replaced by one solve from t = 0 to t = 1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._solution import Stats
from .._solve import DEFAULT_MAX_STEPS, solve
from ..adjoints import AbstractAdjoint
from ..controllers import AbstractController
from ..regularizers import AbstractRegularizer
from ..solvers import AbstractSolver


class ODEBlock(nn.Module):
    """``h(1)`` where ``dh/dt = func(t, h)`` and ``h(0) = x`` (Chen et al. 2018, §3).

    Solver, controller and gradient method are plain attributes, so they can be changed
    after training (e.g. a looser tolerance at test time: Figure 3b).

    Args:
        func: The vector field ``func(t, h)`` (an ``nn.Module``).
        solver: Solver (``Dopri5()`` by default, as ``solve``).
        controller: Step-size control (``solve``'s default if ``None``).
        adjoint: Gradient method (``DirectAdjoint()`` if ``None``).
        t1: End time of the solve.
        max_steps: Step budget per solve.
        regularizers: Integrals along the solve to penalise in training (e.g.
            ``KineticEnergy()``; see ``solve(regularizers=...)``).

    Attributes:
        stats: :class:`Stats` of the most recent forward solve; ``stats.nfe`` is its
            forward evaluation count and ``stats.nfe_backward`` is filled in by gradient
            methods that solve backwards, once ``backward()`` has run.
        regularization: The regularisers' integrals over the most recent forward solve,
            by name (0-d tensors over the whole batch, differentiable): add them, weighted,
            to the loss.
    """

    def __init__(
        self,
        func: nn.Module,
        *,
        solver: AbstractSolver | None = None,
        controller: AbstractController | None = None,
        adjoint: AbstractAdjoint | None = None,
        t1: float = 1.0,
        max_steps: int = DEFAULT_MAX_STEPS,
        regularizers: Sequence[AbstractRegularizer] = (),
    ) -> None:
        super().__init__()
        self.func = func
        self.solver = solver
        self.controller = controller
        self.adjoint = adjoint
        self.t1 = t1
        self.max_steps = max_steps
        self.regularizers = tuple(regularizers)
        self.stats = Stats()
        self.regularization: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Solve from ``x`` at ``t = 0`` and return the state at ``t1``."""
        ts = torch.tensor([0.0, self.t1], dtype=x.dtype, device=x.device)
        sol = solve(
            self.func,
            x,
            ts,
            solver=self.solver,
            controller=self.controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            regularizers=self.regularizers,
        )
        self.stats = sol.stats
        self.regularization = sol.regularization
        ys: Any = sol.ys
        return ys[-1]
