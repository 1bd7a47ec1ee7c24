"""Shared test problems with closed-form solutions (float64, no global state changed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from scipy.special import ellipj


@dataclass(frozen=True)
class ExactProblem:
    """``y' = f(t, y)``, ``y(0) = y0``, with the exact solution ``exact(t) -> (len(t), n)``."""

    name: str
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    y0: tuple[float, ...]
    exact: Callable[[np.ndarray], np.ndarray]

    def y0_tensor(self) -> torch.Tensor:
        return torch.tensor(self.y0, dtype=torch.float64)


def _rigid_body(t, y):
    # Euler's rigid body (Krogh; DETEST B5): nonlinear, autonomous, bounded.
    return torch.stack([y[1] * y[2], -y[0] * y[2], -0.51 * y[0] * y[1]])


def _rigid_body_exact(t):
    sn, cn, dn, _ = ellipj(np.asarray(t, dtype=np.float64), 0.51)
    return np.stack([sn, cn, dn], axis=-1)


def _forced(t, y):
    # Non-autonomous: a Riccati equation, a forced decay and a forced linear equation.
    c, s = torch.cos(t), torch.sin(t)
    return torch.stack([c * y[0] ** 2, -y[1] + s, c * y[2] + s * c])


def _forced_exact(t):
    t = np.asarray(t, dtype=np.float64)
    s, c = np.sin(t), np.cos(t)
    return np.stack([1 / (2 - s), (s - c) / 2 + 1.5 * np.exp(-t), 2 * np.exp(s) - 1 - s], -1)


RIGID_BODY = ExactProblem("rigid_body", _rigid_body, (0.0, 1.0, 1.0), _rigid_body_exact)
FORCED = ExactProblem("forced", _forced, (0.5, 1.0, 1.0), _forced_exact)


@pytest.fixture(params=[RIGID_BODY, FORCED], ids=lambda p: p.name)
def exact_problem(request) -> ExactProblem:
    """An autonomous and a non-autonomous problem with known solutions."""
    return request.param
