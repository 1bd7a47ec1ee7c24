"""``neuralode train latent-ode``: the paper's Table 2 (latent ODE vs RNNs on spirals).

Protocol P4 of docs/protocols.md: noisy spirals (:func:`~neuralode.data.make_spirals`),
``--n-obs`` of the first 100 points of each observed at random, the next 100 to
extrapolate. The spirals are split into train / validation / test once, from
``--data-seed``; the validation spirals (carved out of the training ones) select the
checkpoint by their extrapolation RMSE, and the test spirals are scored once at the end.

Iterations and epochs: the reference trains for a number of *iterations* (minibatches),
not passes over the data. Here ``--iters`` iterations are cut into epochs of
``--eval-every`` iterations each, the granularity of validation, checkpoints, metrics.csv
rows and ``--resume``. Batches walk through seeded reshuffles of the training spirals
(full batches only), so iteration ``k`` always sees the same spirals, whichever epoch
it falls in and whether the run was resumed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from ...data import IrregularSeries, make_spirals
from ...nn import LatentODE, RNNBaseline, SequenceModel, evaluate_extrapolation
from .._run.config import MAX_COUNT, MAX_LR, RunOptions, check_positive, check_seed
from .._run.distributed import World, unwrap
from .._run.regularizing import RegularizerOptions, penalize
from .._run.runs import RunDir
from .._run.solving import GradientMethod, SolverOptions
from .._run.training import Schedule, Task, epoch_generator, lr_scheduler

Model = Literal["latent-ode", "rnn", "rnn-dt"]
Encoder = Literal["rnn", "gru", "odernn"]
# make_spirals' observation window: --n-obs points are drawn from its 100 grid points.
WINDOW = 100
# Test RMSE is also reported over the first k of the 100 extrapolated points: the error
# grows with the distance from the observations.
HORIZONS = (10, 25, 50)
# The spirals' radius is at most about 3 (make_spirals): noise or a likelihood σ far above
# it leaves nothing to learn, and squares of values beyond about 1e19 overflow float32.
MAX_NOISE = 1e3


@dataclasses.dataclass(frozen=True)
class LatentConfig(RegularizerOptions, SolverOptions, RunOptions):
    """Train a latent ODE or an RNN baseline on noisy spirals (the paper's Table 2).

    Defaults are protocol P4's quick preset (docs/protocols.md): 1000 spirals split
    700 / 100 / 200 (train / validation / test), Adam at lr 1e-2 as in the reference but
    decayed by a cosine and with the gradient clipped, dopri5 at tol 1e-5 with
    backpropagation through the solver.
    """

    model: Model = "latent-ode"
    """latent-ode (the paper's), rnn (25-unit RNN fed the values), rnn-dt (also fed the
    time gap to the next observation)."""
    n_obs: int = 30
    """Observed points per spiral, drawn at random from the first 100 (Table 2: 30, 50, 100)."""
    noise: float = 0.3
    """Standard deviation of the Gaussian noise on every point (torchdiffeq: 0.3)."""
    spirals: int = 1000
    """Spirals generated (train + validation + test)."""
    test_size: int = 200
    """Test spirals, scored once at the end."""
    val_size: int = 100
    """Validation spirals, split off the training spirals; they select the checkpoint."""
    data_seed: int = 0
    """Seed of the spirals and their split: the same data for every --seed and --model."""
    encoder: Encoder = "rnn"
    """latent-ode only: recognition network reading (x, Δt) backwards, rnn (the paper's),
    gru, or odernn (Rubanova et al. 2019)."""
    latent_dim: int = 4
    """latent-ode only: size of z0."""
    hidden: int = 25
    """Hidden units of the recognition network (latent-ode) or of the RNN baselines."""
    dynamics_hidden: tuple[int, ...] = (20,)
    """latent-ode only: hidden widths of the dynamics MLP (20: the paper's 4→20→4;
    20 20: torchdiffeq's)."""
    decoder_hidden: tuple[int, ...] = (20,)
    """latent-ode only: hidden widths of the decoder MLP."""
    obs_std: float | None = None
    """latent-ode only: σ of the observation likelihood (default: --noise)."""
    cell: Literal["rnn", "gru"] = "rnn"
    """rnn / rnn-dt only: recurrent cell."""
    iters: int = 2000
    """Training iterations (minibatches); torchdiffeq's example runs 2000."""
    eval_every: int = 100
    """Iterations per epoch: the granularity of validation, checkpoints and --resume.
    Must divide --iters."""
    batch_size: int = 100
    """Spirals per iteration (global, split across processes under torchrun)."""
    eval_batch_size: int = 500
    """Spirals per batch when scoring validation and test."""
    lr: float = 1e-2
    """Adam's learning rate (the reference's 1e-2)."""
    grad_clip: float | None = 100.0
    """Clip the gradient's global 2-norm to this before each Adam step (None: never). The
    reference does not clip; without it the n=50, noise 0.1 spirals diverged at iteration
    1128 (the latent dynamics turned stiff), and the loss's gradient norm is in the
    thousands at noise 0.1, so 100 clips most steps and only bounds their size."""
    schedule: Schedule = "cosine"
    """Learning rate: cosine decay to 0 over --iters, or constant (the reference's)."""
    kl_warmup: int = 0
    """latent-ode only: iterations over which the KL weight rises linearly from 0 to 1 (0: none)."""
    tol: float = 1e-5
    """Relative and absolute tolerance (the paper: 1.5e-8 in float64; 1e-5 suits float32)."""
    adjoint: GradientMethod = "direct"
    """Gradient method. direct (default): backprop through the ~40 evaluations of a 4-D MLP is
    cheap and exact; backsolve (the paper's adjoint) costs about 20× more time here."""
    kinetic: float = 0.0
    """latent-ode only: weight of the kinetic energy ∫‖f‖² dt of the latent trajectory's
    solve, per spiral, added to the loss (RNODE, Finlay et al. 2020; 0: off). Recorded as
    train_kinetic."""
    jacobian: float = 0.0
    """latent-ode only: weight of the Jacobian's Frobenius norm ∫‖∂f/∂z‖²_F dt per spiral
    (Hutchinson's estimator; 0: off). Recorded as train_jacobian."""
    steer: float = 0.0
    """Not available here (0 only): the latent solve ends at the observation and
    extrapolation times, which a random end time would move."""
    local_error: float = 0.0
    """Not available here yet (0 only): the solver's local error penalty is an option of
    train classify's ODE block."""

    def __post_init__(self) -> None:
        RunOptions.__post_init__(self)
        SolverOptions.__post_init__(self)
        check_positive(self, "spirals", "test_size", "val_size", "latent_dim", "hidden")
        check_positive(self, "iters", "eval_every", "batch_size", "eval_batch_size")
        check_positive(self, "lr", maximum=MAX_LR)
        check_positive(self, "grad_clip")
        check_positive(self, "obs_std", maximum=MAX_NOISE)
        check_positive(self, "noise", allow_zero=True, maximum=MAX_NOISE)
        check_positive(self, "kl_warmup", allow_zero=True)
        check_seed(self, "data_seed")
        RegularizerOptions.__post_init__(self)
        if self.steer:
            raise ValueError(
                "--steer does not apply to train latent-ode: the latent solve must end at the "
                "observation and extrapolation times, which STEER's random end time would "
                "move; drop it (STEER: train classify or train cnf)"
            )
        self.refuse(("local_error",), "to train classify's ODE block only for now (the "
                    "latent solve does not take it); drop it")  # fmt: skip
        if self.model != "latent-ode":
            self.refuse(("kinetic", "jacobian"), f"to --model latent-ode only (an RNN "
                        f"solves no ODE), got --model {self.model}; drop them")  # fmt: skip
        if not 1 <= self.n_obs <= WINDOW:
            raise ValueError(f"--n-obs must lie in [1, {WINDOW}], got {self.n_obs}")
        if self.iters % self.eval_every:
            raise ValueError(
                f"--iters {self.iters} must be a multiple of --eval-every {self.eval_every} "
                f"(an epoch is --eval-every iterations); e.g. --iters "
                f"{math.ceil(self.iters / self.eval_every) * self.eval_every}"
            )
        train = self.spirals - self.test_size - self.val_size
        if train < 1:
            raise ValueError(
                f"--spirals {self.spirals} leaves no training spirals after --test-size "
                f"{self.test_size} and --val-size {self.val_size}; raise --spirals"
            )
        if self.model == "latent-ode" and self.obs_std is None and self.noise == 0:
            raise ValueError("--noise 0 needs --obs-std (the likelihood's σ must be > 0)")
        if any(not 1 <= w <= MAX_COUNT for w in (*self.dynamics_hidden, *self.decoder_hidden)):
            raise ValueError(
                f"--dynamics-hidden and --decoder-hidden widths must lie in [1, {MAX_COUNT}], "
                f"got {self.dynamics_hidden} and {self.decoder_hidden}"
            )

    @property
    def epochs(self) -> int:
        """Epochs of --eval-every iterations."""
        return self.iters // self.eval_every

    def train_size(self) -> int:
        """Training spirals left after the test and validation splits."""
        return self.spirals - self.test_size - self.val_size


class SequenceObjective(nn.Module):
    """A sequence model whose ``forward`` is its loss.

    DDP synchronises gradients only for work done inside ``forward``; the models' training
    entry point is :meth:`~neuralode.nn.SequenceModel.loss`, so this wrapper routes it
    through ``forward``.
    """

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: IrregularSeries, kl_weight: float
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """``model.loss(batch, kl_weight=kl_weight)``."""
        return self.model.loss(batch, kl_weight=kl_weight)


def build_model(cfg: LatentConfig) -> SequenceModel:
    """The model that ``--model`` names, with the config's sizes and solver options."""
    if cfg.model == "latent-ode":
        options = cfg.ode_options()
        return LatentODE(
            latent_dim=cfg.latent_dim, encoder=cfg.encoder, encoder_hidden=cfg.hidden,
            dynamics_hidden=cfg.dynamics_hidden, decoder_hidden=cfg.decoder_hidden,
            obs_std=cfg.obs_std if cfg.obs_std is not None else cfg.noise,
            max_steps=cfg.max_steps, regularizers=cfg.regularizers(), **options,
        )  # fmt: skip
    return RNNBaseline(hidden=cfg.hidden, use_dt=cfg.model == "rnn-dt", cell=cfg.cell)


def load_spirals(cfg: LatentConfig) -> dict[str, IrregularSeries]:
    """``{"train", "val", "test"}`` spirals, and ``"truth"``: the test spirals noise-free.

    ``"truth"`` observes all 100 window points without noise, for the figures: the same
    draws of ``make_spirals`` (window start, direction) come first in its random stream,
    and ``split`` depends only on the count and the seed, so its rows are the test spirals.
    """
    data = make_spirals(cfg.spirals, cfg.n_obs, cfg.noise, seed=cfg.data_seed)
    rest, test = data.split(cfg.test_size, seed=cfg.data_seed)
    train, val = rest.split(cfg.val_size, seed=cfg.data_seed + 1)
    truth = make_spirals(cfg.spirals, WINDOW, 0.0, seed=cfg.data_seed)
    return {"train": train, "val": val, "test": test,
            "truth": truth.split(cfg.test_size, seed=cfg.data_seed)[1]}  # fmt: skip


class LatentTask(Task):
    """Spiral extrapolation (the negative ELBO or the RNN's NLL; validation RMSE selects)."""

    experiment = "latent-ode"
    select = "rmse"
    higher_is_better = False
    size_flags = ("spirals", "hidden", "latent_dim", "dynamics_hidden", "decoder_hidden",
                  "batch_size", "eval_batch_size")  # fmt: skip

    def __init__(self, config: LatentConfig) -> None:
        self.config = config
        self.epochs = config.epochs
        self.max_grad_norm = config.grad_clip
        self._order: tuple[int, torch.Tensor] | None = None

    def setup(self, world: World) -> None:
        """Generate and split the spirals; build the model and Adam."""
        cfg = self.config
        self.device = world.device
        self.splits = {k: v.to(world.device) for k, v in load_spirals(cfg).items()}
        if cfg.batch_size > len(self.splits["train"]):
            raise ValueError(
                f"--batch-size {cfg.batch_size} is more than the {len(self.splits['train'])} "
                "training spirals"
            )
        if cfg.batch_size < world.size:
            raise ValueError(
                f"--batch-size {cfg.batch_size} must be at least the number of processes "
                f"({world.size})"
            )
        self.model = SequenceObjective(build_model(cfg)).to(world.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scheduler = lr_scheduler(self.optimizer, cfg.schedule, cfg.iters)

    def steps_per_epoch(self) -> int:
        """``--eval-every`` iterations."""
        return self.config.eval_every

    def _indices(self, iteration: int) -> torch.Tensor:
        """The global batch of training spirals at ``iteration`` (0-based)."""
        n, size = len(self.splits["train"]), self.config.batch_size
        per_pass = n // size  # full batches; the remainder changes with each reshuffle
        shuffle, position = divmod(iteration, per_pass)
        if self._order is None or self._order[0] != shuffle:
            gen = epoch_generator(self.config.seed, shuffle)
            self._order = (shuffle, torch.randperm(n, generator=gen))
        return self._order[1][position * size : (position + 1) * size]

    def kl_weight(self, iteration: int) -> float:
        """KL weight at ``iteration`` (0-based): linear warm-up over ``--kl-warmup``."""
        warmup = self.config.kl_warmup
        return min(1.0, (iteration + 1) / warmup) if warmup else 1.0

    def train_batches(self, epoch: int, world: World) -> Iterator[tuple[IrregularSeries, float]]:
        """This rank's share of each iteration's spirals, with that iteration's KL weight."""
        first = epoch * self.config.eval_every
        for iteration in range(first, first + self.config.eval_every):
            idx = world.batch_share(self._indices(iteration))
            yield self.splits["train"][idx.to(self.device)], self.kl_weight(iteration)

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The model's loss; sums of loss, KL (latent ODE) and the fit to the observations.

        ``obs_rmse`` is the RMSE of the reconstructed observations (latent ODE) or of the
        one-step-ahead predictions (RNNs), averaged over batches.
        """
        series, kl_weight = batch
        loss, metrics = model(series, kl_weight)
        n = len(series)
        sums = {"loss": metrics["loss"] * n, "obs_rmse": metrics["rmse"] * n, "n": float(n)}
        if "kl" in metrics:
            sums["kl"] = metrics["kl"] * n
        regularization = getattr(sequence_model(model), "regularization", {})
        return penalize(loss, sums, regularization, self.config, n), sums

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, world: World) -> dict[str, float]:
        """Extrapolation RMSE against the noisy and noise-free targets, and forward NFE.

        On the test split also the noise-free RMSE over the first ``k`` extrapolated points
        (``rmse_clean_<k>`` for each ``k`` in :data:`HORIZONS`) and, for the latent ODE,
        ``window_rmse_clean``: its reconstruction of all 100 points of the observation
        window against the noise-free spiral.
        """
        series = self.splits[split]
        rows = world.shard(torch.arange(len(series))).to(self.device)
        part = series[rows]
        horizons = HORIZONS if split == "test" else ()
        keys = ["rmse", "rmse_clean", *(f"rmse_clean_{k}" for k in horizons)]
        sums = dict.fromkeys(["count", "nfe", "batches", *keys], 0.0)
        inner = sequence_model(model)
        if len(part):
            scores = evaluate_extrapolation(
                inner, part, batch_size=self.config.eval_batch_size, horizons=horizons
            )
            count = float(part.target_mask.sum()) * part.channels  # type: ignore[union-attr]
            batches = math.ceil(len(part) / self.config.eval_batch_size)
            sums = {key: scores[key] ** 2 * count for key in keys}
            sums.update(count=count, nfe=scores["nfe"] * batches, batches=float(batches))
        if split == "test" and isinstance(inner, LatentODE):
            sums.update(self._window_sse(inner, part, self.splits["truth"][rows]))
        totals = world.sum(sums)
        # Every spiral has as many targets, so each horizon's RMSE pools alike over ranks.
        out = {key: math.sqrt(totals[key] / totals["count"]) for key in keys}
        out["nfe_forward"] = totals["nfe"] / totals["batches"]
        if "window_sse" in totals:
            out["window_rmse_clean"] = math.sqrt(totals["window_sse"] / totals["window_count"])
        return out

    def _window_sse(
        self, model: LatentODE, part: IrregularSeries, truth: IrregularSeries
    ) -> dict[str, float]:
        """Squared error of the reconstructed observation window against the clean spiral."""
        sse, count = 0.0, 0.0
        size = self.config.eval_batch_size
        for start in range(0, len(part), size):
            batch, clean = part[start : start + size], truth[start : start + size]
            pred = model.extrapolate(batch, clean.times, clean.mask)
            mask = clean.mask[..., None].expand_as(pred)
            sse += float(((pred - clean.values) ** 2)[mask].sum())
            count += float(mask.sum())
        return {"window_sse": sse, "window_count": count}

    def plots(self, run: RunDir, history: list[dict[str, Any]]) -> list[str]:
        """Observations, reconstruction and extrapolation of four test spirals."""
        from .plots import plot_spirals

        model = sequence_model(self.model)
        return [plot_spirals(model, self.splits["test"], self.splits["truth"], run.plots,
                             title=describe_model(self.config))]  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """Model, data and budget facts."""
        cfg = self.config
        return {
            "model": cfg.model,
            "label": describe_model(cfg),
            "n_obs": cfg.n_obs,
            "noise": cfg.noise,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "split_sizes": {k: len(v) for k, v in self.splits.items() if k != "truth"},
            "iters": cfg.iters,
            "iters_per_epoch": cfg.eval_every,
            "batch_size": cfg.batch_size,
        }


def sequence_model(model: nn.Module) -> SequenceModel:
    """The :class:`SequenceModel` inside a (DDP-wrapped) :class:`SequenceObjective`."""
    inner = unwrap(model)
    if not isinstance(inner, SequenceObjective):
        raise TypeError(f"expected a SequenceObjective, got {type(inner).__name__}")
    return inner.model


def describe_model(cfg: LatentConfig) -> str:
    """A short label, e.g. ``latent ODE (rnn encoder), n = 30, noise 0.3``."""
    name = {"latent-ode": f"latent ODE ({cfg.encoder} encoder)", "rnn": "RNN",
            "rnn-dt": "RNN + Δt"}[cfg.model]  # fmt: skip
    return f"{name}, n = {cfg.n_obs}, noise {cfg.noise:g}"


def summary_line(summary: dict[str, Any]) -> str:
    """The one line ``train latent-ode`` prints at the end."""
    return (
        f"{summary['label']}: test extrapolation RMSE {summary['test_rmse_clean']:.4f} "
        f"vs the noise-free spirals, {summary['test_rmse']:.4f} vs the noisy ones "
        f"({summary['train_seconds']:.0f} s training)"
    )
