"""Continuous normalizing flows: densities against closed forms and brute-force Jacobians,
trace estimators, gradients under every gradient method, and input errors."""

import math

import pytest
import torch

import neuralode as no
from generic import EACH_ADJOINT
from neuralode.nn import (
    CNF,
    ConcatLinear,
    ConcatSquashLinear,
    ExactTrace,
    GaussianBase,
    HutchinsonTrace,
    MLPDynamics,
    PlanarDynamics,
)

TIGHT = no.PIDController(rtol=1e-10, atol=1e-10)
ADJOINTS = list(EACH_ADJOINT.values())
EXACT_TRACES = [ExactTrace(), ExactTrace(batched=True)]


class LinearDynamics(torch.nn.Module):
    """dz/dt = A z: the flow is exp(A t) with log-det t·tr A."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(a.clone())
        self.dim = a.shape[0]

    def forward(self, t, z):
        return z @ self.a.T


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("trace", EXACT_TRACES, ids=["loop", "batched"])
@pytest.mark.parametrize("adjoint", ADJOINTS, ids=lambda a: type(a).__name__)
def test_linear_flow_log_prob_matches_closed_form(trace, adjoint):
    torch.manual_seed(0)
    a = torch.randn(2, 2, dtype=torch.float64)
    base = GaussianBase(2, std=math.sqrt(0.1))
    t0, t1 = 0.5, 2.0
    cnf = CNF(
        LinearDynamics(a), trace=trace, base=base, t0=t0, t1=t1, controller=TIGHT, adjoint=adjoint
    )
    x = torch.randn(6, 2, dtype=torch.float64)
    z0 = x @ torch.linalg.matrix_exp(-a * (t1 - t0)).T
    expected = base.log_prob(z0) - (t1 - t0) * torch.trace(a)
    torch.testing.assert_close(cnf.log_prob(x), expected, rtol=0, atol=1e-8)


def _rk4_flow_and_jacobian(f, z0, t0, t1, steps):
    """z(t1) and ∂z(t1)/∂z(t0) per sample from dJ/dt = (∂f/∂z) J by fixed-step RK4."""

    def rhs(t, state):
        z, j = state
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            out = f(t, z)
            rows = [torch.autograd.grad(out[:, i].sum(), z, retain_graph=True)[0] for i in range(2)]
        return out.detach(), torch.stack(rows, dim=1) @ j  # (B, D, D) Jacobian times J

    h = (t1 - t0) / steps
    z, j = z0, torch.eye(z0.shape[1], dtype=z0.dtype).expand(z0.shape[0], -1, -1)
    for i in range(steps):
        t = torch.tensor(t0 + i * h, dtype=z0.dtype)
        k1 = rhs(t, (z, j))
        k2 = rhs(t + h / 2, (z + h / 2 * k1[0], j + h / 2 * k1[1]))
        k3 = rhs(t + h / 2, (z + h / 2 * k2[0], j + h / 2 * k2[1]))
        k4 = rhs(t + h, (z + h * k3[0], j + h * k3[1]))
        z = z + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        j = j + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return z, j


@pytest.mark.parametrize("make", [lambda: PlanarDynamics(2, 8), lambda: MLPDynamics(2, (16, 16))])
def test_exact_trace_log_prob_matches_brute_force_jacobian_log_det(make):
    # Independent of any trace: push base samples forward with the full Jacobian and use
    # the discrete change of variables log p(x) = log p0(z0) − log|det ∂x/∂z0|.
    torch.manual_seed(1)
    dynamics = make().double()
    with torch.no_grad():
        for p in dynamics.parameters():
            p.mul_(3.0)  # a flow that moves the samples visibly
    cnf = CNF(dynamics, t0=0.0, t1=1.0, controller=TIGHT)
    z0 = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        x, jac = _rk4_flow_and_jacobian(dynamics, z0, 0.0, 1.0, steps=100)
        expected = cnf.base.log_prob(z0) - torch.linalg.slogdet(jac)[1]
        assert (x - z0).abs().max() > 0.1
        torch.testing.assert_close(cnf.log_prob(x), expected, rtol=0, atol=1e-7)


def test_planar_closed_form_trace_matches_autograd_traces(monkeypatch):
    # PlanarDynamics.forward_with_trace against the D-pass autograd estimators, and
    # ExactTrace routes to it (no autograd pass at all) unless closed_form=False.
    torch.manual_seed(2)
    dynamics = PlanarDynamics(3, 5).double()
    t = torch.tensor(0.3, dtype=torch.float64)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    f = dynamics(t, z)
    f_closed, closed = dynamics.forward_with_trace(t, z)
    torch.testing.assert_close(f_closed, f, rtol=0, atol=0)
    assert closed.abs().min() > 1e-3
    for trace in EXACT_TRACES:
        torch.testing.assert_close(trace(f, z, None, create_graph=False), closed)
    calls = []
    real_grad = torch.autograd.grad
    monkeypatch.setattr(
        torch.autograd, "grad", lambda *a, **k: calls.append(1) or real_grad(*a, **k)
    )
    for trace, autograd_passes in ((ExactTrace(), 0), (ExactTrace(closed_form=False), 3)):
        calls.clear()
        _, got = trace.field_and_trace(dynamics, t, z, None, create_graph=False)
        torch.testing.assert_close(got, closed)
        assert len(calls) == autograd_passes


@pytest.mark.parametrize("adjoint", ADJOINTS, ids=lambda a: type(a).__name__)
def test_closed_form_and_autograd_traces_give_the_same_density_and_gradient(adjoint):
    x = torch.randn(6, 2, generator=seeded(4), dtype=torch.float64)
    results = []
    for trace in (ExactTrace(), ExactTrace(closed_form=False)):
        loss, grads, _ = _nll_grads(adjoint, trace, x)
        results.append((loss, grads))
    (loss, grads), (loss_ref, grads_ref) = results
    torch.testing.assert_close(loss, loss_ref, rtol=0, atol=1e-12)
    for g, r in zip(grads, grads_ref, strict=True):
        assert r.abs().max() > 1e-4
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_estimator_is_unbiased(noise):
    torch.manual_seed(3)
    dynamics = MLPDynamics(4, (16,), activation="softplus").double()
    t = torch.tensor(0.2, dtype=torch.float64)
    x = torch.randn(1, 4, dtype=torch.float64)
    z = x.expand(40_000, 4).clone().requires_grad_(True)  # every row is an independent draw
    f = dynamics(t, z)
    exact = ExactTrace()(f, z, None, create_graph=False)[0]
    trace = HutchinsonTrace(noise)
    draws = trace(f, z, trace.draw_noise(z, seeded(0)), create_graph=False)
    stderr = draws.std() / math.sqrt(draws.numel())
    assert draws.std() > 0.01  # really stochastic
    assert abs(draws.mean() - exact) < 4 * stderr


def test_hutchinson_log_prob_is_unbiased_and_noise_is_fixed_per_solve():
    torch.manual_seed(4)
    dynamics = MLPDynamics(3, (16,)).double()
    with torch.no_grad():
        for p in dynamics.parameters():
            p.mul_(2.0)
    x = torch.randn(1, 3, dtype=torch.float64).expand(4000, 3)
    stochastic = CNF(dynamics, trace=HutchinsonTrace(), controller=no.PIDController(1e-8, 1e-8))
    exact = CNF(dynamics, controller=no.PIDController(1e-8, 1e-8))
    with torch.no_grad():
        draws = stochastic.log_prob(x, generator=seeded(1))
        again = stochastic.log_prob(x, generator=seeded(1))
        reference = exact.log_prob(x[:1])[0]
    torch.testing.assert_close(draws, again)  # same generator, same noise, same answer
    assert abs(draws.mean() - reference) < 4 * draws.std() / math.sqrt(draws.numel())


@pytest.mark.parametrize(
    "make", [lambda: PlanarDynamics(2, 16), lambda: MLPDynamics(2, (32, 32), layer="concat")]
)
def test_sample_then_log_prob_round_trip(make):
    torch.manual_seed(5)
    cnf = CNF(make().double(), base=GaussianBase(2, 0.5), t0=0.0, t1=2.0, controller=TIGHT)
    x, log_q = cnf.sample_and_log_prob(16, seeded(0))
    torch.testing.assert_close(cnf.log_prob(x), log_q, rtol=0, atol=1e-7)
    torch.testing.assert_close(cnf.sample(16, seeded(0)), x, rtol=0, atol=1e-7)


def test_reversed_time_span_is_a_valid_flow():
    torch.manual_seed(6)
    cnf = CNF(PlanarDynamics(2, 4).double(), t0=1.0, t1=-1.0, controller=TIGHT)
    x, log_q = cnf.sample_and_log_prob(8, seeded(0))
    torch.testing.assert_close(cnf.log_prob(x), log_q, rtol=0, atol=1e-7)


def test_partial_flow_density_is_normalised_and_fraction_zero_is_the_base():
    torch.manual_seed(7)
    dynamics = PlanarDynamics(2, 8)
    with torch.no_grad():
        for p in dynamics.parameters():
            p.mul_(3.0)
    cnf = CNF(dynamics, controller=no.PIDController(1e-5, 1e-5))
    n, edge = 80, 6.0
    axis = torch.linspace(-edge, edge, n + 1)[:-1] + edge / n
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = cnf.log_prob(grid, fraction=0.5).exp().sum() * (2 * edge / n) ** 2
        torch.testing.assert_close(
            cnf.log_prob(grid[:5], fraction=0.0), cnf.base.log_prob(grid[:5])
        )
        moved = cnf.log_prob(grid[:5], fraction=1.0) - cnf.base.log_prob(grid[:5])
    assert abs(float(mass) - 1) < 1e-3
    assert moved.abs().max() > 1e-2


def test_sample_trajectory_starts_at_the_base_and_ends_at_the_samples():
    torch.manual_seed(8)
    cnf = CNF(PlanarDynamics(2, 4).double(), controller=TIGHT)
    path = cnf.sample_trajectory(5, [0.0, 0.05, 0.5, 1.0], seeded(3))
    assert path.shape == (4, 5, 2)
    torch.testing.assert_close(path[0], cnf.base.sample(5, seeded(3), dtype=torch.float64))
    torch.testing.assert_close(path[-1], cnf.sample(5, seeded(3)))
    assert cnf.sample_trajectory(5, [0.5, 1.0], seeded(3)).shape == (2, 5, 2)


def _nll_grads(adjoint, trace, x, seed=0):
    torch.manual_seed(9)
    dynamics = PlanarDynamics(2, 4, hidden=8).double()
    cnf = CNF(dynamics, trace=trace, adjoint=adjoint, controller=no.PIDController(1e-9, 1e-9))
    loss = -cnf.log_prob(x, generator=seeded(seed)).mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in dynamics.parameters()], cnf.stats


@pytest.mark.parametrize("trace", [ExactTrace(), HutchinsonTrace()], ids=["exact", "hutchinson"])
def test_every_gradient_method_gives_the_same_gradient(trace):
    x = torch.randn(6, 2, generator=seeded(1), dtype=torch.float64)
    loss, reference, _ = _nll_grads(no.DirectAdjoint(), trace, x)
    for adjoint in ADJOINTS[1:]:
        loss_a, grads, stats = _nll_grads(adjoint, trace, x)
        torch.testing.assert_close(loss_a, loss, rtol=0, atol=1e-7)
        for g, r in zip(grads, reference, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
        assert stats.nfe_backward > 0


def test_gradient_matches_finite_differences():
    torch.manual_seed(10)
    dynamics = PlanarDynamics(2, 3, hidden=4).double()
    cnf = CNF(dynamics, controller=TIGHT)
    x = torch.randn(4, 2, dtype=torch.float64)
    weight = dynamics.hyper[0].weight

    def loss() -> torch.Tensor:
        return -cnf.log_prob(x).mean()

    loss().backward()
    eps = 1e-6
    with torch.no_grad():
        weight[1, 0] += eps
        up = loss()
        weight[1, 0] -= 2 * eps
        down = loss()
        weight[1, 0] += eps
    assert abs(float(weight.grad[1, 0]) - float((up - down) / (2 * eps))) < 1e-6


def test_evaluation_under_no_grad_keeps_no_graph():
    cnf = CNF(MLPDynamics(2, (8,)), adjoint=no.BacksolveAdjoint())
    x = torch.randn(3, 2)
    with torch.no_grad():
        out = cnf.log_prob(x)
    assert not out.requires_grad
    assert cnf.log_prob(x).requires_grad


def test_input_gradient_reaches_x():
    cnf = CNF(PlanarDynamics(2, 4).double(), controller=TIGHT)
    x = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    cnf.log_prob(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_time_layers_see_time():
    x = torch.randn(3, 4)
    for layer in (ConcatLinear(4, 5), ConcatSquashLinear(4, 5)):
        assert not torch.allclose(layer(torch.tensor(0.0), x), layer(torch.tensor(1.0), x))
        assert layer(torch.tensor(0.0), x).shape == (3, 5)


def test_stats_count_the_last_solve():
    cnf = CNF(PlanarDynamics(2, 4), controller=no.PIDController(1e-5, 1e-5))
    cnf.log_prob(torch.randn(3, 2))
    assert cnf.stats.nfe > 0 and cnf.stats.nfe_backward == 0


def test_bad_inputs_raise_clear_errors():
    cnf = CNF(PlanarDynamics(2, 4))
    with pytest.raises(ValueError, match=r"shape \(batch, 2\), got \(3, 3\)"):
        cnf.log_prob(torch.randn(3, 3))
    with pytest.raises(TypeError, match="floating tensor"):
        cnf.log_prob(torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="fractions"):
        cnf.log_prob(torch.randn(3, 2), fraction=1.5)
    with pytest.raises(ValueError, match="strictly increasing"):
        cnf.sample_trajectory(3, [0.5, 0.2])
    with pytest.raises(ValueError, match="positive integer number of samples"):
        cnf.sample(0)
    with pytest.raises(TypeError, match="nn.Module"):
        CNF(lambda t, z: z)
    with pytest.raises(TypeError, match="trace must be"):
        CNF(PlanarDynamics(), trace="exact")
    with pytest.raises(ValueError, match="t0 and t1 must differ"):
        CNF(PlanarDynamics(), t0=1.0, t1=1.0)
    with pytest.raises(ValueError, match="pass base=GaussianBase"):
        CNF(torch.nn.Identity())  # no `dim` attribute
    with pytest.raises(TypeError, match="base must have log_prob"):
        CNF(PlanarDynamics(), base=object())
    with pytest.raises(ValueError, match="noise must be one of"):
        HutchinsonTrace("uniform")
    with pytest.raises(ValueError, match="activation must be one of"):
        MLPDynamics(2, activation="relu")
    with pytest.raises(ValueError, match="width must be a positive integer"):
        PlanarDynamics(2, width=0)
    with pytest.raises(ValueError, match="std must be"):
        GaussianBase(2, std=-1.0)
    z = torch.randn(2, 2, requires_grad=True)
    with pytest.raises(ValueError, match="draw it once per solve"):
        HutchinsonTrace()(z * 2, z, None, create_graph=False)
