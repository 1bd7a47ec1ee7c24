"""Neural-network models built on the solvers: ODE blocks, classifiers, normalizing flows."""

from .classifiers import MLP, ODENet, ResNet, RKNet
from .cnf import CNF, BaseDistribution, GaussianBase
from .cnf_dynamics import ConcatLinear, ConcatSquashLinear, MLPDynamics, PlanarDynamics
from .density_estimation import (
    FLOW_FRACTIONS,
    DensityModel,
    FlowSnapshots,
    density_grid,
    evaluate_kl,
    evaluate_nll,
    flow_snapshots,
    nll_loss,
    reverse_kl_loss,
    solver_metrics,
)
from .layers import ConcatConv2d, ConvODEFunc, ResBlock, group_norm
from .ode_block import ODEBlock
from .planar_flow import PlanarFlow, PlanarLayer
from .traces import AbstractTrace, ExactTrace, HutchinsonTrace

__all__ = [
    "CNF",
    "FLOW_FRACTIONS",
    "MLP",
    "AbstractTrace",
    "BaseDistribution",
    "ConcatConv2d",
    "ConcatLinear",
    "ConcatSquashLinear",
    "ConvODEFunc",
    "DensityModel",
    "ExactTrace",
    "FlowSnapshots",
    "GaussianBase",
    "HutchinsonTrace",
    "MLPDynamics",
    "ODEBlock",
    "ODENet",
    "PlanarDynamics",
    "PlanarFlow",
    "PlanarLayer",
    "RKNet",
    "ResBlock",
    "ResNet",
    "density_grid",
    "evaluate_kl",
    "evaluate_nll",
    "flow_snapshots",
    "group_norm",
    "nll_loss",
    "reverse_kl_loss",
    "solver_metrics",
]
