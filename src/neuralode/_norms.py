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


def rows_norm(norm: Norm) -> Norm:
    """``norm`` applied to each row of a ``(B, N)`` tensor separately: ``(B,)``.

    The per-sample mode's error norm: each sample's error is measured against its own
    tolerance, not averaged with its neighbours'. The built-in norms have a direct
    row-wise form; any other norm is mapped over the rows with :func:`torch.vmap`.
    """
    if norm is rms_norm:
        return _rows_rms
    if norm is max_norm:
        return _rows_max
    return torch.vmap(norm)


def _rows_rms(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=-1) / math.sqrt(max(x.shape[-1], 1))


def _rows_max(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, ord=math.inf, dim=-1)
