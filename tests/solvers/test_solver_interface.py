"""A solver written against AbstractSolver alone runs everywhere a built-in one does.

Nothing outside ``solvers/`` may reach into a tableau: the loop, the dense output, the
per-sample driver and the gradient methods see only the interface (the step, its error
estimate, its dense-output weights, its quadrature weights). A hand-written Heun–Euler
2(1) step, not an ``ExplicitRK``, must give AdaptiveHeun's numbers (the same method) in
both modes and with every gradient method.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

import neuralode as no
from generic import EACH_ADJOINT
from neuralode.solvers._explicit_rk import FlatField, SolverState, StepResult, StepSize, Time

D = torch.float64


class HandHeun(no.AbstractSolver):
    """Heun's method with Euler embedded, written out (no tableau), linear dense output."""

    def __init__(self, quadrature: bool = True) -> None:
        self.quadrature = quadrature

    order = 2
    error_order = 1
    adaptive = True
    fsal = False

    def step(
        self,
        f: FlatField,
        t0: Time,
        y0: torch.Tensor,
        f0: torch.Tensor,
        dt: StepSize,
        t1_stage: float | None = None,
        state: SolverState = (),
    ) -> StepResult:
        h = dt if isinstance(dt, float) else dt.to(y0.dtype).unsqueeze(-1)
        k2 = f(t0 + dt if t1_stage is None else t1_stage, y0 + h * f0)
        y1 = y0 + h * (0.5 * f0 + 0.5 * k2)
        with torch.no_grad():
            y_error = h * (0.5 * k2 - 0.5 * f0)
        return StepResult(y1=y1, y_error=y_error, f1=None, k=(f0, k2))

    def stage_weights(self, thetas: Sequence[float]) -> list[list[float]]:
        return [[theta * 0.5, theta * 0.5] for theta in thetas]

    def stage_polynomials(self) -> list[list[float]]:
        return [[0.0, 0.5], [0.0, 0.5]]

    @property
    def quadrature_weights(self) -> tuple[float, ...] | None:
        return (0.5, 0.5) if self.quadrature else None


def field(t, y, w):
    return torch.tanh(w * y) * torch.cos(t)[..., None] - 0.3 * y


@pytest.mark.parametrize("batch_dims", [0, 1], ids=["joint", "per-sample"])
@pytest.mark.parametrize("adjoint", EACH_ADJOINT.values(), ids=EACH_ADJOINT.keys())
def test_a_hand_written_solver_matches_the_builtin_one(batch_dims, adjoint):
    y0 = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 0.9]], dtype=D)
    ts = torch.tensor([0.0, 0.3, 1.1, 2.0], dtype=D)
    ctrl = no.PIDController(rtol=1e-6, atol=1e-8)
    results = []
    for solver in (HandHeun(), no.AdaptiveHeun(interpolation="linear")):
        w = torch.tensor(1.3, dtype=D, requires_grad=True)
        start = y0.clone().requires_grad_(True)
        sol = no.solve(lambda t, y, w=w: field(t, y, w), start, ts, solver=solver,
                       controller=ctrl, adjoint=adjoint, batch_dims=batch_dims,
                       params=[w])  # fmt: skip
        grads = torch.autograd.grad(sol.ys.square().sum(), (start, w))
        results.append((sol, grads))
    (mine, my_grads), (builtin, grads) = results
    torch.testing.assert_close(mine.ys, builtin.ys, rtol=1e-12, atol=1e-12)
    assert mine.stats.steps == builtin.stats.steps
    for g, ref in zip(my_grads, grads, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-10)


def test_dense_output_goes_through_the_solver():
    y0 = torch.tensor([0.5, -1.0], dtype=D)
    ts = torch.tensor([0.0, 2.0], dtype=D)
    w = torch.tensor(1.3, dtype=D)
    sols = [no.solve(lambda t, y: field(t, y, w), y0, ts, solver=s, dense=True)
            for s in (HandHeun(), no.AdaptiveHeun(interpolation="linear"))]  # fmt: skip
    grid = torch.linspace(0.0, 2.0, 13, dtype=D)
    torch.testing.assert_close(sols[0].dense(grid), sols[1].dense(grid), rtol=1e-12, atol=1e-12)


def test_per_sample_backsolve_needs_quadrature_weights():
    y0 = torch.ones(2, 2, dtype=D)
    ts = torch.tensor([0.0, 1.0], dtype=D)
    w = torch.tensor(1.3, dtype=D, requires_grad=True)
    sol = no.solve(lambda t, y: field(t, y, w), y0, ts, solver=HandHeun(quadrature=False),
                   adjoint=no.BacksolveAdjoint(), batch_dims=1, params=[w])  # fmt: skip
    with pytest.raises(TypeError, match="HandHeun has none of: use an explicit Runge"):
        sol.ys.sum().backward()


def test_dopri5_torchdiffeq_estimate_is_two_thirds_of_the_default_on_a_step():
    def f(t, y):
        return torch.sin(3.0 * y) + t

    y0 = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    f0 = f(0.0, y0)
    default = no.Dopri5().step(f, 0.0, y0, f0, 0.1)
    blended = no.Dopri5(embedded="torchdiffeq").step(f, 0.0, y0, f0, 0.1)
    assert torch.equal(default.y1, blended.y1)  # the same propagated solution
    assert default.y_error is not None and blended.y_error is not None
    torch.testing.assert_close(blended.y_error, default.y_error * 2 / 3, rtol=1e-9, atol=1e-18)


def test_dopri5_refuses_an_unknown_embedded_solution_by_name():
    with pytest.raises(
        ValueError, match=r"embedded must be one of .*'dormand-prince'.*got 'shampine'"
    ):
        no.Dopri5(embedded="shampine")
