"""Vector fields for continuous normalizing flows: ``dz/dt = f(t, z)`` on ``(B, D)`` states.

Two families, each with a ``dim`` attribute that :class:`~neuralode.nn.CNF` reads to
build its default base distribution:

- :class:`PlanarDynamics`: the paper's planar CNF (Chen et al. 2018, §4), parameters from
  a hypernetwork of ``t``, as in torchdiffeq's ``examples/cnf.py``.
- :class:`MLPDynamics`: FFJORD's MLP with ``t`` fed to every layer (Grathwohl et al. 2019),
  through :class:`ConcatSquashLinear` (default) or :class:`ConcatLinear` layers.

Rows must not interact (no batch statistics): the trace estimators take per-sample
Jacobians from one batched backward pass. Activations must be smooth, because training
differentiates the trace, i.e. second derivatives of the dynamics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "softplus": nn.functional.softplus,
    "elu": nn.functional.elu,
    "silu": nn.functional.silu,
}


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_state(z: object, dim: int, who: str) -> None:
    """Raise a clear error unless ``z`` is a floating ``(B, dim)`` tensor."""
    if not isinstance(z, torch.Tensor) or not z.is_floating_point():
        got = type(z).__name__ if not isinstance(z, torch.Tensor) else f"dtype {z.dtype}"
        raise TypeError(f"{who} needs a floating tensor of shape (batch, {dim}), got {got}")
    if z.ndim != 2 or z.shape[1] != dim:
        raise ValueError(
            f"{who} needs shape (batch, {dim}), got {tuple(z.shape)}; flatten each sample "
            "to a vector and stack the batch along dim 0"
        )


class PlanarDynamics(nn.Module):
    """The gated planar CNF ``dz/dt = (1/M) Σ_n û_n(t) tanh(w_n(t)ᵀ z + b_n(t))``.

    The paper writes ``Σ_n σ_n(t) u_n h(w_nᵀz + b_n)`` with a scalar gate ``σ_n`` per
    unit; we follow the code the authors ran (torchdiffeq ``examples/cnf.py``): the gate
    is elementwise, ``û_n = u_n ⊙ sigmoid(g_n)``, and the units are averaged (the ``1/M``
    is absorbed by the hypernetwork's last layer). ``w, u, g, b`` come from a
    hypernetwork ``t → tanh → tanh → linear`` with ``hidden`` units.

    Args:
        dim: Dimension ``D`` of the state.
        width: Number of planar units ``M``.
        hidden: Hidden units of the hypernetwork (32 in the reference).
    """

    def __init__(self, dim: int = 2, width: int = 64, hidden: int = 32) -> None:
        super().__init__()
        _check_dims(dim=dim, width=width, hidden=hidden)
        self.dim = dim
        self.width = width
        self.hyper = nn.Sequential(
            nn.Linear(1, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 3 * width * dim + width),
        )

    def units(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W, b, Û)`` at time ``t``: shapes ``(M, D)``, ``(M,)``, ``(M, D)``."""
        params = self.hyper(t.reshape(1, 1)).reshape(-1)
        block = self.width * self.dim
        w, u, gate = params[: 3 * block].view(3, self.width, self.dim)
        b = params[3 * block :]
        return w, b, u * torch.sigmoid(gate)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``dz/dt`` at time ``t``, shape ``(B, D)``."""
        w, b, u = self.units(t.to(z.dtype))
        h = torch.tanh(z @ w.T + b)  # (B, M)
        return h @ u / self.width

    def forward_with_trace(
        self, t: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``dz/dt`` and its exact trace ``(1/M) Σ_n (1 − h_n²) (w_n · û_n)``, ``(B,)``.

        ``∂f/∂z = (1/M) Σ_n û_n (1 − h_n²) w_nᵀ`` is a sum of rank-one matrices, whose
        traces are ``û_n · w_n``: one extra matrix-vector product instead of ``D``
        backward passes (:class:`~neuralode.nn.ExactTrace` uses this).
        """
        w, b, u = self.units(t.to(z.dtype))
        h = torch.tanh(z @ w.T + b)  # (B, M)
        slopes = 1 - h.square()
        return h @ u / self.width, slopes @ (w * u).sum(-1) / self.width


class ConcatLinear(nn.Module):
    """``Linear([x, t])``: a linear layer that sees time as one extra input.

    Args:
        dim_in: Input features (excluding time).
        dim_out: Output features.
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in + 1, dim_out)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Apply to ``x`` of shape ``(B, dim_in)``."""
        time = t.to(x.dtype).expand(x.shape[0], 1)
        return self.linear(torch.cat([x, time], dim=1))


class ConcatSquashLinear(nn.Module):
    """``Linear(x) ⊙ sigmoid(a t + c) + d t``: time gates and shifts every output.

    FFJORD's default layer for toy data (Grathwohl et al. 2019, ``diffeq_layers``).

    Args:
        dim_in: Input features.
        dim_out: Output features.
    """

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.gate = nn.Linear(1, dim_out)
        self.shift = nn.Linear(1, dim_out, bias=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Apply to ``x`` of shape ``(B, dim_in)``."""
        time = t.to(x.dtype).reshape(1, 1)
        return self.linear(x) * torch.sigmoid(self.gate(time)) + self.shift(time)


_LAYERS: dict[str, type[ConcatLinear] | type[ConcatSquashLinear]] = {
    "concat": ConcatLinear,
    "concatsquash": ConcatSquashLinear,
}


class MLPDynamics(nn.Module):
    """An MLP vector field with time fed to every layer (FFJORD's toy ``ODEnet``).

    Args:
        dim: Dimension ``D`` of the state.
        hidden: Widths of the hidden layers (FFJORD's toy default ``64-64-64``).
        layer: ``"concatsquash"`` (FFJORD's default) or ``"concat"`` (``t`` appended).
        activation: ``"tanh"``, ``"softplus"``, ``"elu"`` or ``"silu"``; smooth, because
            training differentiates the trace (second derivatives of ``f``).
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: Sequence[int] = (64, 64, 64),
        *,
        layer: str = "concatsquash",
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        _check_dims(dim=dim, **{f"hidden[{i}]": h for i, h in enumerate(hidden)})
        if layer not in _LAYERS:
            raise ValueError(f"layer must be one of {sorted(_LAYERS)}, got {layer!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}; "
                "non-smooth activations such as ReLU have no useful second derivative"
            )
        self.dim = dim
        widths = [dim, *hidden, dim]
        make = _LAYERS[layer]
        self.layers = nn.ModuleList(make(a, b) for a, b in zip(widths, widths[1:], strict=False))
        self.activation = _ACTIVATIONS[activation]

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``dz/dt`` at time ``t``, shape ``(B, D)``."""
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = self.activation(h)
        return h
