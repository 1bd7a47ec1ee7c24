"""Toy datasets (seeded, scikit-learn-equivalent where named so) and the Rezende–Mohamed
energies with their quadrature normalisers."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import make_circles as sk_circles
from sklearn.datasets import make_moons as sk_moons

from neuralode.data import (
    ENERGIES,
    QUADRATURE_BOUNDS,
    TOY_DATASETS,
    EnergyTarget,
    energy_target,
    log_normalizer,
    make_circles,
    make_moons,
    sample_toy,
    wall,
)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toy_datasets_are_seeded_and_shaped(name):
    state = torch.random.get_rng_state()
    a = sample_toy(name, 301, seeded(0))
    assert torch.equal(state, torch.random.get_rng_state())  # only the generator was used
    assert a.shape == (301, 2) and a.dtype == torch.float32
    assert torch.isfinite(a).all()
    assert torch.equal(a, sample_toy(name, 301, seeded(0)))
    assert not torch.equal(a, sample_toy(name, 301, seeded(1)))
    assert sample_toy(name, 5, seeded(0), dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("n", [10, 11])
def test_circles_and_moons_match_scikit_learn_without_noise(n):
    ours = make_circles(n, seeded(0), noise=0.0, factor=0.5).numpy()
    theirs = sk_circles(n, noise=0.0, factor=0.5, shuffle=False)[0]
    np.testing.assert_allclose(sorted_rows(ours), sorted_rows(theirs), atol=1e-12)
    ours = make_moons(n, seeded(0), noise=0.0).numpy()
    theirs = sk_moons(n, noise=0.0, shuffle=False)[0]
    np.testing.assert_allclose(sorted_rows(ours), sorted_rows(theirs), atol=1e-12)


def test_circles_radii_and_noise_match_the_reference_recipe():
    x = sample_toy("circles", 20_000, seeded(2), dtype=torch.float64)
    r = x.norm(dim=1)
    outer, inner = r[r > 0.75], r[r <= 0.75]
    assert abs(len(outer) - len(inner)) < 50
    assert abs(float(outer.mean()) - 1.0) < 0.01 and abs(float(inner.mean()) - 0.5) < 0.01
    assert abs(float(outer.std()) - 0.06) < 0.005


def test_moons_are_scaled_and_shifted_like_ffjord():
    x = sample_toy("moons", 20_000, seeded(3), dtype=torch.float64)
    clean = make_moons(20_000, seeded(3), noise=0.0) * 2 + torch.tensor(
        [-1.0, -0.2], dtype=torch.float64
    )
    torch.testing.assert_close(x.mean(0), clean.mean(0), atol=0.01, rtol=0)


def test_checkerboard_points_lie_on_the_dark_squares():
    x = sample_toy("checkerboard", 5_000, seeded(4), dtype=torch.float64)
    cells = torch.floor(x / 2)
    assert bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())
    assert x.abs().max() <= 4


def test_rings_and_eight_gaussians_sit_on_their_radii():
    r = sample_toy("rings", 8_000, seeded(5), dtype=torch.float64).norm(dim=1)
    nearest = (r[:, None] - torch.tensor([3.0, 2.25, 1.5, 0.75], dtype=torch.float64)).abs().min(1)
    assert float(nearest.values.mean()) < 0.1
    x = sample_toy("8gaussians", 8_000, seeded(6), dtype=torch.float64) * 1.414
    assert abs(float(x.norm(dim=1).mean()) - 4) < 0.1


def test_toy_errors_name_the_argument():
    with pytest.raises(ValueError, match="unknown toy dataset 'swirl'"):
        sample_toy("swirl", 10)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_toy("moons", 0)
    with pytest.raises(TypeError, match="floating dtype"):
        sample_toy("moons", 3, dtype=torch.int64)


def reference_energy(name: str, z: np.ndarray) -> np.ndarray:
    """Rezende & Mohamed (2015), Table 1, written independently in numpy."""
    z1, z2 = z[:, 0], z[:, 1]
    w1 = np.sin(2 * np.pi * z1 / 4)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    if name == "u1":
        r = np.sqrt(z1**2 + z2**2)
        lobes = np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)
        return 0.5 * ((r - 2) / 0.4) ** 2 - np.log(lobes)
    if name == "u2":
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if name == "u3":
        a, b = np.exp(-0.5 * ((z2 - w1) / 0.35) ** 2), np.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
        return -np.log(a + b)
    a, b = np.exp(-0.5 * ((z2 - w1) / 0.4) ** 2), np.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2)
    return -np.log(a + b)


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_energies_match_the_published_formulas_inside_the_plot_square(name):
    z = torch.rand(500, 2, generator=seeded(7), dtype=torch.float64) * 7 - 3.5
    target = ENERGIES[name]
    expected = reference_energy(name, z.numpy())
    np.testing.assert_allclose(target.potential(z).numpy(), expected, rtol=1e-10, atol=1e-10)
    # Inside |z1| <= 4 the wall is zero: the target is exactly ∝ exp(−U) there.
    np.testing.assert_allclose(target.energy(z).numpy(), expected, rtol=1e-10, atol=1e-10)


def test_wall_confines_only_outside_the_square():
    z = torch.tensor([[3.9, 0.0], [-4.0, 1.0], [4.2, 0.0], [-5.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(
        wall(z), torch.tensor([0.0, 0.0, 0.5, 12.5], dtype=torch.float64), rtol=1e-12, atol=1e-12
    )
    assert not ENERGIES["u1"].confined and all(ENERGIES[k].confined for k in ("u2", "u3", "u4"))


@pytest.mark.parametrize("std", [0.3, 1.0, 1.2])  # the grid edge at >= 6.6 std
def test_quadrature_recovers_a_gaussian_normaliser(std):
    target = EnergyTarget("gauss", lambda z: 0.5 * (z / std).square().sum(1))
    assert abs(target.log_z - math.log(2 * math.pi * std**2)) < 1e-10
    assert target.normalizer.error < 1e-12


@pytest.mark.parametrize("name", sorted(ENERGIES))
def test_target_normalisers_are_converged_and_the_grid_holds_the_mass(name):
    target = energy_target(name.upper())
    (lo, hi), _ = QUADRATURE_BOUNDS
    edge = torch.linspace(lo, hi, 401, dtype=torch.float64)
    rim = torch.cat(
        [torch.stack([edge, torch.full_like(edge, v)], 1) for v in (lo, hi)]
        + [torch.stack([torch.full_like(edge, v), edge], 1) for v in (lo, hi)]
    )
    inner = torch.stack(torch.meshgrid(edge, edge, indexing="xy"), -1).reshape(-1, 2)
    assert float(target.energy(rim).min() - target.energy(inner).min()) > 60  # e^-60 at the rim
    assert target.normalizer.error < 1e-10
    assert math.isfinite(target.log_z)
    coarse = log_normalizer(target.energy, points=400)
    assert abs(coarse.log_z - target.log_z) < 1e-6


def test_energy_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        ENERGIES["u1"].energy(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="unknown energy 'u9'"):
        energy_target("u9")
    with pytest.raises(ValueError, match="points must be an even integer"):
        log_normalizer(ENERGIES["u1"].energy, points=101)
    with pytest.raises(ValueError, match=r"bounds\[1\]"):
        log_normalizer(ENERGIES["u1"].energy, ((-1.0, 1.0), (2.0, 1.0)))
