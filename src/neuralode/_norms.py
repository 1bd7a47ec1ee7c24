"""Error norms on the flat state (and, in per-sample mode, on each row)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Norm = Callable[[torch.Tensor], torch.Tensor]


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square over every component (joint error control).

    Hairer, Nørsett & Wanner I, eq. (4.11); the default of torchdiffeq, scipy and diffrax.
    """
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


def max_norm(x: torch.Tensor) -> torch.Tensor:
    """Largest absolute component."""
    return torch.linalg.vector_norm(x, ord=math.inf)
