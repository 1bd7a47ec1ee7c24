"""The solver's own local error estimate as a penalty (Pal et al., ICML 2021 and 2023)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..controllers import AbstractController, PIDController
from ..solvers import AbstractSolver
from ..solvers._explicit_rk import weighted_sum


@dataclass(frozen=True)
class LocalError:
    """The error estimate of one solver step, taken from the solution at a random time.

    Pal et al. (ICML 2021) penalise the local error estimates of every accepted step,
    which needs gradients through the solver's internals (backpropagation through the
    solver only). Their local variant (ICML 2023) estimates the same quantity at one
    random time ``t*`` per training step: the solution ``y(t*)`` is an output of the
    solve (so every gradient method differentiates it), and one step of the same
    solver from there, with autograd on, gives ``E = rms(y_error / (atol + rtol·|y|))``
    per sample, the ratio the step-size controller compares with 1. Small ``E`` lets the
    solver take longer steps. It is not an integral along the trajectory, so it is not an
    :class:`AbstractRegularizer`: the :class:`~neuralode.nn.ODEBlock` takes it in its
    ``regularizers`` and draws ``t*`` in training mode.

    Attributes:
        name: Key of the value in the block's ``regularization``.
    """

    name: str = "local_error"


def local_error(
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    solver: AbstractSolver,
    controller: AbstractController,
    t: float,
    y: torch.Tensor,
    dt: float,
) -> torch.Tensor:
    """The scaled error estimate of one step of ``solver`` from ``(t, y)``, per sample.

    Differentiable in ``y`` and in ``f``'s parameters: the stages are evaluated with
    autograd on and combined with the tableau's error weights (the solver's own step
    keeps its estimate out of the graph, since step-size control is not differentiated).
    The scale ``atol + rtol·max(|y|, |y1|)`` is held constant, as in the controller.

    Args:
        f: The vector field ``f(t, y)`` on the state's shape (``t`` a 0-d tensor).
        solver: An explicit Runge–Kutta solver with an embedded error estimate.
        controller: A :class:`PIDController` (its ``rtol`` and ``atol`` scale the error).
        t: Start of the step.
        y: State at ``t``, ``(B, ...)``: one value per leading row.
        dt: Step size.

    Returns:
        ``(B,)``: the RMS over each row of the scaled error estimate.
    """
    weights = solver.error_weights
    if weights is None:
        raise TypeError(
            "LocalError needs a solver whose error estimate is a sum of its stages (e.g. "
            f"Dopri5(), Tsit5()), got {type(solver).__name__}"
        )
    if not isinstance(controller, PIDController):
        raise TypeError(
            "LocalError scales the error by the tolerances of a PIDController, got "
            f"{type(controller).__name__}; use PIDController(rtol=..., atol=...)"
        )
    rtol, atol = controller.tolerances()
    if not all(isinstance(tol, (float, int, torch.Tensor)) for tol in (rtol, atol)):
        raise TypeError("LocalError needs rtol and atol as floats or tensors shaped like y")

    def field(s: Any, x: torch.Tensor) -> torch.Tensor:
        return f(torch.as_tensor(s, dtype=x.dtype, device=x.device), x)

    with torch.enable_grad():
        step = solver.step(field, t, y, field(t, y), dt)
        error = weighted_sum(step.k, [w * dt for w in weights])
    scale = (torch.maximum(y.abs(), step.y1.abs()) * rtol + atol).detach()
    return (error / scale).square().flatten(1).mean(-1).sqrt()
