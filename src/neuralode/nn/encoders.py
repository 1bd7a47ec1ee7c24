"""Recognition networks of the latent ODE: observations read backwards in time → q(z0).

Both encoders read each series from its last observation to its first and return the mean
and log-variance of the approximate posterior over the latent state at ``t = 0``. Padded
entries (``mask`` False) leave the hidden state exactly as it was, so they change nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..data.irregular import previous_valid_time
from .sequence import mlp

__all__ = ["ODERNNEncoder", "RecognitionRNN", "Solve", "make_cell"]

# solve(f, y0, ts) -> ys of shape (len(ts), *y0.shape), with the model's solver options.
Solve = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

CELLS = ("rnn", "gru")


def make_cell(cell: str, inputs: int, hidden: int) -> nn.RNNCellBase:
    """A recurrent cell: ``"rnn"`` (tanh, the paper's) or ``"gru"``."""
    if cell == "rnn":
        return nn.RNNCell(inputs, hidden)
    if cell == "gru":
        return nn.GRUCell(inputs, hidden)
    raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")


def zero_padding(
    times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Times and values with padded entries set to 0.

    Masking the *inputs* (not only the updates) keeps NaN or huge padding out of every
    computation: ``where`` passes no gradient to the branch it drops, but a NaN computed
    in that branch would still turn the gradient of its inputs into NaN.
    """
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    return torch.where(mask, times, zero), torch.where(mask[..., None], values, zero)


class RecognitionRNN(nn.Module):
    """A recurrent cell fed ``(x_i, Δt_i)`` from the last observation to the first.

    ``Δt_i = t_i − t_{i−1}`` is the gap to the previous observation (to ``t = 0`` for the
    first), so the encoder sees the irregular sampling. The paper's recognition network is
    ``cell="rnn"`` with 25 units (torchdiffeq's ``RecognitionRNN`` reads ``x`` alone,
    since its spirals are regularly sampled).

    Args:
        channels: Observed channels ``D``.
        latent_dim: Size of ``z0``.
        hidden: Hidden units.
        cell: ``"rnn"`` or ``"gru"``.
    """

    def __init__(self, channels: int, latent_dim: int, hidden: int = 25, cell: str = "rnn"):
        super().__init__()
        self.cell = make_cell(cell, channels + 1, hidden)
        self.head = nn.Linear(hidden, 2 * latent_dim)

    def forward(
        self,
        times: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        solve: Solve | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, logvar)`` of ``q(z0)``, each ``(B, latent_dim)``.

        ``solve`` is not used: this encoder's state changes only at observations.
        """
        times, values = zero_padding(times, values, mask)
        gaps = torch.where(mask, times - previous_valid_time(times, mask, 0.0), 0.0)
        inputs = torch.cat([values, gaps[..., None]], dim=-1)  # (B, N, D + 1)
        h = values.new_zeros(values.shape[0], self.cell.hidden_size)
        for i in reversed(range(values.shape[1])):
            h = torch.where(mask[:, i, None], self.cell(inputs[:, i], h), h)
        mean, logvar = self.head(h).chunk(2, dim=-1)
        return mean, logvar


class _Rescaled(nn.Module):
    """``dh/ds = scale · f(h)`` on ``s ∈ [0, 1]``: per-row time spans in one joint solve.

    With autonomous dynamics, evolving row ``b`` by a time span ``scale_b`` equals
    integrating the rescaled field over ``[0, 1]``, so rows with different gaps (and rows
    with no gap, ``scale_b = 0``, which stay exactly where they are) share one solve.
    """

    def __init__(self, f: nn.Module, scale: torch.Tensor) -> None:
        super().__init__()
        self.f = f
        self.scale = scale  # (B, 1), constant: no gradient flows into the gaps

    def forward(self, s: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.scale * self.f(h)


class ODERNNEncoder(nn.Module):
    """ODE-RNN run backwards (Rubanova, Chen & Duvenaud 2019, Alg. 1).

    Between observations the hidden state follows ``dh/dt = f(h)`` (an MLP); at each
    observation a GRU cell updates it with ``x_i``. Reading backwards, the state is
    evolved from each observation back to the previous one, and finally back to ``t = 0``.

    Rubanova et al. solve on the union of the batch's times (every row evolves across
    every time, updating where observed): ``len(union) − 1`` solves. Here each step of the
    padded layout is one solve over ``[0, 1]`` of the field rescaled by each row's own gap
    (:class:`_Rescaled`): ``N`` solves for ``N`` points per series, whatever the union.

    Args:
        channels: Observed channels ``D``.
        latent_dim: Size of ``z0``.
        hidden: Hidden units of the GRU state.
        ode_hidden: Hidden units of the MLP ``f`` (tanh, as in Rubanova et al.).
    """

    def __init__(self, channels: int, latent_dim: int, hidden: int = 25, ode_hidden: int = 25):
        super().__init__()
        self.dynamics = mlp([hidden, ode_hidden, hidden], nn.Tanh)
        self.cell = nn.GRUCell(channels, hidden)
        self.head = nn.Linear(hidden, 2 * latent_dim)

    def forward(
        self,
        times: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        solve: Solve | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean, logvar)`` of ``q(z0)``, each ``(B, latent_dim)``; needs ``solve``."""
        if solve is None:
            raise ValueError("ODERNNEncoder needs solve= to evolve its state between times")
        times, values = zero_padding(times, values, mask)
        h = values.new_zeros(values.shape[0], self.cell.hidden_size)
        # The time the state is at; it starts at each row's last observation, so the first
        # update needs no evolution.
        cursor = torch.where(mask, times, 0.0).amax(dim=1)
        for i in reversed(range(values.shape[1])):
            h = self._evolve(h, torch.where(mask[:, i], cursor - times[:, i], 0.0), solve)
            h = torch.where(mask[:, i, None], self.cell(values[:, i], h), h)
            cursor = torch.where(mask[:, i], times[:, i], cursor)
        h = self._evolve(h, cursor, solve)  # back to t = 0
        mean, logvar = self.head(h).chunk(2, dim=-1)
        return mean, logvar

    def _evolve(self, h: torch.Tensor, span: torch.Tensor, solve: Solve) -> torch.Tensor:
        """``h`` moved back in time by ``span`` (``(B,)``, ``≥ 0``, per row)."""
        if not bool((span > 0).any()):
            return h
        s = torch.tensor([0.0, 1.0], dtype=h.dtype, device=h.device)
        return solve(_Rescaled(self.dynamics, -span[:, None]), h, s)[-1]
