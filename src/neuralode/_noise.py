"""Hutchinson's probe vectors, for the CNF's trace and the Jacobian regulariser alike."""

from __future__ import annotations

import torch

# E[εεᵀ] = I for both. Rademacher (±1) never has the larger variance (Hutchinson 1990).
NOISES = ("rademacher", "gaussian")


def check_noise(kind: str) -> None:
    """Refuse a noise that is not one of :data:`NOISES`."""
    if kind not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}, got {kind!r}")


def probe(kind: str, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of ``ε`` shaped like ``like`` (its dtype and device), every entry independent."""
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
    return bits.to(like.dtype) * 2 - 1
