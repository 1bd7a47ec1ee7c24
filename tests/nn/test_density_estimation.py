"""Losses, evaluation and plot arrays for flows, checked on Gaussians with known answers."""

import math

import pytest
import torch

from neuralode.data import EnergyTarget, sample_toy
from neuralode.nn import (
    CNF,
    FLOW_FRACTIONS,
    GaussianBase,
    PlanarDynamics,
    PlanarFlow,
    density_grid,
    evaluate_kl,
    evaluate_nll,
    flow_snapshots,
    nll_loss,
    reverse_kl_loss,
    solver_metrics,
)

STD_P = 0.7
GAUSSIAN = EnergyTarget("gauss", lambda z: 0.5 * (z / STD_P).square().sum(1))


class Still(torch.nn.Module):
    """dz/dt = 0 (with one parameter, so that losses have something to differentiate)."""

    dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def forward(self, t, z):
        return self.scale * z


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_kl_is_zero_when_the_model_is_the_target():
    model = CNF(Still(), base=GaussianBase(2, STD_P))
    out = evaluate_kl(model, GAUSSIAN, 2_000, seeded(0))
    assert abs(out["kl"]) < 1e-5 and out["kl_stderr"] < 1e-5
    loss, metrics = reverse_kl_loss(model, GAUSSIAN, 64, seeded(0))
    assert abs(metrics["kl"]) < 1e-5
    assert metrics["loss"] == pytest.approx(-GAUSSIAN.log_z, abs=1e-5)
    loss.backward()
    assert model.dynamics.scale.grad is not None


def test_kl_between_gaussians_matches_the_closed_form():
    # KL(N(0, I) || N(0, s² I)) in 2-D = 2 (log s + 1 / (2 s²) − 1/2).
    model = CNF(Still(), base=GaussianBase(2, 1.0))
    out = evaluate_kl(model, GAUSSIAN, 20_000, seeded(1), batch_size=5_000)
    exact = 2 * (math.log(STD_P) + 1 / (2 * STD_P**2) - 0.5)
    assert abs(out["kl"] - exact) < 4 * out["kl_stderr"]
    assert out["log_z"] == pytest.approx(math.log(2 * math.pi * STD_P**2), abs=1e-10)


def test_nll_loss_and_test_nll_of_a_known_gaussian():
    model = CNF(Still(), base=GaussianBase(2, 1.5))
    x = torch.randn(50, 2, generator=seeded(2))
    loss, metrics = nll_loss(model, x)
    assert metrics["nll"] == pytest.approx(
        -float(GaussianBase(2, 1.5).log_prob(x).mean()), abs=1e-5
    )
    assert loss.requires_grad
    out = evaluate_nll(model, "moons", 3_000, seeded(3), batch_size=1_000)
    again = evaluate_nll(model, "moons", 3_000, seeded(3), batch_size=1_000)
    g = seeded(3)
    points = torch.cat([sample_toy("moons", 1_000, g) for _ in range(3)])
    assert out["nll"] == pytest.approx(
        -float(GaussianBase(2, 1.5).log_prob(points).mean()), abs=1e-4
    )
    assert out == pytest.approx(again)
    assert 0 < out["nll_stderr"] < 0.1


def test_losses_work_for_the_planar_flow_and_report_no_solver_counts():
    nf = PlanarFlow(2, 4)
    loss, metrics = reverse_kl_loss(nf, GAUSSIAN, 32)
    loss.backward()
    assert set(metrics) == {"loss", "kl", "energy", "entropy"}
    assert solver_metrics(nf) == {}
    cnf = CNF(PlanarDynamics(2, 4))
    nll_loss(cnf, torch.randn(8, 2))[0].backward()
    counts = solver_metrics(cnf)
    assert counts["nfe_forward"] > 0 and counts["nfe_backward"] == 0


def test_non_finite_loss_is_a_clear_error():
    class Broken:
        def log_prob(self, x, *, fraction=1.0):
            return torch.full((x.shape[0],), math.nan)

    with pytest.raises(FloatingPointError, match="negative log-likelihood is not finite"):
        nll_loss(Broken(), torch.zeros(3, 2))


def test_density_grid_layout_is_rows_y_columns_x():
    xs, ys, values = density_grid(lambda p: p[:, 0] + 10 * p[:, 1], ((0.0, 1.0), (2.0, 4.0)), 4)
    torch.testing.assert_close(xs, torch.tensor([0.125, 0.375, 0.625, 0.875]))
    torch.testing.assert_close(ys, torch.tensor([2.25, 2.75, 3.25, 3.75]))
    torch.testing.assert_close(values, xs[None, :] + 10 * ys[:, None])
    with pytest.raises(ValueError, match="resolution must be an integer >= 2"):
        density_grid(lambda p: p[:, 0], resolution=1)


@pytest.mark.parametrize("make", [lambda: CNF(PlanarDynamics(2, 4)), lambda: PlanarFlow(2, 10)])
def test_flow_snapshots_shapes(make):
    snaps = flow_snapshots(make(), n_samples=20, resolution=8, generator=seeded(4))
    assert snaps.fractions == FLOW_FRACTIONS
    assert snaps.samples.shape == (6, 20, 2)
    assert snaps.log_density.shape == (6, 8, 8) and torch.isfinite(snaps.log_density).all()
    assert snaps.xs.shape == (8,) and snaps.ys.shape == (8,)


def test_evaluation_errors():
    model = CNF(Still())
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        evaluate_kl(model, GAUSSIAN, 1)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        evaluate_nll(model, "moons", 10, batch_size=0)
