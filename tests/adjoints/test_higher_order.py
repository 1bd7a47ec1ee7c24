"""Second derivatives through solve(): every gradient method, joint and per-sample mode.

``torch.autograd.grad(..., create_graph=True)`` must return a first gradient whose own
derivative is right. For each method the Hessian-vector product (autograd through the
first gradient) is compared with central finite differences of that method's own first
gradient, in float64, with respect to ``y0``, the parameters of an ``nn.Module`` field,
and both at once, over more than two output times. ``gradgradcheck`` runs on a tiny
problem with a plain function and ``params=``.

What each method's second derivative means: DirectAdjoint and CheckpointAdjoint give the
exact Hessian of the discrete solution (Checkpoint recomputes the forward with Direct's
graph), so fixed steps match finite differences to O(eps²); BacksolveAdjoint gives the
exact derivative of the gradient it returns (its backward solve, step sizes frozen),
which finite differences of that gradient see to within the solve tolerance. Adaptive
steps move with the inputs by about the tolerance (1e-10 here), which the finite
differences (eps 1e-4) see as ~1e-6 relative at most.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradgradcheck

import neuralode as no
from generic import ALL_ADJOINTS

D = torch.float64
TIGHT = no.PIDController(rtol=1e-10, atol=1e-10)
METHODS = ALL_ADJOINTS
# (solver, controller, batch_dims): fixed steps (exact discrete derivatives), adaptive
# steps, and the per-sample mode (adaptive by definition) with per-sample output times.
SETTINGS = {
    "rk4": (no.RK4(), no.ConstantStepSize(0.05), 0),
    "dopri5": (no.Dopri5(), TIGHT, 0),
    "per_sample": (no.Dopri5(), TIGHT, 1),
}
EPS = 1e-4
# Relative to the largest entry of the Hessian-vector product. Measured worst cases:
# fixed steps ~5e-9, adaptive ~4e-8 (joint) and ~1e-7 (per-sample); the bugs this guards
# against are O(1) (Checkpoint's came out 75% off, Backsolve's 10–50%).
HVP_RTOL = {"rk4": 1e-7, "dopri5": 1e-6, "per_sample": 1e-6}
# Backsolve with fixed steps: the loss's own curvature reaches y0 and θ through
# backsolve's first-order vector-Jacobian product, which differs from the exact one by
# O(dt^4) (see test_backsolve_second_derivative_is_exact_for_a_linear_loss): measured
# 3.5e-7 relative at dt = 0.05 (and 16x that at dt = 0.1).
BACKSOLVE_FIXED_RTOL = 2e-6


class Field(torch.nn.Module):
    """A small non-autonomous MLP field; rows independent (per-sample mode needs that)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(0.8 * torch.randn(4, 2, dtype=D, generator=g))
        self.b1 = torch.nn.Parameter(0.2 * torch.randn(4, dtype=D, generator=g))
        self.w2 = torch.nn.Parameter(0.8 * torch.randn(2, 4, dtype=D, generator=g))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        scale = 1.0 + 0.3 * torch.sin(t)
        scale = scale[:, None] if scale.ndim else scale  # (b,) times in per-sample mode
        return scale * torch.tanh(y @ self.w1.T + self.b1) @ self.w2.T


def problem(setting: str):
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(3, 2, dtype=D, generator=g)
    ts = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=D)
    if SETTINGS[setting][2]:
        ts = ts * torch.tensor([[1.0], [1.3], [0.8]], dtype=D)  # (B, T): own times each
    weights = torch.randn(4, 3, 2, dtype=D, generator=g)
    return y0, ts, weights


def first_gradient(method, setting, f, y0, ts, weights, *, create_graph):
    """``∇L`` w.r.t. ``(y0, *f.parameters())`` for a loss with a non-trivial Hessian."""
    solver, controller, batch_dims = SETTINGS[setting]
    sol = no.solve(
        f, y0, ts, solver=solver, controller=controller, adjoint=METHODS[method],
        batch_dims=batch_dims,
    )  # fmt: skip
    loss = torch.sum(weights * sol.ys) + torch.sum(sol.ys**3) / 3
    return torch.autograd.grad(loss, (y0, *f.parameters()), create_graph=create_graph)


def directions(f, y0, which: str):
    g = torch.Generator().manual_seed(2)
    v = [torch.randn(x.shape, dtype=D, generator=g) for x in (y0, *f.parameters())]
    if which == "y0":
        v[1:] = [torch.zeros_like(x) for x in v[1:]]
    elif which == "params":
        v[0] = torch.zeros_like(v[0])
    return v


def finite_difference_hvp(method, setting, v):
    y0, ts, weights = problem(setting)
    out = []
    for sign in (1.0, -1.0):
        f = Field()
        with torch.no_grad():
            for p, vp in zip(f.parameters(), v[1:], strict=True):
                p.add_(sign * EPS * vp)
        start = (y0 + sign * EPS * v[0]).requires_grad_(True)
        out.append(first_gradient(method, setting, f, start, ts, weights, create_graph=False))
    return [(a - b) / (2 * EPS) for a, b in zip(*out, strict=True)]


