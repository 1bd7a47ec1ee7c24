"""Building blocks of the paper's image classifiers (torchdiffeq's odenet_mnist.py)."""

from __future__ import annotations

from math import gcd

import torch
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """``GroupNorm(min(32, C), C)``, the normalisation used throughout the paper's models.

    A ``C`` above 32 that 32 does not divide (an ANODE-augmented ODE function, e.g.
    32 + 8 channels) gets ``gcd(32, C)`` groups instead, the most that divide it.
    """
    groups = min(32, channels) if channels <= 32 or channels % 32 == 0 else gcd(32, channels)
    return nn.GroupNorm(groups, channels)


class ConcatConv2d(nn.Module):
    """A 2-D convolution that sees time: a constant channel equal to ``t`` is appended.

    Args:
        channels_in: Input channels (excluding the time channel).
        channels_out: Output channels.
        kernel_size: Convolution kernel size.
        stride: Convolution stride.
        padding: Zero padding.
    """

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in + 1, channels_out, kernel_size, stride, padding)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``[x, t]`` (``x`` of shape ``(B, C, H, W)``)."""
        time = t.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])  # (B, 1, H, W)
        return self.conv(torch.cat([x, time], dim=1))


class ConvODEFunc(nn.Module):
    """The paper's ODE function: GN → ReLU → ConcatConv → GN → ReLU → ConcatConv → GN.

    Args:
        channels: Channels of the state ``(B, C, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = ConcatConv2d(channels, channels)
        self.norm2 = group_norm(channels)
        self.conv2 = ConcatConv2d(channels, channels)
        self.norm3 = group_norm(channels)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``dx/dt`` at time ``t``."""
        out = self.conv1(t, torch.relu(self.norm1(x)))
        out = self.conv2(t, torch.relu(self.norm2(out)))
        return self.norm3(out)


class ResBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(relu(GN(conv(relu(GN(x))))))``.

    Args:
        channels: Channels in and out.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One residual update."""
        out = self.conv1(torch.relu(self.norm1(x)))
        return x + self.conv2(torch.relu(self.norm2(out)))
