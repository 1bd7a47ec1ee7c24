"""Regularisers as extra quadrature states: values, unbiasedness, gradients, no extra work."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

import neuralode as no
from generic import EACH_ADJOINT
from neuralode.nn import ODEBlock
from neuralode.regularizers import LocalError, local_error

D = torch.float64
TIGHT = no.PIDController(rtol=1e-10, atol=1e-12)


def linear(a: torch.Tensor):
    return lambda t, y: y @ a.T


def kinetic_closed_form(a: torch.Tensor, y0: torch.Tensor, t1: float) -> torch.Tensor:
    """∫_0^t1 ‖A y(t)‖² dt for diagonal A: Σ a_i² y0_i² (e^{2 a_i t1} − 1) / (2 a_i)."""
    d = torch.diagonal(a)
    return (d**2 * y0**2 * torch.expm1(2 * d * t1) / (2 * d)).sum(-1)


@pytest.mark.parametrize("batch_dims", [0, 1], ids=["joint", "per-sample"])
def test_kinetic_energy_of_a_linear_field_in_closed_form(batch_dims):
    a = torch.diag(torch.tensor([-1.0, 0.5, -2.0], dtype=D))
    y0 = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]], dtype=D)
    ts = torch.tensor([0.0, 0.7, 1.5], dtype=D)
    sol = no.solve(linear(a), y0, ts, controller=TIGHT, batch_dims=batch_dims,
                   regularizers=[no.KineticEnergy()])  # fmt: skip
    exact = kinetic_closed_form(a, y0, 1.5)
    want = exact if batch_dims else exact.sum()
    torch.testing.assert_close(sol.regularization["kinetic"], want, rtol=1e-8, atol=0)


@pytest.mark.parametrize("batch_dims", [0, 1], ids=["joint", "per-sample"])
def test_the_regularised_solve_takes_the_same_steps_and_no_extra_evaluations(batch_dims):
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    net = net.double()
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=D)
    ts = torch.linspace(0.0, 2.0, 5, dtype=D)

    def field(t, y):
        return net(y)

    ctrl = no.PIDController(rtol=1e-6, atol=1e-8)
    plain = no.solve(field, y0, ts, controller=ctrl, batch_dims=batch_dims)
    reg = no.solve(field, y0, ts, controller=ctrl, batch_dims=batch_dims,
                   regularizers=[no.KineticEnergy()])  # fmt: skip
    torch.testing.assert_close(reg.ys, plain.ys, rtol=1e-12, atol=1e-12)
    assert reg.stats.steps == plain.stats.steps
    assert reg.stats.nfe == plain.stats.nfe  # the kinetic term costs no evaluation of f


def test_exact_jacobian_frobenius_of_a_linear_field():
    a = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=D)
    y0 = torch.randn(4, dtype=D)
    ts = torch.tensor([0.0, 0.8], dtype=D)
    sol = no.solve(linear(a), y0, ts, controller=TIGHT,
                   regularizers=[no.JacobianFrobenius(estimator="exact")])  # fmt: skip
    torch.testing.assert_close(sol.regularization["jacobian"], 0.8 * a.square().sum())


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_for_the_frobenius_norm(noise):
    # 4000 copies of one problem, each with its own noise draw: their mean estimates
    # ‖A‖_F² · t1 within a few standard errors of the mean.
    torch.manual_seed(0)
    a = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=D)
    y0 = torch.ones(4000, 3, dtype=D)
    ts = torch.tensor([0.0, 0.5], dtype=D)
    sol = no.solve(linear(a), y0, ts, batch_dims=1,
                   regularizers=[no.JacobianFrobenius(noise=noise)])  # fmt: skip
    estimates = sol.regularization["jacobian"].detach()
    exact = 0.5 * a.square().sum()
    error = estimates.mean() - exact
    assert abs(float(error)) < 4 * float(estimates.std()) / math.sqrt(len(estimates))
    assert float(estimates.std()) > 0  # a real estimator, not the exact value in disguise


class FieldOf(torch.nn.Module):
    """``tanh(W y) − 0.2 y`` for a given ``W`` (gradcheck perturbs it)."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, t, y):
        return torch.tanh(y @ self.w.T) - 0.2 * y


@pytest.mark.parametrize("batch_dims", [0, 1], ids=["joint", "per-sample"])
@pytest.mark.parametrize("adjoint", EACH_ADJOINT.values(), ids=EACH_ADJOINT.keys())
def test_gradients_of_the_regularisers_by_gradcheck(adjoint, batch_dims):
    y0 = torch.tensor([[0.5, -1.0], [1.2, 0.4]], dtype=D, requires_grad=True)
    w = torch.randn(2, 2, generator=torch.Generator().manual_seed(3), dtype=D) / 2
    ts = torch.tensor([0.0, 0.4, 1.0], dtype=D)
    regs = [no.KineticEnergy(), no.JacobianFrobenius(estimator="exact")]

    def loss(y0, w):
        field = FieldOf(w)
        sol = no.solve(field, y0, ts, controller=TIGHT, adjoint=adjoint,
                       batch_dims=batch_dims, regularizers=regs, params=[w])  # fmt: skip
        r = sol.regularization
        return sol.ys.sum() + r["kinetic"].sum() + r["jacobian"].sum()

    assert gradcheck(loss, (y0, w.requires_grad_(True)), atol=1e-6, rtol=1e-5)


