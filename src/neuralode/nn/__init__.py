"""Neural-network models built on the solvers: ODE blocks and the paper's classifiers."""

from .classifiers import MLP, ODENet, ResNet, RKNet
from .layers import ConcatConv2d, ConvODEFunc, ResBlock, group_norm
from .ode_block import ODEBlock

__all__ = [
    "MLP",
    "ConcatConv2d",
    "ConvODEFunc",
    "ODEBlock",
    "ODENet",
    "RKNet",
    "ResBlock",
    "ResNet",
    "group_norm",
]
