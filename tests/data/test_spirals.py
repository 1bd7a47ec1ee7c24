"""Spirals (the latent-ODE data of Chen et al. 2018, §5.1) and irregular-series batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from neuralode.data import (
    IrregularSeries,
    from_arrays,
    make_spirals,
    next_valid_time,
    previous_valid_time,
    spiral_curves,
)

GRID = torch.linspace(0.0, 6 * math.pi, 500, dtype=torch.float64)


def test_shapes_and_time_grid():
    data = make_spirals(12, 30, 0.1, seed=0)
    assert data.times.shape == (12, 30) and data.values.shape == (12, 30, 2)
    assert data.mask.all() and data.target_mask.shape == (12, 100) and data.target_mask.all()
    assert data.target_values.shape == data.target_clean.shape == (12, 100, 2)
    assert data.times.dtype == data.values.dtype == torch.float32
    # Times are measured from each window's start on torchdiffeq's 500-point grid.
    window = GRID[:100].float()
    for row in data.times:
        assert (row[1:] > row[:-1]).all()  # sorted, no repeats
        assert torch.isin(row, window).all()
    assert torch.equal(data.target_times, GRID[100:200].float().expand(12, -1))


def _match_curve(target: torch.Tensor) -> tuple[str, int]:
    """Which curve and window start a row's noise-free targets come from."""
    cw, ccw = spiral_curves(GRID)
    for name, curve in (("cw", cw), ("ccw", ccw)):
        for start in range(0, 301):
            if torch.allclose(curve[start + 100 : start + 200].float(), target, atol=1e-5):
                return name, start
    raise AssertionError("targets match no window of either curve")


def test_targets_follow_the_reference_curves_in_both_directions():
    data = make_spirals(40, 30, 0.0, seed=1)
    matches = [_match_curve(row) for row in data.target_clean]
    directions = [name for name, _ in matches]
    assert 0 < directions.count("cw") < 40  # both directions occur
    # torchdiffeq's margin: windows start at grid index >= 100 and end inside the grid.
    assert all(100 <= start <= 300 for _, start in matches)
    # Without noise the observations lie on the same curve, at their own times.
    cw, ccw = spiral_curves(GRID)
    for row, (name, start) in enumerate(matches):
        curve = (cw if name == "cw" else ccw)[start : start + 100].float()
        index = torch.searchsorted(GRID[:100].float(), data.times[row])
        assert torch.allclose(data.values[row], curve[index], atol=1e-5)
    assert torch.equal(data.target_values, data.target_clean)


def test_direction_is_fifty_fifty_and_noise_has_the_requested_std():
    data = make_spirals(1000, 10, 0.3, seed=0)
    # The clockwise curve circles (-5, 0) and the counter-clockwise one (5, 0): the sign of
    # the angular velocity about the curve's own centre gives the direction.
    clean = data.target_clean.double()
    centre_x = torch.where(clean[:, :, 0].mean(1) < 0, -5.0, 5.0)[:, None]
    rel = torch.stack([clean[..., 0] - centre_x, clean[..., 1]], -1)
    cross = rel[:, :-1, 0] * rel[:, 1:, 1] - rel[:, :-1, 1] * rel[:, 1:, 0]
    clockwise = (cross < 0).float().mean(1) > 0.5
    assert 0.45 < clockwise.float().mean() < 0.55  # binomial std 0.016
    noise = (data.target_values - data.target_clean).double()
    assert abs(noise.std().item() - 0.3) < 0.01


def test_same_seed_same_data_different_seed_different_data():
    a, b, c = (make_spirals(20, 50, 0.1, seed=s) for s in (3, 3, 4))
    for name in ("times", "values", "target_values", "target_clean"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.times, c.times)
    assert not torch.equal(a.target_clean, c.target_clean)
    # The global RNG is neither used nor touched.
    state = torch.get_rng_state()
    make_spirals(5, 30, 0.1, seed=0)
    assert torch.equal(state, torch.get_rng_state())


def test_observed_points_differ_between_spirals():
    data = make_spirals(50, 30, 0.1, seed=0)
    assert len({tuple(row.tolist()) for row in data.times}) == 50


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_observed": 0}, ValueError, "n_observed"),
        ({"n_observed": 101}, ValueError, r"n_observed must be \[1, 100\]"),
        ({"n_observed": True}, TypeError, "n_observed must be an int"),
        ({"n_spirals": 0}, ValueError, "n_spirals"),
        ({"noise_std": -0.1}, ValueError, "noise_std"),
        ({"grid_points": 299}, ValueError, "grid_points"),
    ],
)
def test_generator_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        make_spirals(**{"n_spirals": 4, "n_observed": 30, "seed": 0, **kwargs})


def test_split_is_seeded_disjoint_and_complete():
    data = make_spirals(1000, 30, 0.1, seed=0)
    train, test = data.split(200, seed=0)
    assert (len(train), len(test)) == (800, 200)
    rows = torch.cat([train.values, test.values])
    # Every spiral lands in exactly one part (noisy rows are unique).
    assert len({tuple(r.flatten().tolist()) for r in rows}) == 1000
    again, _ = data.split(200, seed=0)
    other, _ = data.split(200, seed=1)
    assert torch.equal(train.values, again.values)
    assert not torch.equal(train.values, other.values)
    with pytest.raises(ValueError, match="test_size"):
        data.split(1000, seed=0)


