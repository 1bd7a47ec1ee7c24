"""The latent ODE of Chen et al. 2018 (§5) for irregularly sampled time series.

Generative model: ``z0 ~ N(0, I)``, ``z(t)`` follows ``dz/dt = f(z)`` (an MLP), and each
observation is ``x_i ~ N(decoder(z(t_i)), σ²)`` with a fixed ``σ``. Inference: a
recognition network reads the observations backwards in time and returns ``q(z0)``; the
model is trained by maximising the ELBO with the reparameterisation trick. Architecture
and defaults follow the paper and torchdiffeq's ``examples/latent_ode.py`` (see
docs/protocols.md, P4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._solve import DEFAULT_MAX_STEPS, solve
from ..adjoints import AbstractAdjoint
from ..controllers import AbstractController, PIDController
from ..data.irregular import IrregularSeries
from ..regularizers import AbstractRegularizer
from ..solvers import AbstractSolver
from .encoders import ODERNNEncoder, RecognitionRNN
from .sequence import (
    SequenceModel,
    check_batch,
    gaussian_log_likelihood,
    kl_to_standard_normal,
    mlp,
    query_times,
)

__all__ = ["LatentDynamics", "LatentODE"]

ENCODERS = ("rnn", "gru", "odernn")


class LatentDynamics(nn.Module):
    """``dz/dt = MLP(z)`` with ELU activations (autonomous: the spirals' dynamics are).

    Args:
        latent_dim: Size of ``z``.
        hidden: Widths of the hidden layers: ``(20,)`` is the paper's one hidden layer,
            ``(20, 20)`` torchdiffeq's two.
    """

    def __init__(self, latent_dim: int, hidden: Sequence[int] = (20,)) -> None:
        super().__init__()
        self.net = mlp([latent_dim, *hidden, latent_dim], nn.ELU)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``dz/dt`` (``t`` is not used)."""
        return self.net(z)


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


class LatentODE(SequenceModel):
    """Latent ODE with a recurrent recognition network, trained by the ELBO.

    The latent trajectory of a batch is one solve on the sorted union of its times (the
    times of every series, ``torch.unique``), gathered back per series; padded entries
    stay out of the union, so they change neither the solve nor its step sizes.

    Args:
        channels: Observed channels ``D`` (2 for the spirals).
        latent_dim: Size of ``z0`` (4 in the paper).
        encoder: ``"rnn"`` (the paper's tanh RNN), ``"gru"``, or ``"odernn"`` (the ODE-RNN
            of Rubanova et al. 2019); each reads ``x`` and the time gaps backwards.
        encoder_hidden: Hidden units of the recognition network (25 in the paper).
        dynamics_hidden: Hidden widths of the latent dynamics MLP (``(20,)``: 4→20→4).
        decoder_hidden: Hidden widths of the ReLU decoder MLP (``(20,)``: 4→20→2).
        obs_std: The fixed standard deviation ``σ`` of the observation likelihood
            (torchdiffeq uses the data's noise, 0.3).
        solver: Solver of every solve (``Dopri5()`` by default).
        controller: Step-size control; ``PIDController(rtol=1e-5, atol=1e-5)`` by default.
        adjoint: Gradient method (``DirectAdjoint()`` by default).
        max_steps: Step budget of each solve.
        regularizers: Integrals along the latent trajectory's solve (the decoder's, from
            ``t = 0`` to the batch's last time) to penalise in training, e.g.
            ``KineticEnergy()`` (see ``solve(regularizers=...)``); training mode only.

    Attributes:
        solve_stats: Statistics of every solve in the latest call (the encoder's too, with
            ``"odernn"``); :attr:`nfe_forward` and :attr:`nfe_backward` sum them.
        regularization: The regularisers' integrals over the latest latent solve, by name
            (0-d sums over the batch, differentiable).
    """

    def __init__(
        self,
        channels: int = 2,
        latent_dim: int = 4,
        *,
        encoder: str = "rnn",
        encoder_hidden: int = 25,
        dynamics_hidden: Sequence[int] = (20,),
        decoder_hidden: Sequence[int] = (20,),
        obs_std: float = 0.3,
        solver: AbstractSolver | None = None,
        controller: AbstractController | None = None,
        adjoint: AbstractAdjoint | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        regularizers: Sequence[AbstractRegularizer] = (),
    ) -> None:
        super().__init__()
        _check_positive("obs_std", obs_std)
        self.channels = channels
        self.latent_dim = latent_dim
        self.encoder = _make_encoder(encoder, channels, latent_dim, encoder_hidden)
        self.dynamics = LatentDynamics(latent_dim, dynamics_hidden)
        self.decoder = mlp([latent_dim, *decoder_hidden, channels], nn.ReLU)
        self.obs_std = float(obs_std)
        self.solver = solver
        # The paper used 1.5e-8 (in float64) and torchdiffeq runs 1e-7/1e-9; in float32
        # tolerances that tight sit at the rounding level of the error estimate.
        self.controller = controller or PIDController(rtol=1e-5, atol=1e-5)
        self.adjoint = adjoint
        self.max_steps = max_steps
        self.regularizers = tuple(regularizers)
        self.regularization: dict[str, torch.Tensor] = {}

    def _solve(
        self, f: nn.Module, y0: torch.Tensor, ts: torch.Tensor,
        regularizers: Sequence[AbstractRegularizer] = (),
    ) -> torch.Tensor:  # fmt: skip
        """One solve with this model's options, its statistics recorded."""
        sol = solve(
            f,
            y0,
            ts,
            solver=self.solver,
            controller=self.controller,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            regularizers=regularizers,
        )
        self.solve_stats.append(sol.stats)
        if regularizers:
            self.regularization = sol.regularization
        ys: Any = sol.ys
        return ys

    def encode(self, batch: IrregularSeries) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of ``q(z0 | observations)``, each ``(B, latent_dim)``."""
        check_batch(batch, self.channels)
        return self.encoder(batch.times, batch.values, batch.mask, solve=self._solve)

    def decode(self, z0: torch.Tensor, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decoded means ``(B, N, D)`` of the latent trajectories from ``z0`` at ``t = 0``.

        Args:
            z0: ``(B, latent_dim)`` latent states at ``t = 0``.
            times: ``(B, N)`` times ``≥ 0`` to decode at.
            mask: ``(B, N)`` bool; entries marked ``False`` get an arbitrary (finite) value.
        """
        real = times[mask]
        if real.numel() and float(real.min()) < 0:
            raise ValueError(
                f"times must be >= 0 (z0 is the state at t = 0), got {float(real.min())}"
            )
        # One solve from t = 0 on the sorted union of every series' times; inverse maps each
        # real entry to its row of the solution. Padded entries point at t = 0.
        grid, inverse = torch.unique(
            torch.cat([real.new_zeros(1), real]), sorted=True, return_inverse=True
        )
        index = torch.zeros(times.shape, dtype=torch.long, device=times.device)
        index[mask] = inverse[1:]
        # Penalties are for training: eval mode solves without them.
        regs = self.regularizers if self.training else ()
        self.regularization = {}
        zs = self._solve(self.dynamics, z0, grid, regs)  # (T, B, latent_dim)
        rows = torch.arange(z0.shape[0], device=z0.device)[:, None]
        return self.decoder(zs[index, rows])  # (B, N, D)

    def loss(
        self,
        batch: IrregularSeries,
        *,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO per series, averaged over the batch (torchdiffeq's scaling).

        ``−ELBO = −Σ_i log N(x_i | decoder(z(t_i)), σ²) + kl_weight · KL(q(z0) ‖ N(0, I))``
        with one reparameterised sample of ``z0`` per series (drawn with ``generator``
        if given). ``kl_weight < 1`` anneals the KL term early in training.

        Returns:
            The loss and float metrics: ``elbo`` (at ``kl_weight = 1``),
            ``log_likelihood`` and ``kl`` per series, ``rmse`` of the reconstructed
            observations, and ``nfe_forward``. Read :attr:`nfe_backward` after
            ``backward()``.
        """
        self.solve_stats = []
        mean, logvar = self.encode(batch)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        z0 = mean + eps * torch.exp(0.5 * logvar)
        pred = self.decode(z0, batch.times, batch.mask)
        mask = batch.mask[..., None].expand_as(pred)
        log_std = torch.tensor(math.log(self.obs_std), dtype=pred.dtype, device=pred.device)
        # Padded values are replaced before the likelihood, so NaN padding cannot leak in.
        values = torch.where(mask, batch.values, pred.detach())
        log_px = gaussian_log_likelihood(values, pred, 2 * log_std)
        log_px = torch.where(mask, log_px, 0.0).sum(dim=(1, 2))  # (B,)
        kl = kl_to_standard_normal(mean, logvar)  # (B,)
        loss = (-log_px + kl_weight * kl).mean()
        sq_error = ((pred - values) ** 2)[mask]
        metrics = {
            "loss": loss.item(),
            "elbo": (log_px - kl).mean().item(),
            "log_likelihood": log_px.mean().item(),
            "kl": kl.mean().item(),
            "rmse": math.sqrt(sq_error.mean().item()),
            "nfe_forward": float(self.nfe_forward),
        }
        return loss, metrics

    def extrapolate(
        self,
        batch: IrregularSeries,
        times: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predicted observation means ``(B, M, D)`` at ``times``, given the batch's data.

        Args:
            batch: The observations to condition on.
            times: ``(M,)`` or ``(B, M)`` times ``≥ 0`` (any, before, inside or after the
                observed window); the batch's ``target_times`` by default.
            mask: ``(B, M)`` bool for ``times`` (all real by default).
            sample: Decode one sample of ``q(z0)`` instead of its mean.
            generator: Random source for ``sample=True``.
        """
        self.solve_stats = []
        times, mask = query_times(batch, times, mask)
        mean, logvar = self.encode(batch)
        z0 = mean
        if sample:
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
            z0 = mean + eps.to(mean.device) * torch.exp(0.5 * logvar)
        return self.decode(z0, times, mask)


def _make_encoder(name: str, channels: int, latent_dim: int, hidden: int) -> nn.Module:
    if name == "odernn":
        return ODERNNEncoder(channels, latent_dim, hidden)
    if name in ("rnn", "gru"):
        return RecognitionRNN(channels, latent_dim, hidden, cell=name)
    raise ValueError(f"encoder must be one of {ENCODERS}, got {name!r}")
