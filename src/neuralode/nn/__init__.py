"""Neural-network models built on the solvers: ODE blocks, classifiers, latent ODEs, CNFs."""

from .classifiers import MLP, ODENet, ResNet, RKNet, zero_residual_branches
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
from .encoders import ODERNNEncoder, RecognitionRNN
from .latent import LatentDynamics, LatentODE
from .layers import ConcatConv2d, ConvODEFunc, ResBlock, group_norm
from .ode_block import ODEBlock
from .planar_flow import PlanarFlow, PlanarLayer
from .rnn_baseline import RNNBaseline
from .sequence import (
    SequenceModel,
    evaluate_extrapolation,
    gaussian_log_likelihood,
    kl_to_standard_normal,
    mlp,
)
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
    "LatentDynamics",
    "LatentODE",
    "MLPDynamics",
    "ODEBlock",
    "ODENet",
    "ODERNNEncoder",
    "PlanarDynamics",
    "PlanarFlow",
    "PlanarLayer",
    "RKNet",
    "RNNBaseline",
    "RecognitionRNN",
    "ResBlock",
    "zero_residual_branches",
    "ResNet",
    "SequenceModel",
    "density_grid",
    "evaluate_extrapolation",
    "evaluate_kl",
    "evaluate_nll",
    "flow_snapshots",
    "gaussian_log_likelihood",
    "group_norm",
    "kl_to_standard_normal",
    "mlp",
    "nll_loss",
    "reverse_kl_loss",
    "solver_metrics",
]