def _ragged() -> IrregularSeries:
    """Three series of lengths 3, 1 and 2 in a (3, 3) layout, padded with NaN."""
    nan = float("nan")
    times = torch.tensor([[0.1, 0.5, 0.9], [0.2, nan, nan], [nan, 0.3, 0.7]])
    values = torch.arange(18.0).reshape(3, 3, 2)
    mask = torch.tensor([[True, True, True], [True, False, False], [False, True, True]])
    values[~mask] = nan
    return from_arrays(times, values, mask, origin=0.0)


def test_batches_cover_everything_once_and_trim_padding():
    data = _ragged()
    assert [len(b) for b in data.batches(2)] == [2, 1]

    def firsts(batches):
        return [v for b in batches for v in b.values[:, :, 0].nan_to_num(-1).amax(1).tolist()]

    assert firsts(data.batches(1)) == [4.0, 6.0, 16.0]  # in order without a generator
    shuffled = [
        firsts(data.batches(1, generator=torch.Generator().manual_seed(s))) for s in range(5)
    ]
    assert all(sorted(order) == [4.0, 6.0, 16.0] for order in shuffled)
    assert len({tuple(order) for order in shuffled}) > 1
    # The short series alone needs one column, not three.
    assert data[[1]].times.shape == (1, 1)
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(0))


def test_valid_time_neighbours_skip_padding():
    times = torch.tensor([[0.0, 1.0, 9.0, 3.0], [0.0, 5.0, -2.0, 7.0]])
    mask = torch.tensor([[True, True, False, True], [True, False, False, True]])
    assert previous_valid_time(times, mask, -1.0).tolist() == [[-1, 0, 1, 1], [-1, 0, 0, 0]]
    assert next_valid_time(times, mask, 99.0).tolist() == [[1, 3, 3, 99], [7, 7, 7, 99]]


def test_from_arrays_accepts_numpy_shared_grids_and_shifts_the_origin():
    times = np.array([1.0, 2.0, 4.0])
    values = np.random.default_rng(0).normal(size=(2, 3, 1))
    mask = np.array([[True, True, True], [False, True, True]])
    data = from_arrays(
        times, values, mask, target_times=np.array([5.0]), target_values=values[:, :1]
    )
    assert data.times.dtype == torch.float32
    # "first": each series starts at its first observed time.
    assert data.times[0].tolist() == [0.0, 1.0, 3.0] and data.times[1, 1:].tolist() == [0.0, 2.0]
    assert data.target_times[:, 0].tolist() == [4.0, 3.0]
    fixed = from_arrays(times, values, mask, origin=1.0, dtype=torch.float64)
    assert fixed.times[1].tolist() == [0.0, 1.0, 3.0] and fixed.values.dtype == torch.float64


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mask": np.ones((2, 3), dtype=np.int64)}, TypeError, "mask must be boolean"),
        ({"values": np.zeros((2, 3))}, ValueError, r"values must have shape \(series, points"),
        ({"times": np.zeros((2, 4))}, ValueError, r"times must have shape \(2, 3\)"),
        ({"times": np.array([0.0, 2.0, 1.0])}, ValueError, "strictly increasing.*series 0"),
        ({"times": np.array([0.0, 1.0, 1.0])}, ValueError, "strictly increasing"),
        ({"values": np.full((2, 3, 1), np.nan)}, ValueError, "values must be finite"),
        ({"mask": np.zeros((2, 3), dtype=bool)}, ValueError, "at least one observation"),
        ({"origin": 1.5}, ValueError, "times must be >= 0"),
        ({"origin": "last"}, TypeError, "origin"),
        ({"target_times": np.array([5.0])}, ValueError, "target_times and target_values"),
        ({"times": "soon"}, TypeError, "times must hold real numbers|times must be an array"),
    ],
)
def test_from_arrays_names_the_bad_argument(kwargs, error, match):
    args = {"times": np.array([0.0, 1.0, 2.0]), "values": np.zeros((2, 3, 1)), **kwargs}
    with pytest.raises(error, match=match):
        from_arrays(**args)


def test_padding_may_hold_nan_but_observations_may_not():
    data = _ragged()
    assert torch.isnan(data.values[~data.mask]).all()
    values = data.values.clone()
    values[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite where mask is True"):
        IrregularSeries(data.times, values, data.mask)


def test_targets_must_match_the_observations():
    data = make_spirals(4, 10, 0.1, seed=0)
    with pytest.raises(ValueError, match="channels"):
        IrregularSeries(
            data.times,
            data.values,
            data.mask,
            data.target_times,
            data.target_values[..., :1],
            data.target_mask,
        )
    with pytest.raises(ValueError, match="target_clean must be"):
        IrregularSeries(
            data.times,
            data.values,
            data.mask,
            data.target_times,
            data.target_values,
            data.target_mask,
            data.target_clean[:2],
        )


def test_to_changes_floats_and_keeps_masks():
    data = make_spirals(3, 10, 0.1, seed=0).to(dtype=torch.float64)
    assert data.values.dtype == data.target_clean.dtype == torch.float64
    assert data.mask.dtype == data.target_mask.dtype == torch.bool
