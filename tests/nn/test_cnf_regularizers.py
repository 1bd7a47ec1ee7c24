"""The CNF's regularisers (kinetic, Jacobian Frobenius) and STEER: values against direct
computations, the trace's product shared with the Jacobian penalty, gradients."""

import math

import pytest
import torch

import neuralode as no
from generic import EACH_ADJOINT
from neuralode import _autograd
from neuralode.nn import CNF, ExactTrace, GaussianBase, HutchinsonTrace, PlanarDynamics

D = torch.float64
TIGHT = no.PIDController(rtol=1e-10, atol=1e-10)


class LinearDynamics(torch.nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(a.clone())
        self.dim = a.shape[0]

    def forward(self, t, z):
        return z @ self.a.T


@pytest.mark.parametrize("trace", [ExactTrace(), HutchinsonTrace()], ids=["exact", "hutchinson"])
def test_cnf_regularisers_match_the_plain_solve_and_leave_the_density_alone(trace):
    torch.manual_seed(0)
    dynamics = PlanarDynamics(2, 4, hidden=8).double()
    regs = [no.KineticEnergy(), no.JacobianFrobenius(estimator="exact")]
    plain = CNF(dynamics, trace=trace, controller=TIGHT, t1=2.0)
    cnf = CNF(dynamics, trace=trace, controller=TIGHT, t1=2.0, regularizers=regs)
    x = torch.randn(5, 2, dtype=D)
    expected = plain.log_prob(x, generator=torch.Generator().manual_seed(1))
    got = cnf.log_prob(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, expected)
    assert cnf.stats.nfe == plain.stats.nfe  # the integrals stay out of error control
    # The same integrals of the plain dynamics along the same trajectory (data → base).
    ts = torch.tensor([2.0, 0.0], dtype=D)
    direct = no.solve(dynamics, x, ts, controller=TIGHT, regularizers=regs).regularization
    for name in ("kinetic", "jacobian"):
        assert float(cnf.regularization[name].detach()) > 0  # ∫ over [t0, t1], whichever way solved
        torch.testing.assert_close(cnf.regularization[name], -direct[name], rtol=1e-6, atol=0)


def test_exact_jacobian_penalty_of_a_linear_flow_in_closed_form():
    a = torch.tensor([[0.3, -1.0], [0.5, 0.2]], dtype=D)
    cnf = CNF(LinearDynamics(a), controller=TIGHT, t0=0.5, t1=2.0,
              regularizers=[no.JacobianFrobenius(estimator="exact")])  # fmt: skip
    cnf.sample_and_log_prob(3, torch.Generator().manual_seed(0))
    expected = 3 * 1.5 * a.square().sum()  # B · (t1 − t0) · ‖A‖²_F
    torch.testing.assert_close(cnf.regularization["jacobian"], expected, rtol=1e-8, atol=0)


def test_hutchinson_penalty_reuses_the_traces_product(monkeypatch):
    torch.manual_seed(0)
    calls = []

    def counting(grad):
        def count(*args, **kwargs):
            calls.append(1)
            return grad(*args, **kwargs)

        return count

    dynamics = PlanarDynamics(2, 4, hidden=8)
    x = torch.randn(8, 2)
    # Every vector-Jacobian product, through torch or neuralode's engine call.
    monkeypatch.setattr(torch.autograd, "grad", counting(torch.autograd.grad))
    monkeypatch.setattr(_autograd, "grad", counting(_autograd.grad))
    for regs, products in (([], 1), ([no.JacobianFrobenius()], 1),
                           ([no.JacobianFrobenius(noise="gaussian")], 2)):  # fmt: skip
        calls.clear()
        cnf = CNF(dynamics, trace=HutchinsonTrace(), regularizers=regs)
        with torch.no_grad():
            cnf.log_prob(x)
        assert len(calls) == products * cnf.stats.nfe


def test_hutchinson_penalty_is_unbiased_for_the_exact_one():
    torch.manual_seed(0)
    dynamics = PlanarDynamics(2, 4, hidden=8).double()
    x = torch.randn(4, 2, dtype=D)
    exact = CNF(dynamics, controller=TIGHT, regularizers=[no.JacobianFrobenius("exact")])
    with torch.no_grad():
        exact.log_prob(x)
        target = float(exact.regularization["jacobian"])
        cnf = CNF(dynamics, trace=HutchinsonTrace(), controller=no.PIDController(1e-8, 1e-8),
                  regularizers=[no.JacobianFrobenius()])  # fmt: skip
        draws = []
        for seed in range(300):
            cnf.log_prob(x, generator=torch.Generator().manual_seed(seed))
            draws.append(float(cnf.regularization["jacobian"]))
    values = torch.tensor(draws, dtype=D)
    stderr = float(values.std()) / math.sqrt(len(draws))
    assert abs(float(values.mean()) - target) < 4 * stderr


@pytest.mark.parametrize("adjoint", list(EACH_ADJOINT.values()), ids=lambda a: type(a).__name__)
def test_gradients_of_the_penalties_under_every_gradient_method(adjoint):
    x = torch.randn(5, 2, dtype=D, generator=torch.Generator().manual_seed(3))
    grads = []
    for method in (no.DirectAdjoint(), adjoint):
        torch.manual_seed(0)
        dynamics = PlanarDynamics(2, 3, hidden=4).double()
        cnf = CNF(dynamics, trace=HutchinsonTrace(), adjoint=method,
                  controller=no.PIDController(1e-9, 1e-9),
                  regularizers=[no.KineticEnergy(), no.JacobianFrobenius()])  # fmt: skip
        cnf.log_prob(x, generator=torch.Generator().manual_seed(0))
        sum(cnf.regularization.values()).backward()
        grads.append([p.grad.clone() for p in dynamics.parameters()])
    for g, r in zip(grads[1], grads[0], strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_steer_draws_the_data_time_in_training_only():
    torch.manual_seed(0)
    cnf = CNF(PlanarDynamics(2, 4), t0=0.0, t1=2.0, steer=0.5, base=GaussianBase(2))
    x = torch.randn(3, 2)
    ends = set()
    for seed in range(10):
        cnf.log_prob(x, generator=torch.Generator().manual_seed(seed))
        ends.add(cnf.end_time)
        assert 1.5 <= cnf.end_time <= 2.5
    assert len(ends) == 10
    cnf.sample_and_log_prob(4)
    assert 1.5 <= cnf.end_time <= 2.5
    cnf.eval()
    cnf.log_prob(x)
    assert cnf.end_time == 2.0
    with pytest.raises(ValueError, match=r"steer must lie in \[0, 2\)"):
        CNF(PlanarDynamics(2, 4), t1=2.0, steer=2.0)


def test_penalties_are_computed_in_training_mode_only():
    cnf = CNF(PlanarDynamics(2, 4), regularizers=[no.KineticEnergy()])
    x = torch.randn(3, 2)
    cnf.log_prob(x)
    assert set(cnf.regularization) == {"kinetic"}
    cnf.eval()
    cnf.log_prob(x)
    assert cnf.regularization == {}


@pytest.mark.parametrize("adjoint", list(EACH_ADJOINT.values()), ids=lambda a: type(a).__name__)
def test_penalties_pass_gradcheck(adjoint):
    torch.manual_seed(0)
    dynamics = PlanarDynamics(2, 3, hidden=4).double()
    cnf = CNF(dynamics, trace=HutchinsonTrace(), adjoint=adjoint, controller=TIGHT,
              regularizers=[no.KineticEnergy(), no.JacobianFrobenius()])  # fmt: skip

    def penalties(x):
        cnf.log_prob(x, generator=torch.Generator().manual_seed(0))  # the same ε every call
        return cnf.regularization["kinetic"], cnf.regularization["jacobian"]

    x = torch.randn(3, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(penalties, (x,), eps=1e-6, atol=1e-5)
