"""What the time-series models share: one interface, Gaussian terms, extrapolation scores.

:class:`LatentODE` and :class:`RNNBaseline` both take an
:class:`~neuralode.data.IrregularSeries` batch, so one training loop and one evaluation
serve all of them::

    loss, metrics = model.loss(batch, kl_weight=1.0)  # scalar loss, dict of floats
    loss.backward()
    predictions = model.extrapolate(batch)             # (B, M, D) at batch.target_times
    scores = evaluate_extrapolation(model, test_set)   # RMSE vs noisy and noise-free targets
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import nn

from .._solution import Stats
from ..data.irregular import IrregularSeries, check_times

__all__ = [
    "SequenceModel",
    "evaluate_extrapolation",
    "gaussian_log_likelihood",
    "kl_to_standard_normal",
    "mlp",
]

_LOG_2PI = math.log(2 * math.pi)


def gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor
) -> torch.Tensor:
    """Elementwise ``log N(x | mean, exp(logvar))``."""
    return -0.5 * (_LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, exp(logvar)) ‖ N(0, I))`` summed over the last axis (closed form)."""
    return 0.5 * (torch.exp(logvar) + mean**2 - 1.0 - logvar).sum(dim=-1)


def mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (not after)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i:
            layers.append(activation())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def check_batch(batch: object, channels: int) -> IrregularSeries:
    """The batch, if it is an :class:`IrregularSeries` with ``channels`` channels."""
    if not isinstance(batch, IrregularSeries):
        raise TypeError(
            f"batch must be a neuralode.data.IrregularSeries, got {type(batch).__name__}; "
            "build one with neuralode.data.from_arrays(times, values, mask)"
        )
    if batch.channels != channels:
        raise ValueError(
            f"the model observes {channels} channels but the batch has {batch.channels}"
        )
    return batch


def targets_of(batch: IrregularSeries) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's ``(target_times, target_mask, target_values)``, or a clear error."""
    times, mask, values = batch.target_times, batch.target_mask, batch.target_values
    if times is None or mask is None or values is None:
        raise ValueError(
            "the batch has no targets: build it with target_times/target_values, or pass "
            "times= to predict at"
        )
    return times, mask, values


def query_times(
    batch: IrregularSeries, times: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``(B, M)`` times to predict at and their mask (the batch's targets by default).

    ``times`` may be ``(M,)``, shared by the whole batch; ``mask`` defaults to all real.
    """
    if times is None:
        return targets_of(batch)[:2]
    if isinstance(times, torch.Tensor) and times.ndim == 1:
        times = times.expand(len(batch), -1)
    if mask is None and isinstance(times, torch.Tensor):
        mask = torch.ones(times.shape, dtype=torch.bool, device=times.device)
    check_times("", times, mask)
    if times.shape[0] != len(batch):
        raise ValueError(
            f"times must have shape (M,) or ({len(batch)}, M) for this batch of "
            f"{len(batch)} series, got {tuple(times.shape)}"
        )
    return times, mask


class SequenceModel(nn.Module, abc.ABC):
    """A model of irregularly sampled series: a loss on a batch and extrapolation.

    Attributes:
        solve_stats: :class:`~neuralode.Stats` of every ODE solve in the latest call of
            :meth:`loss` or :meth:`extrapolate` (empty for models without ODEs).
    """

    def __init__(self) -> None:
        super().__init__()
        self.solve_stats: list[Stats] = []

    @abc.abstractmethod
    def loss(
        self, batch: IrregularSeries, *, kl_weight: float = 1.0
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss on the observations of ``batch`` (a scalar) and its metrics."""

    @abc.abstractmethod
    def extrapolate(
        self,
        batch: IrregularSeries,
        times: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted means ``(B, M, D)`` at ``times`` (the batch's targets by default)."""

    @property
    def nfe_forward(self) -> int:
        """Vector-field evaluations of the forward solves in the latest call."""
        return sum(s.nfe for s in self.solve_stats)

    @property
    def nfe_backward(self) -> int:
        """Backward-pass evaluations of those solves, once ``backward()`` has run.

        0 with ``DirectAdjoint``, which backpropagates through the solver's operations
        instead of solving backwards.
        """
        return sum(s.nfe_backward for s in self.solve_stats)


@torch.no_grad()
def evaluate_extrapolation(
    model: SequenceModel,
    series: IrregularSeries,
    *,
    batch_size: int = 256,
    horizons: Sequence[int] = (),
) -> dict[str, float]:
    """Root-mean-square error of ``model.extrapolate`` over every real target of ``series``.

    The error is pooled over targets and channels (Table 2's "predictive RMSE"). Runs in
    eval mode without gradients and restores the model's training mode.

    Args:
        model: The trained model.
        series: Series with targets (``target_times`` and ``target_values``).
        batch_size: Series per call of ``model.extrapolate``.
        horizons: Also score the first ``k`` targets of every series, for each ``k``: the
            error grows with the distance from the observations, so the pooled RMSE
            depends on how far the targets reach.

    Returns:
        ``rmse`` against the observed (noisy) targets, ``rmse_clean`` against the
        noise-free ones (only when ``series.target_clean`` is known), ``rmse_clean_<k>``
        for each horizon ``k`` (likewise), and ``nfe`` (forward evaluations per batch,
        averaged).
    """
    targets_of(series)
    was_training = model.training
    model.eval()
    sse, sse_clean, count, nfe, n_batches = 0.0, 0.0, 0, 0, 0
    by_horizon = {k: [0.0, 0] for k in horizons}
    try:
        for batch in series.batches(batch_size):
            _, target_mask, target_values = targets_of(batch)
            pred = model.extrapolate(batch)
            mask = target_mask[..., None].expand_as(pred)
            sse += float(((pred - target_values) ** 2)[mask].sum())
            if batch.target_clean is not None:
                sq_clean = (pred - batch.target_clean) ** 2
                sse_clean += float(sq_clean[mask].sum())
                for k, sums in by_horizon.items():
                    sums[0] += float(sq_clean[:, :k][mask[:, :k]].sum())
                    sums[1] += int(mask[:, :k].sum())
            count += int(mask.sum())
            nfe += model.nfe_forward
            n_batches += 1
    finally:
        model.train(was_training)
    result = {"rmse": math.sqrt(sse / count)}
    if series.target_clean is not None:
        result["rmse_clean"] = math.sqrt(sse_clean / count)
        result.update({f"rmse_clean_{k}": math.sqrt(e / max(n, 1))
                       for k, (e, n) in by_horizon.items()})  # fmt: skip
    result["nfe"] = nfe / n_batches
    return result
