"""Vector fields and failing problems that several test modules solve.

Kept in one place so that the eager, compiled and ``sync_every`` tests run exactly the
same problems and compare their answers.
"""

from __future__ import annotations

import math

import torch

D = torch.float64


def van_der_pol(t, y, mu):
    """Van der Pol with one ``mu`` per row (per-sample ``args``)."""
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu * (1 - x**2) * v - x], -1)


class RowMixingMLP(torch.nn.Module):
    """A field that mixes the rows of its (batch, dim) state (as joint mode allows)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(3, 16, generator=gen, dtype=D))
        self.w2 = torch.nn.Parameter(torch.randn(16, 3, generator=gen, dtype=D) / 4)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ self.w1) @ self.w2 - y.mean(0) * torch.cos(t)


def blows_up(t, y, k):
    return k[:, None] * y**2  # y = 1 / (1 - k t): sample k > 0 blows up at t = 1 / k


def nan_after(t, y, t_bad):
    return torch.where((t > t_bad)[:, None], torch.full_like(y, math.nan), -y)


# Per-sample problems in which some samples fail: (f, y0, ts, args, solve options).
PER_SAMPLE_FAILURES = {
    "blow-up": (blows_up, torch.ones(4, 1, dtype=D), torch.linspace(0.0, 2.0, 9, dtype=D),
                torch.tensor([-1.0, 2.0, -0.5, -3.0], dtype=D), {}),
    "nan": (nan_after, torch.ones(3, 2, dtype=D), torch.linspace(0.0, 1.0, 5, dtype=D),
            torch.tensor([math.inf, 0.3, math.inf], dtype=D), {}),
    "max-steps": (van_der_pol, torch.tensor([[2.0, 0.0], [2.0, 0.0]], dtype=D),
                  torch.tensor([0.0, 1.0], dtype=D), torch.tensor([1.0, 1000.0], dtype=D),
                  {"max_steps": 200}),
}  # fmt: skip
