"""Latent ODE, its encoders and the RNN baselines on irregularly sampled series."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no
from generic import EACH_ADJOINT
from neuralode.data import IrregularSeries, from_arrays, make_spirals
from neuralode.nn import LatentODE, RNNBaseline, SequenceModel, evaluate_extrapolation

TIGHT = no.PIDController(rtol=1e-9, atol=1e-9)
ADJOINTS = list(EACH_ADJOINT.values())


def latent(encoder: str = "rnn", **kwargs) -> LatentODE:
    torch.manual_seed(0)
    return LatentODE(encoder=encoder, encoder_hidden=6, **kwargs).double()


def rnn(use_dt: bool, cell: str = "rnn") -> RNNBaseline:
    torch.manual_seed(0)
    return RNNBaseline(hidden=6, use_dt=use_dt, cell=cell).double()


MODELS = {
    "latent-rnn": lambda: latent("rnn", controller=TIGHT),
    "latent-gru": lambda: latent("gru", controller=TIGHT),
    "latent-odernn": lambda: latent("odernn", controller=TIGHT),
    "rnn": lambda: rnn(False),
    "rnn-dt": lambda: rnn(True),
    "gru-dt": lambda: rnn(True, "gru"),
}


def ragged(padding: float = 0.0) -> IrregularSeries:
    """Three 2-D series of 4, 2 and 3 points (padding in the middle and at the end), with
    targets of 3, 1 and 2 points; padded entries hold ``padding``."""
    gen = torch.Generator().manual_seed(0)
    times = torch.tensor([[0.1, 0.4, 0.8, 1.0], [0.0, 0.3, 0.3, 0.3], [0.2, 0.5, 0.5, 0.9]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 1]], dtype=torch.bool)
    t_times = torch.tensor([[1.2, 1.5, 1.9], [0.6, 0.6, 0.6], [1.1, 1.1, 1.6]])
    t_mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 1]], dtype=torch.bool)
    values = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    t_values = torch.randn(3, 3, 2, generator=gen, dtype=torch.float64)
    times, values = times.double().clone(), values.clone()
    for x, m in ((times, mask), (values, mask), (t_times, t_mask), (t_values, t_mask)):
        x[~m] = padding
    return IrregularSeries(times, values, mask, t_times.double(), t_values, t_mask, t_values + 0.1)


def loss_of(model: SequenceModel, batch: IrregularSeries) -> tuple[torch.Tensor, dict]:
    if isinstance(model, LatentODE):
        return model.loss(batch, generator=torch.Generator().manual_seed(1))
    return model.loss(batch)


@pytest.mark.parametrize("name", list(MODELS))
def test_padded_entries_change_nothing(name):
    model = MODELS[name]()
    outputs = []
    for padding in (0.0, float("nan"), 1e6):
        batch = ragged(padding)
        model.zero_grad()
        loss, _ = loss_of(model, batch)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        outputs.append((loss.detach(), model.extrapolate(batch).detach(), grads))
    for loss, pred, grads in outputs[1:]:
        assert torch.equal(loss, outputs[0][0])
        mask = ragged().target_mask
        assert torch.equal(pred[mask], outputs[0][1][mask])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, outputs[0][2], strict=True))
    assert torch.isfinite(outputs[0][0])


@pytest.mark.parametrize("name", list(MODELS))
def test_a_series_alone_equals_the_series_in_a_padded_batch(name):
    model = MODELS[name]()
    batch = ragged(float("nan"))
    together = model.extrapolate(batch)
    for row in range(3):
        alone = model.extrapolate(batch[[row]])[0]
        real = batch.target_mask[row, : alone.shape[0]]
        # Joint adaptive solves share step sizes, so agreement is to the tolerance (1e-9).
        assert torch.allclose(alone[real], together[row, : alone.shape[0]][real], atol=1e-7)
    loss_rows = [loss_of(model, batch[[r]])[0] for r in range(3)]
    if not isinstance(model, LatentODE):  # the ELBO's z0 noise depends on the batch size
        assert torch.allclose(torch.stack(loss_rows).mean(), loss_of(model, batch)[0])


@pytest.mark.parametrize("name", list(MODELS))
def test_extrapolate_returns_the_requested_times(name):
    model = MODELS[name]()
    batch = ragged()
    times = torch.tensor([1.25, 1.5, 2.0], dtype=torch.float64)
    pred = model.extrapolate(batch, times)
    assert pred.shape == (3, 3, 2)
    per_row = model.extrapolate(batch, times.expand(3, -1))
    assert torch.allclose(pred, per_row, atol=1e-7)
    # The predictions belong to their times: asking for a prefix gives the same values.
    prefix = model.extrapolate(batch, times[:2])
    assert torch.allclose(prefix, pred[:, :2], atol=1e-7)
    assert not torch.allclose(pred[:, 0], pred[:, 2])


def test_latent_predictions_are_the_decoded_solution_at_those_times():
    model = latent(controller=TIGHT)
    batch = ragged()
    times = torch.tensor([0.05, 0.7, 3.0], dtype=torch.float64)  # before, inside, after
    with torch.no_grad():
        z0, _ = model.encode(batch)
        zs = no.solve(
            model.dynamics, z0, torch.cat([times.new_zeros(1), times]), controller=TIGHT
        ).ys
        expected = model.decoder(zs[1:]).transpose(0, 1)
        assert torch.allclose(model.extrapolate(batch, times), expected, atol=1e-7)


def test_rnn_baselines_use_time_only_with_dt():
    batch = ragged()
    shifted = IrregularSeries(
        batch.times * 1.5, batch.values, batch.mask,
        batch.target_times * 1.5, batch.target_values, batch.target_mask,
    )  # fmt: skip
    plain, with_dt = rnn(False), rnn(True)
    assert torch.equal(plain.loss(batch)[0], plain.loss(shifted)[0])
    assert torch.equal(plain.extrapolate(batch), plain.extrapolate(shifted))
    assert not torch.equal(with_dt.loss(batch)[0], with_dt.loss(shifted)[0])
    assert not torch.allclose(with_dt.extrapolate(batch), with_dt.extrapolate(shifted))


def test_rnn_baseline_only_extrapolates():
    with pytest.raises(ValueError, match="only extrapolates: series 0 asks for time 0.5"):
        rnn(True).extrapolate(ragged(), torch.tensor([0.5, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("encoder", ["rnn", "odernn"])
@pytest.mark.parametrize("adjoint", ADJOINTS, ids=lambda a: type(a).__name__)
def test_gradients_reach_every_parameter_with_every_method(encoder, adjoint):
    reference = latent(encoder, controller=TIGHT)
    model = latent(encoder, controller=TIGHT, adjoint=adjoint)
    # Three time grids: shared regular times, per-series irregular times, padded series.
    spirals = make_spirals(3, 5, 0.1, seed=0).to(dtype=torch.float64)
    regular = from_arrays(
        torch.linspace(0, 1, 6), torch.randn(3, 6, 2), origin=0.0, dtype=torch.float64
    )
    for batch in (regular, spirals, ragged(float("nan"))):
        grads = []
        for m in (reference, model):
            m.zero_grad()
            loss_of(m, batch)[0].backward()
            grads.append([p.grad for p in m.parameters()])
        # Checkpointing replays the same discrete solve: the same gradient up to rounding.
        # Backsolve differentiates the continuous problem, whose solution differs from the
        # discrete (interpolated) outputs by more than the tolerance: about 1e-5 relative
        # was measured here.
        rel = 1e-3 if isinstance(adjoint, no.BacksolveAdjoint) else 1e-9
        for g_ref, g in zip(*grads, strict=True):
            assert g is not None and torch.isfinite(g).all()
            assert (g - g_ref).abs().max() <= rel * g_ref.abs().max()
        assert all(bool(g.abs().sum() > 0) for g in grads[1])


def test_nfe_statistics():
    batch = ragged()
    direct = latent(controller=TIGHT)
    loss, metrics = direct.loss(batch)
    loss.backward()
    assert metrics["nfe_forward"] == direct.nfe_forward > 0 and direct.nfe_backward == 0
    backsolve = latent("odernn", adjoint=no.BacksolveAdjoint())
    backsolve.loss(batch)[0].backward()
    # The ODE-RNN solves once per column with a gap to cover (3 of the 4: every row's state
    # starts at its last observation), once back to t = 0; then the decoder's solve.
    assert len(backsolve.solve_stats) == 3 + 1 + 1
    assert backsolve.nfe_backward > 0
    assert rnn(True).nfe_forward == 0


@pytest.mark.parametrize("encoder", ["rnn", "gru", "odernn"])
def test_elbo_is_finite_and_decreases_on_tiny_data(encoder):
    torch.manual_seed(0)
    model = LatentODE(
        encoder=encoder, obs_std=0.3, controller=no.PIDController(rtol=1e-4, atol=1e-4)
    )
    data = make_spirals(16, 10, 0.3, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss, metrics = model.loss(data, generator=gen)
        loss.backward()
        optimizer.step()
        assert all(math.isfinite(v) for v in metrics.values())
        losses.append(metrics["loss"])
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
    assert metrics["elbo"] <= -metrics["loss"] + 1e-3  # kl_weight = 1: the same number


def test_kl_weight_scales_only_the_kl_term():
    model = latent()
    batch = ragged()
    full, metrics = model.loss(batch, generator=torch.Generator().manual_seed(0))
    none, _ = model.loss(batch, kl_weight=0.0, generator=torch.Generator().manual_seed(0))
    assert math.isclose((full - none).item(), metrics["kl"], rel_tol=1e-9)
    assert math.isclose(-none.item(), metrics["log_likelihood"], rel_tol=1e-9)


@pytest.mark.parametrize("name", ["latent-rnn", "rnn", "rnn-dt"])
def test_baseline_losses_are_finite_and_decrease(name):
    model = MODELS[name]()
    data = make_spirals(16, 10, 0.1, seed=0).to(dtype=torch.float64)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = loss_of(model, data)[0].item()
    for _ in range(15):
        optimizer.zero_grad()
        loss_of(model, data)[0].backward()
        optimizer.step()
    assert loss_of(model, data)[0].item() < first


class Oracle(SequenceModel):
    """Predicts the noise-free targets exactly (to test the evaluation)."""

    def loss(self, batch, *, kl_weight=1.0):
        raise NotImplementedError

    def extrapolate(self, batch, times=None, mask=None):
        return batch.target_clean


def test_evaluation_pools_squared_errors_over_real_targets():
    data = make_spirals(50, 10, 0.2, seed=0)
    scores = evaluate_extrapolation(Oracle(), data, batch_size=7)
    assert scores["rmse_clean"] == 0.0
    noise = (data.target_values - data.target_clean).double().pow(2).mean().sqrt().item()
    assert math.isclose(scores["rmse"], noise, rel_tol=1e-5) and scores["nfe"] == 0
    # Padded targets are ignored (the ragged batch holds NaN there).
    assert math.isclose(evaluate_extrapolation(Oracle(), ragged(float("nan")))["rmse"], 0.1)


class LateDrift(Oracle):
    """Exact for the first 10 targets, then off by 1 in both coordinates."""

    def extrapolate(self, batch, times=None, mask=None):
        pred = batch.target_clean.clone()
        pred[:, 10:] += 1.0
        return pred


def test_evaluation_scores_each_horizon_over_the_first_k_targets():
    data = make_spirals(20, 10, 0.2, seed=0)  # 100 targets per spiral
    scores = evaluate_extrapolation(LateDrift(), data, batch_size=6, horizons=(10, 50))
    assert scores["rmse_clean_10"] == 0.0
    assert math.isclose(scores["rmse_clean_50"], math.sqrt(40 / 50), rel_tol=1e-6)
    assert math.isclose(scores["rmse_clean"], math.sqrt(90 / 100), rel_tol=1e-6)


def test_evaluation_restores_training_mode_and_needs_targets():
    model = rnn(True)
    evaluate_extrapolation(model, ragged())
    assert model.training
    with pytest.raises(ValueError, match="no targets"):
        evaluate_extrapolation(model, from_arrays([0.0, 1.0], torch.zeros(2, 2, 2)))


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: LatentODE(encoder="lstm"), ValueError, "encoder must be one of"),
        (lambda: LatentODE(obs_std=0.0), ValueError, "obs_std must be a positive"),
        (lambda: RNNBaseline(cell="lstm"), ValueError, "cell must be one of"),
    ],
)
def test_bad_configuration_is_named(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_batches_are_named():
    model = LatentODE()
    with pytest.raises(TypeError, match="IrregularSeries"):
        model.loss(torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="observes 2 channels but the batch has 1"):
        model.loss(from_arrays([0.0, 1.0], torch.zeros(2, 2, 1)))
    batch = make_spirals(2, 10, 0.1, seed=0)
    with pytest.raises(ValueError, match="strictly increasing"):
        model.extrapolate(batch, torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match=r"times must have shape \(M,\) or \(2, M\)"):
        model.extrapolate(batch, torch.ones(3, 1))


def test_regularisers_ride_on_the_latent_solve_only():
    plain = latent("odernn", controller=TIGHT)
    model = latent("odernn", controller=TIGHT, regularizers=[no.KineticEnergy()])
    batch = ragged()
    times = torch.tensor([0.05, 0.7, 3.0], dtype=torch.float64)
    torch.testing.assert_close(model.extrapolate(batch, times), plain.extrapolate(batch, times))
    assert plain.regularization == {}
    with torch.no_grad():
        z0, _ = model.encode(batch)
        direct = no.solve(model.dynamics, z0, torch.cat([times.new_zeros(1), times]),
                          controller=TIGHT, regularizers=[no.KineticEnergy()])  # fmt: skip
    torch.testing.assert_close(model.regularization["kinetic"], direct.regularization["kinetic"])
    loss, _ = model.loss(batch, generator=torch.Generator().manual_seed(0))
    (loss + model.regularization["kinetic"]).backward()
    assert all(p.grad is not None for p in model.dynamics.parameters())
    model.eval()
    model.extrapolate(batch, times)
    assert model.regularization == {}  # penalties are for training
