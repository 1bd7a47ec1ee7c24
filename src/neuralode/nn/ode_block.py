"""An ODE block: a residual stack replaced by one solve from t = 0 to t = 1."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._solution import Stats
from .._solve import DEFAULT_MAX_STEPS, solve
from ..adjoints import AbstractAdjoint
from ..controllers import AbstractController, PIDController
from ..regularizers import AbstractRegularizer, LocalError, local_error
from ..solvers import AbstractSolver, Dopri5


class ODEBlock(nn.Module):
    """``h(1)`` where ``dh/dt = func(t, h)`` and ``h(0) = x`` (Chen et al. 2018, §3).

    Solver, controller and gradient method are plain attributes, so they can be changed
    after training (e.g. a looser tolerance at test time: Figure 3b).

    Args:
        func: The vector field ``func(t, h)`` (an ``nn.Module``). With ``augment_dim = K``
            it sees ``K`` more channels (dim 1) than the block's input.
        solver: Solver (``Dopri5()`` by default, as ``solve``).
        controller: Step-size control (``solve``'s default if ``None``).
        adjoint: Gradient method (``DirectAdjoint()`` if ``None``).
        t1: End time of the solve.
        max_steps: Step budget per solve.
        regularizers: Integrals along the solve to penalise in training (e.g.
            ``KineticEnergy()``; see ``solve(regularizers=...)``), and
            :class:`~neuralode.regularizers.LocalError` (the solver's error estimate of
            one step from a random time ``t*``: the solve then also outputs ``y(t*)``);
            computed in training mode only.
        augment_dim: ANODE (Dupont et al., NeurIPS 2019): ``K`` zero channels appended to
            the state along dim 1 before the solve and dropped after it, so that the flow
            can move points around each other in the extra dimensions (a plain ODE's flow
            cannot cross trajectories). ``0``: off.
        steer: STEER (Ghosh et al., NeurIPS 2020): in training mode the end time is drawn
            uniformly from ``[t1 − steer, t1 + steer]`` at every forward (from torch's
            global generator), in eval mode it is ``t1``. Needs ``0 ≤ steer < t1``. ``0``:
            off.

    Attributes:
        stats: :class:`Stats` of the most recent forward solve; ``stats.nfe`` is its
            forward evaluation count and ``stats.nfe_backward`` is filled in by gradient
            methods that solve backwards, once ``backward()`` has run.
        regularization: The regularisers' integrals over the most recent forward solve,
            by name (0-d tensors over the whole batch, differentiable): add them, weighted,
            to the loss. Empty after a forward in eval mode.
        end_time: The end time of the most recent forward solve (``t1`` unless STEER drew
            another).
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
        regularizers: Sequence[AbstractRegularizer | LocalError] = (),
        augment_dim: int = 0,
        steer: float = 0.0,
    ) -> None:
        super().__init__()
        if isinstance(augment_dim, bool) or not isinstance(augment_dim, int) or augment_dim < 0:
            raise ValueError(
                f"augment_dim must be an integer ≥ 0 (extra zero channels; 0: off), got "
                f"{augment_dim!r}"
            )
        self.func = func
        self.solver = solver
        self.controller = controller
        self.adjoint = adjoint
        self.t1 = t1
        self.max_steps = max_steps
        self.regularizers = tuple(regularizers)
        self.augment_dim = augment_dim
        self.steer = check_steer(steer, t1)  # the span from t = 0
        self.stats = Stats()
        self.regularization: dict[str, torch.Tensor] = {}
        self.end_time = float(t1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Solve from ``x`` at ``t = 0`` (zero-padded by ``augment_dim``) to the end time."""
        self.end_time = end = steered_time(self.t1, self.steer, self.training)
        # Penalties are for training: eval mode solves without them (the Jacobian term's
        # products would cost time and nothing reads them).
        regs = self.regularizers if self.training else ()
        integrals = [r for r in regs if not isinstance(r, LocalError)]
        local = [r for r in regs if isinstance(r, LocalError)]
        # LocalError's random time t* inside (0, end), an extra output of the same solve.
        t_star = end * (0.001 + 0.998 * float(torch.rand(()))) if local else None
        times = [0.0, end] if t_star is None else [0.0, t_star, end]
        sol = solve(
            self.func,
            augment(x, self.augment_dim),
            torch.tensor(times, dtype=x.dtype, device=x.device),
            solver=self.solver,
            controller=self.controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            regularizers=integrals,
        )
        self.stats = sol.stats
        self.regularization = dict(sol.regularization)
        ys: Any = sol.ys
        if t_star is not None:
            # One step of the solve's own size (its mean accepted step) from y(t*). Its
            # evaluations of f are not in stats.nfe (that counts the solve's); they show
            # in the training time.
            dt = end / max(sol.stats.accepted, 1)
            errors = local_error(self.func, self.solver or Dopri5(),
                                 self.controller or PIDController(), t_star, ys[1], dt)  # fmt: skip
            for reg in local:
                self.regularization[reg.name] = errors.sum()
        return ys[-1][:, : x.shape[1]] if self.augment_dim else ys[-1]


def augment(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` ``(B, C, ...)`` with ``k`` zero channels appended: ``(B, C + k, ...)``."""
    if not k:
        return x
    if x.ndim < 2:
        raise ValueError(
            f"augment_dim pads channels along dim 1 of a batch (B, C, ...), got an input of "
            f"shape {tuple(x.shape)}; add a batch dimension or use augment_dim=0"
        )
    return torch.cat([x, x.new_zeros((x.shape[0], k, *x.shape[2:]))], dim=1)


def check_steer(steer: object, span: float, name: str = "steer") -> float:
    """``steer`` as a float in ``[0, |span|)`` (STEER's half-width against the time span).

    ``name`` is how the caller spells the argument in the message (e.g. ``--steer``).
    """
    if isinstance(steer, bool) or not isinstance(steer, (int, float)):
        raise TypeError(f"{name} must be a float (the half-width b of STEER), got {steer!r}")
    if not (math.isfinite(steer) and 0 <= steer < abs(span)):
        raise ValueError(
            f"{name} must lie in [0, {abs(span):g}) (below the length of the time span, so "
            f"that the end time never reaches the start), got {steer!r}; 0 turns it off"
        )
    return float(steer)


def steered_time(
    t1: float, steer: float, training: bool, generator: torch.Generator | None = None
) -> float:
    """``t1``, or in training with ``steer > 0`` a uniform draw from ``t1 ± steer``.

    STEER (Ghosh et al. 2020) draws the end time afresh for every training batch, from
    ``generator`` or torch's global one (which the training loop seeds per epoch, so a
    resumed run draws alike); the fixed ``t1`` is used for evaluation.
    """
    if not (training and steer):
        return float(t1)
    return float(t1) + steer * (2.0 * float(torch.rand((), generator=generator)) - 1.0)
