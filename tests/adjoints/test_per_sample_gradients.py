"""Gradients in per-sample mode (batch_dims=1), for every gradient method.

gradcheck in float64 with y0, parameters and per-sample output times; batch invariance
of the gradient (each sample's gradient is its gradient alone); agreement between the
methods. Tolerances as in test_gradients.py: adaptive steps move with the inputs under
finite differences by about the solver tolerance (1e-10 here).
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import neuralode as no
from generic import EACH_ADJOINT

D = torch.float64
TIGHT = no.PIDController(rtol=1e-10, atol=1e-10)
METHODS = EACH_ADJOINT


def field(t, y, scale, W, b):
    """Nonlinear, non-autonomous, with a per-sample constant ``scale`` (an arg)."""
    return scale[:, None] * torch.tanh(y @ W.T + b) + 0.1 * torch.sin(t)[:, None] * y


def inputs(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(batch, 2, dtype=D, generator=g)
    W = 0.5 * torch.randn(2, 2, dtype=D, generator=g)
    b = 0.2 * torch.randn(2, dtype=D, generator=g)
    scale = torch.linspace(0.5, 3.0, batch, dtype=D)
    start = 0.3 * torch.rand(batch, 1, dtype=D, generator=g)
    ts = start + torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=D) * (1 + scale[:, None] / 4)
    return y0, W, b, scale, ts


def solve_fn(method: str, scale: torch.Tensor):
    def fn(y0, W, b, ts):
        return no.solve(
            lambda t, y, s: field(t, y, s, W, b),
            y0,
            ts,
            controller=TIGHT,
            adjoint=METHODS[method],
            params=[W, b],
            batch_dims=1,
            args=scale,
        ).ys

    return fn


def leaves(*tensors):
    return tuple(t.detach().clone().requires_grad_(True) for t in tensors)


@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_y0_params_and_per_sample_times(method):
    y0, W, b, scale, ts = inputs()
    fast = method == "backsolve"  # the slowest backward: gradcheck's random projection
    assert gradcheck(
        solve_fn(method, scale),
        leaves(y0, W, b, ts),
        eps=1e-6,
        atol=2e-7,
        rtol=1e-6,
        fast_mode=fast,
    )


@pytest.mark.parametrize("method", list(METHODS))
def test_gradcheck_shared_output_times(method):
    y0, W, b, scale, _ = inputs(batch=2)
    W, b = leaves(W, b)
    fn = solve_fn(method, scale)
    ts = torch.tensor([0.0, 0.4, 1.0], dtype=D, requires_grad=True)
    assert gradcheck(lambda ts: fn(y0, W, b, ts), (ts,), eps=1e-6, atol=2e-7, rtol=1e-6)


def gradients(method: str, y0, W, b, scale, ts, weights):
    y0, W, b = leaves(y0, W, b)
    ys = solve_fn(method, scale)(y0, W, b, ts)
    return torch.autograd.grad(torch.sum(ys * weights), (y0, W, b))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_samples_gradient_equals_its_gradient_alone(method):
    y0, W, b, scale, ts = inputs(batch=4)
    weights = torch.randn(ts.shape[1], 4, 2, dtype=D, generator=torch.Generator().manual_seed(3))
    g_y0, g_W, g_b = gradients(method, y0, W, b, scale, ts, weights)
    sum_W, sum_b = torch.zeros_like(W), torch.zeros_like(b)
    for i in range(4):
        s = slice(i, i + 1)
        a_y0, a_W, a_b = gradients(method, y0[s], W, b, scale[s], ts[s], weights[:, s])
        torch.testing.assert_close(g_y0[s], a_y0, rtol=1e-12, atol=1e-12)
        sum_W += a_W
        sum_b += a_b
    torch.testing.assert_close(g_W, sum_W, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(g_b, sum_b, rtol=1e-11, atol=1e-12)


def test_methods_agree():
    y0, W, b, scale, ts = inputs(batch=4, seed=1)
    weights = torch.randn(ts.shape[1], 4, 2, dtype=D, generator=torch.Generator().manual_seed(4))
    direct = gradients("direct", y0, W, b, scale, ts, weights)
    checkpoint = gradients("checkpoint", y0, W, b, scale, ts, weights)
    backsolve = gradients("backsolve", y0, W, b, scale, ts, weights)
    for d, c, s in zip(direct, checkpoint, backsolve, strict=True):
        torch.testing.assert_close(c, d, rtol=1e-12, atol=1e-12)  # both exact, discrete
        torch.testing.assert_close(s, d, rtol=1e-7, atol=1e-8)  # adjoint ODE, tol 1e-10


def test_backsolve_counts_its_backward_work_and_module_parameters():
    module = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    module = module.to(D)
    y0 = torch.randn(5, 2, dtype=D, requires_grad=True)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=D)
    grads = []
    for method in ("direct", "backsolve"):
        sol = no.solve(
            lambda t, y: module(y),
            y0,
            ts,
            controller=TIGHT,
            batch_dims=1,
            adjoint=METHODS[method],
            params=list(module.parameters()),
        )
        grads.append(torch.autograd.grad(sol.ys.square().sum(), (y0, *module.parameters())))
        if method == "backsolve":
            assert sol.stats.nfe_backward > 0
    for d, s in zip(*grads, strict=True):
        torch.testing.assert_close(s, d, rtol=1e-7, atol=1e-8)