def autograd_hvp(method, setting, which):
    f = Field()
    y0, ts, weights = problem(setting)
    y0.requires_grad_(True)
    v = directions(f, y0, which)
    grads = first_gradient(method, setting, f, y0, ts, weights, create_graph=True)
    dot = sum(torch.sum(g * vi) for g, vi in zip(grads, v, strict=True))
    return torch.autograd.grad(dot, (y0, *f.parameters())), v


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("which", ["y0", "params", "both"])
def test_hessian_vector_product_matches_finite_differences(method, setting, which):
    hvp, v = autograd_hvp(method, setting, which)
    fd = finite_difference_hvp(method, setting, v)
    scale = max(float(x.abs().max()) for x in fd)
    assert scale > 1e-2  # a real second derivative, not a trivially zero one
    err = max(float((a - b).abs().max()) for a, b in zip(hvp, fd, strict=True))
    rtol = HVP_RTOL[setting]
    if method.startswith("backsolve") and setting == "rk4":
        rtol = BACKSOLVE_FIXED_RTOL
    assert err <= rtol * scale, (err, scale)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", ["backsolve", "backsolve_seminorm"])
def test_backsolve_second_derivative_is_exact_for_a_linear_loss(method, setting):
    # With a loss linear in the outputs, backsolve's gradient G depends on y0 and θ only
    # through its own solves, which the differentiable backward records exactly: the
    # Hessian-vector product is uᵀ(∂G/∂x)v to the accuracy of the finite differences.
    f = Field()
    y0, ts, weights = problem(setting)
    y0.requires_grad_(True)
    v = directions(f, y0, "both")
    u = [torch.randn(x.shape, dtype=D, generator=torch.Generator().manual_seed(5)) for x in v]

    def gradient(f, y0, create_graph):
        solver, controller, batch_dims = SETTINGS[setting]
        sol = no.solve(
            f, y0, ts, solver=solver, controller=controller, adjoint=METHODS[method],
            batch_dims=batch_dims,
        )  # fmt: skip
        loss = torch.sum(weights * sol.ys)
        return torch.autograd.grad(loss, (y0, *f.parameters()), create_graph=create_graph)

    grads = gradient(f, y0, True)
    dot = sum(torch.sum(g * ui) for g, ui in zip(grads, u, strict=True))
    hvp = torch.autograd.grad(dot, (y0, *f.parameters()))
    autograd = sum(float(torch.sum(h * vi)) for h, vi in zip(hvp, v, strict=True))
    # Fixed steps: a smaller eps, so that the O(eps²) truncation (6e-8 relative at 1e-4)
    # sits below the tolerance; adaptive steps move by ~1e-10 / eps under the difference.
    eps, tol = (1e-5, 1e-8) if setting == "rk4" else (EPS, 1e-6)
    ends = []
    for sign in (1.0, -1.0):
        moved = Field()
        with torch.no_grad():
            for p, vp in zip(moved.parameters(), v[1:], strict=True):
                p.add_(sign * eps * vp)
        start = (y0.detach() + sign * eps * v[0]).requires_grad_(True)
        ends.append(gradient(moved, start, False))
    fd = sum(float(torch.sum((a - b) * ui)) / (2 * eps) for a, b, ui in zip(*ends, u, strict=True))
    assert abs(autograd - fd) <= tol * abs(fd), (autograd, fd)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", ["backsolve", "checkpoint"])
def test_hessian_equals_direct(method, setting):
    # Checkpoint's Hessian is Direct's (to rounding); Backsolve's is its own gradient's
    # derivative, within the solve tolerance of Direct's.
    hvp, _ = autograd_hvp(method, setting, "both")
    reference, _ = autograd_hvp("direct", setting, "both")
    scale = max(float(x.abs().max()) for x in reference)
    err = max(float((a - b).abs().max()) for a, b in zip(hvp, reference, strict=True))
    bound = 1e-11 if method == "checkpoint" else (1e-4 if setting == "rk4" else 1e-7)
    assert err <= bound * scale, (err, scale)


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", list(METHODS))
def test_create_graph_leaves_the_first_gradient_unchanged(method, setting):
    f = Field()
    y0, ts, weights = problem(setting)
    y0.requires_grad_(True)
    plain = first_gradient(method, setting, f, y0, ts, weights, create_graph=False)
    graphed = first_gradient(method, setting, f, y0, ts, weights, create_graph=True)
    assert all(not g.requires_grad for g in plain)
    assert all(g.requires_grad for g in graphed)
    for a, b in zip(plain, graphed, strict=True):
        if method.startswith("backsolve") and setting != "per_sample":
            assert torch.equal(a, b)  # the same backward solve, now recorded
        else:
            # Checkpoint: Direct's gradient; per-sample backsolve: θ summed stage by stage.
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def tiny_field(t, y, W, b):
    return torch.tanh(y @ W.T + b) + 0.1 * torch.sin(t) * y


