"""The planar NF baseline: log-determinants against autograd, the invertibility
constraint, the exact inverse and both directions' densities."""

import pytest
import torch

from neuralode.nn import GaussianBase, PlanarFlow, PlanarLayer


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize(layers, scale: float) -> None:
    """Parameters far from the near-identity initialisation, drawn from torch's RNG."""
    with torch.no_grad():
        for layer in layers:
            for p in (layer.w, layer.u):
                p.copy_(scale * torch.randn_like(p))
            layer.b.copy_(0.5 * torch.randn(()))


def stretched_layer(seed: int, scale: float = 3.0) -> PlanarLayer:
    torch.manual_seed(seed)
    layer = PlanarLayer(2).double()
    randomize([layer], scale)
    return layer


@pytest.mark.parametrize("seed", range(4))
def test_log_det_matches_autograd_jacobian(seed):
    layer = stretched_layer(seed)
    z = torch.randn(6, 2, dtype=torch.float64)
    _, log_det = layer(z)
    jac = torch.func.vmap(torch.func.jacrev(lambda v: layer(v[None])[0][0]))(z)
    torch.testing.assert_close(log_det, torch.linalg.slogdet(jac)[1])


def test_initialisation_is_a_small_volume_preserving_shear():
    torch.manual_seed(5)
    flow = PlanarFlow(3, 16)
    for layer in flow.layers:
        assert abs((layer.w @ layer.u_hat()).item()) < 1e-5  # log-det 0 everywhere
        assert layer.u_hat().norm().item() < 0.1
    x, log_q = flow.sample_and_log_prob(200, seeded(0))
    z = flow.base.sample(200, seeded(0))
    torch.testing.assert_close(log_q, flow.base.log_prob(z), atol=1e-4, rtol=0)


def test_constraint_holds_even_for_adversarial_u():
    layer = PlanarLayer(3).double()
    with torch.no_grad():
        layer.u.copy_(-50 * layer.w)  # wᵀu far below −1: unconstrained, not invertible
    assert (layer.w @ layer.u_hat()).item() > -1
    z = torch.randn(100, 3, dtype=torch.float64)
    assert torch.isfinite(layer(z)[1]).all()


@pytest.mark.parametrize("seed", range(3))
def test_inverse_is_exact_and_differentiable(seed):
    layer = stretched_layer(seed)
    z = torch.randn(8, 2, dtype=torch.float64)
    y, _ = layer(z)
    torch.testing.assert_close(layer.inverse(y), z, rtol=0, atol=1e-12)
    small = stretched_layer(seed, scale=0.1)
    y = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    params = (small.w, small.u, small.b)
    assert torch.autograd.gradcheck(lambda y, *_: small.inverse(y), (y, *params))


@pytest.mark.parametrize("direction", ["generative", "normalizing"])
def test_both_directions_agree_on_the_density_of_their_samples(direction):
    torch.manual_seed(0)
    flow = PlanarFlow(2, 6, direction=direction, base=GaussianBase(2, 0.7)).double()
    randomize(flow.layers, 2.0)
    x, log_q = flow.sample_and_log_prob(32, seeded(1))
    torch.testing.assert_close(flow.log_prob(x), log_q, rtol=0, atol=1e-9)
    torch.testing.assert_close(flow.sample(32, seeded(1)), x)
    assert (x - flow.base.sample(32, seeded(1), dtype=torch.float64)).abs().max() > 0.1


@pytest.mark.parametrize("direction", ["generative", "normalizing"])
def test_density_integrates_to_one_at_every_fraction(direction):
    torch.manual_seed(1)
    flow = PlanarFlow(2, 4, direction=direction).double()
    randomize(flow.layers, 1.0)  # wᵀû from −0.87 to 1.9: peaks the grid resolves
    n, edge = 200, 8.0
    axis = torch.linspace(-edge, edge, n + 1, dtype=torch.float64)[:-1] + edge / n
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    for fraction in (0.25, 0.5, 1.0):
        with torch.no_grad():
            mass = flow.log_prob(grid, fraction=fraction).exp().sum() * (2 * edge / n) ** 2
        assert abs(float(mass) - 1) < 1e-3


def test_normalizing_log_prob_needs_no_inversion():
    # In the normalizing direction the data → base pass is the layers themselves.
    torch.manual_seed(2)
    flow = PlanarFlow(2, 3, direction="normalizing").double()
    randomize(flow.layers, 1.5)
    x = torch.randn(4, 2, dtype=torch.float64)
    z, total = x, torch.zeros(4, dtype=torch.float64)
    for layer in flow.layers:
        z, log_det = layer(z)
        total = total + log_det
    torch.testing.assert_close(flow.log_prob(x), flow.base.log_prob(z) + total)


def test_sample_trajectory_counts_layers():
    torch.manual_seed(3)
    flow = PlanarFlow(2, 10).double()
    randomize(flow.layers, 1.5)
    path = flow.sample_trajectory(5, [0.0, 0.2, 1.0], seeded(0))
    assert path.shape == (3, 5, 2)
    torch.testing.assert_close(path[0], flow.base.sample(5, seeded(0), dtype=torch.float64))
    z = path[0]
    for layer in list(flow.layers)[:2]:
        z = layer(z)[0]
    torch.testing.assert_close(path[1], z)
    torch.testing.assert_close(path[2], flow.sample(5, seeded(0)))


def test_gradients_flow_in_both_directions():
    for direction in ("generative", "normalizing"):
        flow = PlanarFlow(2, 3, direction=direction)
        _, log_q = flow.sample_and_log_prob(8)
        (-flow.log_prob(torch.randn(8, 2)).mean() + log_q.mean()).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters())


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="direction must be one of"):
        PlanarFlow(2, 3, direction="forward")
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        PlanarFlow(2, 0)
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        PlanarFlow(2, 2).log_prob(torch.randn(4))
    with pytest.raises(ValueError, match="positive integer number of samples"):
        PlanarFlow(2, 2).sample(-1)
