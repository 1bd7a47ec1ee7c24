"""BacksolveAdjoint(interpolate=True): y(t) from the forward dense output, for stiff problems.

The plain backsolve adjoint reconstructs y by solving backwards, which on a stiff problem
amplifies its error by e^{|λ|h} across each step and gives a wrong gradient without an
error (docs/stiff.md has the measurements). Reading y(t) from the forward solve's dense
output and solving only [a, g] backwards agrees with CheckpointAdjoint to the tolerance.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import neuralode as no

D = torch.float64
TS = (0.0, 0.3, 0.7, 1.0)


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = (0.5 * torch.randn(2, 2, dtype=D, generator=g)).requires_grad_(True)
    y0 = torch.tensor([1.0, 0.5], dtype=D, requires_grad=True)
    return y0, W


def gradient(rate: float, adjoint, solver, tol: float):
    y0, W = inputs()
    damping = torch.tensor([1.0, rate], dtype=D)

    def f(t, y):
        return -damping * y + torch.tanh(y @ W.T)

    sol = no.solve(
        f, y0, torch.tensor(TS, dtype=D), solver=solver, adjoint=adjoint, params=[W],
        controller=no.PIDController(rtol=tol, atol=tol * 1e-2),
    )  # fmt: skip
    assert sol.dense is None  # the backward pass's interpolant is not handed out
    return torch.autograd.grad(sol.ys.square().sum(), (y0, W))


def relative_error(got, want) -> float:
    return max(float((g - w).abs().max() / w.abs().max()) for g, w in zip(got, want, strict=True))


def test_stiff_gradient_agrees_with_checkpoint_where_reconstruction_fails():
    # Rates 1 and 100 over [0, 1]. Measured relative errors against CheckpointAdjoint:
    # interpolate 3.6e-6 (rtol 1e-5); the reconstructing backsolve 0.28 (W's gradient
    # 1.064 against 1.482) with no error raised.
    tol = 1e-5
    newton = no.Newton(rtol=tol, atol=tol * 1e-2)
    want = gradient(100.0, no.CheckpointAdjoint(), no.Kvaerno5(newton=newton), tol)
    got = gradient(100.0, no.BacksolveAdjoint(interpolate=True), no.Kvaerno5(newton=newton), tol)
    assert relative_error(got, want) < 1e-4
    reconstructed = gradient(
        100.0, no.BacksolveAdjoint(solver=no.Dopri5()), no.Kvaerno5(newton=newton), tol
    )
    assert relative_error(reconstructed, want) > 0.1


@pytest.mark.slow
def test_very_stiff_gradient_agrees_with_checkpoint():
    # Rate 1000 at rtol 1e-8: measured 4.4e-8 (the reconstructing backsolve: 0.93).
    tol = 1e-8
    newton = no.Newton(rtol=tol, atol=tol * 1e-2)
    want = gradient(1000.0, no.CheckpointAdjoint(), no.Kvaerno5(newton=newton), tol)
    got = gradient(1000.0, no.BacksolveAdjoint(interpolate=True), no.Kvaerno5(newton=newton), tol)
    assert relative_error(got, want) < 1e-6


def test_explicit_forward_solver():
    tol = 1e-9
    want = gradient(4.0, no.DirectAdjoint(), no.Dopri5(), tol)
    got = gradient(4.0, no.BacksolveAdjoint(interpolate=True), no.Dopri5(), tol)
    assert relative_error(got, want) < 1e-6


def test_state_of_several_dimensions_reaches_f_in_its_shape():
    # The interpolant's flat state is reshaped as the solver's tensor: f sees (B, D), as
    # in the forward solve, and the gradient is DirectAdjoint's to the tolerance.
    g = torch.Generator().manual_seed(1)
    W = (0.5 * torch.randn(2, 2, dtype=D, generator=g)).requires_grad_(True)
    y0 = torch.randn(3, 2, dtype=D, generator=g).requires_grad_(True)
    shapes = set()

    def f(t, y):
        shapes.add(tuple(y.shape))
        return -y + torch.tanh(y @ W.T)

    grads = []
    for adjoint in (no.DirectAdjoint(), no.BacksolveAdjoint(interpolate=True)):
        sol = no.solve(f, y0, torch.tensor(TS, dtype=D), adjoint=adjoint, params=[W],
                       controller=no.PIDController(rtol=1e-10, atol=1e-12))  # fmt: skip
        grads.append(torch.autograd.grad(sol.ys.square().sum(), (y0, W)))
    assert shapes == {(3, 2)}
    assert relative_error(grads[1], grads[0]) < 1e-7


def test_gradcheck_joint():
    # The dense output is not the discrete solution's own derivative: the gradient is
    # right to the interpolant's accuracy, hence the looser tolerance (as for backsolve).
    damping = torch.tensor([1.0, 40.0], dtype=D)

    def fn(y0, W):
        return no.solve(
            lambda t, y: -damping * y + torch.tanh(y @ W.T), y0,
            torch.tensor((0.0, 0.1, 0.2, 0.3), dtype=D),
            solver=no.Kvaerno5(newton=no.Newton(rtol=1e-8, atol=1e-10)),
            controller=no.PIDController(rtol=1e-7, atol=1e-9),
            adjoint=no.BacksolveAdjoint(interpolate=True), params=[W],
        ).ys  # fmt: skip

    assert gradcheck(fn, inputs(), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_refusals_name_the_argument():
    with pytest.raises(TypeError, match="interpolate must be True or False, got 'yes'"):
        no.BacksolveAdjoint(interpolate="yes")  # type: ignore[arg-type]
    y0 = torch.ones(3, 2, dtype=D)
    with pytest.raises(ValueError, match=r"interpolate=True\) is for joint mode"):
        no.solve(
            lambda t, y: -y, y0, torch.tensor(TS, dtype=D), batch_dims=1,
            adjoint=no.BacksolveAdjoint(interpolate=True),
        )  # fmt: skip
    y0, W = inputs()
    sol = no.solve(
        lambda t, y: -y + torch.tanh(y @ W.T), y0, torch.tensor(TS, dtype=D),
        adjoint=no.BacksolveAdjoint(interpolate=True), params=[W],
    )  # fmt: skip
    with pytest.raises(NotImplementedError, match="second derivatives .*interpolate=True"):
        torch.autograd.grad(sol.ys.sum(), W, create_graph=True)
