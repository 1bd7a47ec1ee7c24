"""The recurrent baselines of the paper's Table 2: next-observation Gaussian forecasters.

Chen et al. 2018 (§5.1) compare the latent ODE with "an RNN" of 25 hidden units on the
same spirals; protocol P4 (docs/protocols.md) runs two: one fed the observations alone, one
also fed the time gap to the next observation, so that it can know when the next value
is due. Both are trained by the Gaussian negative log-likelihood of each observation
given the ones before it, and extrapolate autoregressively from their own predicted
means.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..data.irregular import IrregularSeries, next_valid_time, previous_valid_time
from .encoders import make_cell, zero_padding
from .sequence import SequenceModel, check_batch, gaussian_log_likelihood, query_times

__all__ = ["RNNBaseline"]


def _gaps_to_next(times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``t_next − t_i`` at each real entry with a real successor, else 0."""
    # Times are >= 0, so -1 marks "no successor".
    following = next_valid_time(times, mask, -1.0)
    return torch.where(mask & (following >= 0), following - times, 0.0)


class RNNBaseline(SequenceModel):
    """An RNN that predicts the mean and log-variance of the next observation.

    Args:
        channels: Observed channels ``D``.
        hidden: Hidden units (25 in the paper).
        use_dt: Also feed the time gap to the next observation (or, when extrapolating,
            to the next requested time). Without it the model sees only the values.
        cell: ``"rnn"`` (tanh) or ``"gru"``.
    """

    def __init__(
        self, channels: int = 2, hidden: int = 25, *, use_dt: bool = False, cell: str = "rnn"
    ) -> None:
        super().__init__()
        self.channels = channels
        self.use_dt = use_dt
        self.cell = make_cell(cell, channels + int(use_dt), hidden)
        self.head = nn.Linear(hidden, 2 * channels)

    def _step(self, h: torch.Tensor, x: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([x, gap[:, None]], dim=-1) if self.use_dt else x
        return self.cell(inputs, h)

    def _read(
        self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gaps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The final state, and the ``(mean, logvar)`` predicted before each position.

        Both predictions are ``(B, N, D)``; position ``i``'s comes from the state after the
        real observations before ``i``.
        """
        h = values.new_zeros(values.shape[0], self.cell.hidden_size)
        means, logvars = [], []
        for i in range(values.shape[1]):
            mean, logvar = self.head(h).chunk(2, dim=-1)
            means.append(mean)
            logvars.append(logvar)
            h = torch.where(mask[:, i, None], self._step(h, values[:, i], gaps[:, i]), h)
        return h, torch.stack(means, dim=1), torch.stack(logvars, dim=1)

    def loss(
        self, batch: IrregularSeries, *, kl_weight: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Gaussian negative log-likelihood of every observation after a series' first.

        Summed over each series and averaged over the batch (the latent ODE's scaling).
        ``kl_weight`` is accepted for a common interface; this model has no KL term.

        Returns:
            The loss and float metrics ``loss``, ``nll`` (per series) and ``rmse`` of the
            one-step-ahead means.
        """
        check_batch(batch, self.channels)
        self.solve_stats = []
        times, values = zero_padding(batch.times, batch.values, batch.mask)
        _, mean, logvar = self._read(times, values, batch.mask, _gaps_to_next(times, batch.mask))
        # Scored: real entries with a real predecessor (the first has nothing to go on).
        scored = batch.mask & (previous_valid_time(times, batch.mask, -1.0) >= 0)
        log_p = gaussian_log_likelihood(values, mean, logvar).sum(dim=-1)
        nll = -torch.where(scored, log_p, 0.0).sum(dim=1)  # (B,)
        loss = nll.mean()
        sq_error = ((mean - values) ** 2)[scored[..., None].expand_as(mean)]
        metrics = {
            "loss": loss.item(),
            "nll": loss.item(),
            "rmse": math.sqrt(sq_error.mean().item()) if sq_error.numel() else float("nan"),
        }
        return loss, metrics

    def extrapolate(
        self,
        batch: IrregularSeries,
        times: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted means ``(B, M, D)`` at ``times``, each fed back as the next input.

        ``times`` (the batch's targets by default) must all lie after each series' last
        observation.
        """
        check_batch(batch, self.channels)
        self.solve_stats = []
        query, query_mask = query_times(batch, times, mask)
        obs_times, values = zero_padding(batch.times, batch.values, batch.mask)
        last = torch.where(batch.mask, obs_times, 0.0).amax(dim=1)  # (B,)
        first = torch.where(query_mask, query, torch.inf).amin(dim=1)  # inf: no targets
        if bool((first <= last).any()):
            row = int(torch.nonzero(first <= last)[0])
            raise ValueError(
                f"RNNBaseline only extrapolates: series {row} asks for time "
                f"{float(first[row])}, not after its last observation at {float(last[row])}"
            )
        # The last observation's input gap reaches the first requested time.
        is_last = batch.mask & (obs_times == last[:, None])
        to_first = torch.where(torch.isinf(first), 0.0, first - last)
        gaps = torch.where(is_last, to_first[:, None], _gaps_to_next(obs_times, batch.mask))
        h, _, _ = self._read(obs_times, values, batch.mask, gaps)
        query = torch.where(query_mask, query, 0.0)
        query_gaps = _gaps_to_next(query, query_mask)
        predictions = []
        for j in range(query.shape[1]):
            mean = self.head(h)[:, : self.channels]
            predictions.append(mean)
            h = torch.where(query_mask[:, j, None], self._step(h, mean, query_gaps[:, j]), h)
        return torch.stack(predictions, dim=1)