def test_tuple_states_and_per_sample_args():
    y0 = (torch.ones(3, 2, dtype=D), torch.zeros(3, 1, dtype=D))
    k = torch.tensor([0.5, 1.0, 2.0], dtype=D)
    ts = torch.tensor([0.0, 1.0], dtype=D)
    sol = no.solve(lambda t, y, k: (-k[:, None] * y[0], y[0][:, :1]), y0, ts, batch_dims=1,
                   args=k, controller=TIGHT, regularizers=[no.KineticEnergy()])  # fmt: skip
    assert isinstance(sol.ys, tuple) and len(sol.ys) == 2
    # ‖f‖² = 2 k² e^{-2kt} + e^{-2kt}: its integral (2k² + 1)(1 − e^{-2k}) / (2k).
    want = (2 * k**2 + 1) * -torch.expm1(-2 * k) / (2 * k)
    torch.testing.assert_close(sol.regularization["kinetic"], want, rtol=1e-8, atol=0)


def test_refusals_name_the_problem():
    y0, ts = torch.ones(2, dtype=D), torch.tensor([0.0, 1.0], dtype=D)
    with pytest.raises(ValueError, match="dense=True is not available with regularizers="):
        no.solve(lambda t, y: -y, y0, ts, dense=True, regularizers=[no.KineticEnergy()])
    with pytest.raises(ValueError, match="regularizers need distinct names"):
        no.solve(lambda t, y: -y, y0, ts, regularizers=[no.KineticEnergy()] * 2)
    with pytest.raises(TypeError, match="regularizers must hold neuralode regularisers"):
        no.solve(lambda t, y: -y, y0, ts, regularizers=["kinetic"])
    with pytest.raises(ValueError, match="estimator must be one of"):
        no.JacobianFrobenius(estimator="trace")


def test_an_ode_block_carries_its_regularisers_into_training():
    torch.manual_seed(0)
    func = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    block = ODEBlock(FieldModule(func), regularizers=[no.KineticEnergy()],
                           adjoint=no.CheckpointAdjoint())  # fmt: skip
    x = torch.randn(4, 3)
    out = block(x)
    assert set(block.regularization) == {"kinetic"}
    (out.square().mean() + 0.1 * block.regularization["kinetic"] / len(x)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in func.parameters())
    plain = ODEBlock(FieldModule(func), adjoint=no.CheckpointAdjoint())
    torch.testing.assert_close(plain(x), out)  # the penalty rides along, the output is the same
    assert plain.regularization == {}


class FieldModule(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, t, y):
        return self.net(y)


def test_local_error_is_the_solvers_own_estimate_made_differentiable():
    torch.manual_seed(0)
    a = torch.tensor([[-1.0, 2.0], [-0.5, -0.3]], dtype=D, requires_grad=True)
    y = torch.randn(4, 2, dtype=D)
    controller = no.PIDController(rtol=1e-4, atol=1e-6)
    got = local_error(lambda t, x: x @ a.T, no.Dopri5(), controller, 0.3, y, 0.2)
    # The library's step, its no-grad estimate, scaled as the controller scales it.
    step = no.Dopri5().step(lambda t, x: x @ a.T, 0.3, y, y @ a.T, 0.2)
    scale = torch.maximum(y.abs(), step.y1.abs()) * 1e-4 + 1e-6
    expected = (step.y_error / scale).square().mean(-1).sqrt()
    torch.testing.assert_close(got, expected.detach())
    got.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    # Smaller steps, smaller errors (fifth order: about 2**5 per halving).
    half = local_error(lambda t, x: x @ a.T, no.Dopri5(), controller, 0.3, y, 0.1)
    assert (half < got / 16).all()


@pytest.mark.parametrize("adjoint", list(EACH_ADJOINT.values()), ids=lambda a: type(a).__name__)
def test_an_ode_block_penalises_its_local_error_with_every_gradient_method(adjoint):
    torch.manual_seed(0)
    func = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    block = ODEBlock(FieldModule(func), regularizers=[LocalError(), no.KineticEnergy()],
                           adjoint=adjoint)  # fmt: skip
    x = torch.randn(4, 3)
    out = block(x)
    assert set(block.regularization) == {"local_error", "kinetic"}
    assert float(block.regularization["local_error"].detach()) > 0
    block.regularization["local_error"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in func.parameters())
    # The extra output time t* leaves the result and the steps as they were.
    plain = ODEBlock(FieldModule(func), adjoint=adjoint)
    torch.testing.assert_close(plain(x), out)
    assert plain.stats.accepted == block.stats.accepted
    block.eval()
    block(x)
    assert block.regularization == {}


def test_local_error_refuses_solvers_without_an_estimate():
    block = ODEBlock(FieldModule(torch.nn.Linear(2, 2)), solver=no.RK4(),
                     controller=no.ConstantStepSize(0.25), regularizers=[LocalError()])  # fmt: skip
    with pytest.raises(TypeError, match="LocalError needs a solver whose error estimate is a "
                       "sum of its stages .e.g. Dopri5.., Tsit5..., got RK4"):  # fmt: skip
        block(torch.randn(3, 2))