def tiny_solve(method: str, setting: str):
    solver, controller, batch_dims = SETTINGS[setting]
    ts = torch.tensor([0.0, 0.25, 0.5, 0.8], dtype=D)
    if batch_dims:
        ts = ts * torch.tensor([[1.0], [1.2]], dtype=D)
        field = tiny_field_rows
    else:
        field = tiny_field

    def fn(y0, W, b):
        return no.solve(
            lambda t, y: field(t, y, W, b), y0, ts, solver=solver, controller=controller,
            adjoint=METHODS[method], params=[W, b], batch_dims=batch_dims,
        ).ys  # fmt: skip

    return fn


def tiny_field_rows(t, y, W, b):
    return torch.tanh(y @ W.T + b) + 0.1 * torch.sin(t)[:, None] * y


@pytest.mark.parametrize(
    "fast", [pytest.param(True, id="fast"), pytest.param(False, id="full", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("method", list(METHODS))
def test_gradgradcheck(method, setting, fast):
    g = torch.Generator().manual_seed(3)
    inputs = (
        torch.randn(2, 2, dtype=D, generator=g),
        0.7 * torch.randn(2, 2, dtype=D, generator=g),
        0.2 * torch.randn(2, dtype=D, generator=g),
    )
    inputs = tuple(x.requires_grad_(True) for x in inputs)
    # Backsolve's fixed-step backward RK4 is not the adjoint of the forward RK4 steps;
    # gradgradcheck's own first-order gradcheck sees that O(dt^4) gap (as in
    # test_gradients.py), the second-order part does not.
    atol = 1e-6 if method.startswith("backsolve") and setting == "rk4" else 1e-7
    fn = tiny_solve(method, setting)
    assert gradgradcheck(fn, inputs, eps=1e-6, atol=atol, rtol=1e-5, fast_mode=fast)


def test_third_derivatives_through_backsolve_are_a_clear_error():
    f = Field()
    y0, ts, weights = problem("rk4")
    y0.requires_grad_(True)
    (g, *_) = first_gradient("backsolve", "rk4", f, y0, ts, weights, create_graph=True)
    # Raised as soon as the second derivative is asked to be differentiable itself.
    with pytest.raises(NotImplementedError, match="third and higher derivatives"):
        torch.autograd.grad(g.sum(), y0, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), y0)  # the second derivative itself is fine
    assert torch.isfinite(h).all()


@pytest.mark.parametrize("method", ["direct", "checkpoint"])
def test_third_derivatives_through_checkpoint_equal_direct(method):
    f = Field()
    y0, ts, weights = problem("rk4")
    y0.requires_grad_(True)
    (g, *_) = first_gradient(method, "rk4", f, y0, ts, weights, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), y0, create_graph=True)
    (third,) = torch.autograd.grad(h.sum(), y0)
    f2 = Field()
    y0b = y0.detach().clone().requires_grad_(True)
    (g2, *_) = first_gradient("direct", "rk4", f2, y0b, ts, weights, create_graph=True)
    (h2,) = torch.autograd.grad(g2.sum(), y0b, create_graph=True)
    (reference,) = torch.autograd.grad(h2.sum(), y0b)
    torch.testing.assert_close(third, reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_dims", [0, 1])
@pytest.mark.parametrize("method", list(METHODS))
def test_second_derivatives_with_differentiable_times_are_a_clear_error(method, batch_dims):
    f = Field()
    y0, ts, weights = problem("per_sample" if batch_dims else "dopri5")
    y0.requires_grad_(True)
    ts.requires_grad_(True)
    sol = no.solve(f, y0, ts, controller=TIGHT, adjoint=METHODS[method], batch_dims=batch_dims)
    loss = torch.sum(sol.ys**2)
    with pytest.raises(NotImplementedError, match=r"ts\.detach\(\)"):
        torch.autograd.grad(loss, y0, create_graph=True)
    # First derivatives with respect to the times still work.
    sol = no.solve(f, y0, ts, controller=TIGHT, adjoint=METHODS[method], batch_dims=batch_dims)
    (grad_ts,) = torch.autograd.grad(torch.sum(sol.ys**2), ts)
    assert torch.isfinite(grad_ts).all()


@pytest.mark.slow
def test_compiled_per_sample_solves():
    # Checkpoint and Backsolve re-run a compile_step solve eagerly for the second
    # derivative; Direct's compiled backward cannot be differentiated again: a clear error.
    y0, ts, weights = problem("per_sample")
    hvps = {}
    for compiled in (False, True):
        f = Field()
        start = y0.clone().requires_grad_(True)
        sol = no.solve(
            f, start, ts, controller=TIGHT, adjoint=no.CheckpointAdjoint(), batch_dims=1,
            compile_step=compiled,
        )  # fmt: skip
        (g,) = torch.autograd.grad(torch.sum(sol.ys**3), start, create_graph=True)
        hvps[compiled] = torch.autograd.grad(g.sum(), (start, *f.parameters()))
    for a, b in zip(hvps[False], hvps[True], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    start = y0.clone().requires_grad_(True)
    sol = no.solve(Field(), start, ts, controller=TIGHT, batch_dims=1, compile_step=True)
    with pytest.raises(NotImplementedError, match="adjoint=CheckpointAdjoint"):
        torch.autograd.grad(torch.sum(sol.ys**3), start, create_graph=True)
