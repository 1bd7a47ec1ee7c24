"""A validated initial-value problem on the flat state."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._vector_field import Structure, VectorField


@dataclass(frozen=True)
class Problem:
    """Everything the step loop needs, in its own terms.

    The loop runs in forward time ``tau = direction * t``, so reverse-time solves share
    every code path with forward ones; solvers are called with the signed time and step.

    Attributes:
        f: The vector field on the flat state.
        y0: Initial state as the solver's tensor (``y0`` itself, or the concatenated
            tuple).
        f0: ``f(t0, y0)`` from the boundary check (already counted in ``f.nfe``).
        ts: The output times as given.
        taus: Output times in forward time, as Python floats (increasing).
        direction: ``+1.0`` for increasing ``ts``, ``-1.0`` for decreasing.
        structure: How to flatten and restore the state.
        params: Tensors to differentiate ``f`` with respect to, as given to ``solve``
            (``None``: the parameters of ``f`` if it is an ``nn.Module``).
        sample_taus: Per-sample mode only: ``(B, T)`` float64 output times of each sample
            in forward time (``taus`` is then empty). ``None`` in joint mode.
        compiled: Per-sample mode only: run each step's tensor work through
            ``torch.compile``.
    """

    f: VectorField
    y0: torch.Tensor
    f0: torch.Tensor
    ts: torch.Tensor
    taus: tuple[float, ...]
    direction: float
    structure: Structure
    params: tuple[torch.Tensor, ...] | None = None
    sample_taus: torch.Tensor | None = None
    compiled: bool = False

    @property
    def batched(self) -> bool:
        """Whether this is a per-sample problem (the leading dim holds independent samples)."""
        return self.sample_taus is not None
