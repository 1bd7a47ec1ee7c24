"""The paper's MNIST classifiers (Table 1) at any width (torchdiffeq's odenet_mnist.py).

All convolutional models share the downsampling stem (28 → 26 → 13 → 6) and the head; they
differ only in the feature block between them. Parameter counts at width 64: ResNet-6
576,778, ODE-Net 208,266, ResNet-1 206,858 (docs/protocols.md, P1).
"""

from __future__ import annotations

from typing import cast

from torch import nn

from ..adjoints import AbstractAdjoint
from ..controllers import AbstractController, ConstantStepSize, PIDController
from ..solvers import RK4, AbstractSolver
from .layers import ConvODEFunc, ResBlock, group_norm
from .ode_block import ODEBlock


def _stem(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, 1),
        group_norm(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 4, 2, 1),
        group_norm(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 4, 2, 1),
    )


def _head(width: int, classes: int) -> nn.Sequential:
    return nn.Sequential(
        group_norm(width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


class _ConvClassifier(nn.Sequential):
    def __init__(self, width: int, classes: int, features: nn.Module) -> None:
        super().__init__(_stem(width), features, _head(width, classes))


class ResNet(_ConvClassifier):
    """Stem, ``blocks`` pre-activation residual blocks, head.

    ``blocks=6`` is the paper's ResNet; ``blocks=1`` is the equal-size control that
    matches the ODE-Net's parameter count.
    """

    def __init__(self, width: int = 64, blocks: int = 6, classes: int = 10) -> None:
        super().__init__(width, classes, nn.Sequential(*(ResBlock(width) for _ in range(blocks))))


class ODENet(_ConvClassifier):
    """Stem, one ODE block on ``t ∈ [0, 1]``, head (the paper's ODE-Net).

    Defaults follow the paper: Dopri5 at ``rtol = atol = 1e-3``. Pass
    ``adjoint=BacksolveAdjoint()`` for the O(1)-memory training of Table 1.
    ``augment_dim`` and ``steer`` are the :class:`ODEBlock`'s (ANODE's extra channels,
    STEER's random end time); the ODE function is then ``width + augment_dim`` channels
    wide.
    """

    def __init__(
        self,
        width: int = 64,
        classes: int = 10,
        *,
        solver: AbstractSolver | None = None,
        controller: AbstractController | None = None,
        adjoint: AbstractAdjoint | None = None,
        augment_dim: int = 0,
        steer: float = 0.0,
    ) -> None:
        controller = controller or PIDController(rtol=1e-3, atol=1e-3)
        block = ODEBlock(
            ConvODEFunc(width + check_augment_dim(augment_dim)),
            solver=solver, controller=controller, adjoint=adjoint, augment_dim=augment_dim,
            steer=steer,
        )  # fmt: skip
        super().__init__(width, classes, block)

    @property
    def ode_block(self) -> ODEBlock:
        """The ODE block (to read its statistics or change its tolerance)."""
        return cast(ODEBlock, self[1])


def check_augment_dim(augment_dim: int, name: str = "augment_dim") -> int:
    """``augment_dim`` if it is an integer ≥ 0; ``name`` spells it in the message."""
    if isinstance(augment_dim, bool) or not isinstance(augment_dim, int) or augment_dim < 0:
        raise ValueError(f"{name} must be an integer ≥ 0 (0: off), got {augment_dim!r}")
    return augment_dim


class RKNet(ODENet):
    """The ODE-Net's architecture integrated by fixed RK4 steps with backpropagation."""

    def __init__(self, width: int = 64, classes: int = 10, step: float = 0.25) -> None:
        super().__init__(width, classes, solver=RK4(), controller=ConstantStepSize(step))


def zero_residual_branches(model: nn.Module) -> nn.Module:
    """Start every residual branch at zero: each model begins as its stem and head.

    Zeroes the last convolution of each :class:`ResBlock` and the scale of the last group
    norm of each :class:`ConvODEFunc` (so ``dh/dt = 0``; Goyal et al. 2017 do the same for
    the last batch norm of a residual block). The paper's ODE function ends in a group norm,
    so at the default initialisation its ``dh/dt`` has unit size per channel whatever the
    state, and the ODE block starts by overwriting the stem's features; a residual block
    ends in a convolution and starts small. Gradients still reach every weight once the
    zeroed one has moved. Returns ``model``.
    """
    for module in model.modules():
        if isinstance(module, ResBlock):
            nn.init.zeros_(module.conv2.weight)
        elif isinstance(module, ConvODEFunc):
            nn.init.zeros_(module.norm3.weight)
    return model


class MLP(nn.Sequential):
    """The 1-layer MLP baseline of Table 1 (LeCun et al. 1998): 784 → 300 → 10."""

    def __init__(self, hidden: int = 300, classes: int = 10, pixels: int = 784) -> None:
        super().__init__(
            nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )
