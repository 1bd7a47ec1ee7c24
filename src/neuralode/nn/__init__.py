"""Neural-network models built on the solvers: ODE blocks, classifiers, latent ODEs."""

from .classifiers import MLP, ODENet, ResNet, RKNet
from .encoders import ODERNNEncoder, RecognitionRNN
from .latent import LatentDynamics, LatentODE
from .layers import ConcatConv2d, ConvODEFunc, ResBlock, group_norm
from .ode_block import ODEBlock
from .rnn_baseline import RNNBaseline
from .sequence import (
    SequenceModel,
    evaluate_extrapolation,
    gaussian_log_likelihood,
    kl_to_standard_normal,
    mlp,
)

__all__ = [
    "MLP",
    "ConcatConv2d",
    "ConvODEFunc",
    "LatentDynamics",
    "LatentODE",
    "ODEBlock",
    "ODENet",
    "ODERNNEncoder",
    "RKNet",
    "RNNBaseline",
    "RecognitionRNN",
    "ResBlock",
    "ResNet",
    "SequenceModel",
    "evaluate_extrapolation",
    "gaussian_log_likelihood",
    "group_norm",
    "kl_to_standard_normal",
    "mlp",
]
