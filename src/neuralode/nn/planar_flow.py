"""The planar normalizing flow baseline (Rezende & Mohamed 2015, §4.1 and appendix A.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .cnf import BaseDistribution, base_sample, check_fractions, default_base
from .cnf_dynamics import check_state

# Bisection halves the bracket [s − |c|, s + |c|] (|c| = |wᵀû| is O(1)) once per
# iteration: 64 halvings reach the float64 resolution; one Newton step follows.
_BISECTIONS = 64
_DIRECTIONS = ("generative", "normalizing")
# wᵀu where m(wᵀu) = −1 + softplus(wᵀu) = 0: û ⟂ w.
_NEUTRAL = math.log(math.e - 1)


class PlanarLayer(nn.Module):
    """``f(z) = z + û tanh(wᵀz + b)``, invertible by construction.

    The constraint ``wᵀû ≥ −1`` (sufficient for invertibility with ``tanh``) is imposed
    by the reparametrisation ``û = u + (m(wᵀu) − wᵀu) w / ‖w‖²`` with
    ``m(x) = −1 + softplus(x)`` (Rezende & Mohamed 2015, appendix A.1). The log-determinant
    is ``log |1 + ûᵀ ψ(z)|`` with ``ψ(z) = tanh'(wᵀz + b) w``; under the constraint
    ``1 + ûᵀψ = 1 + tanh'(·) wᵀû > 0``, so it is ``log1p(tanh'(·) wᵀû)``.

    Args:
        dim: Dimension ``D``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        # The paper gives no initialisation. Start near the identity: with wᵀu = log(e − 1)
        # the constraint map gives m(wᵀu) = 0, so û is u's small part orthogonal to w and
        # the layer is a small volume-preserving shear. (Small random w and u instead give
        # wᵀû ≈ m(0) = −0.31, a contraction by 0.69 in every layer's active slab, and û of
        # size 0.3/‖w‖: 64 such layers start far from the base density.)
        w = torch.randn(dim) / math.sqrt(dim)
        u = 0.01 * torch.randn(dim)
        u = u + (_NEUTRAL - w @ u) * w / w.square().sum()
        self.w = nn.Parameter(w)
        self.u = nn.Parameter(u)
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        """The constrained ``û``, with ``wᵀû = m(wᵀu) > −1``."""
        wu = self.w @ self.u
        m = -1 + nn.functional.softplus(wu)
        return self.u + (m - wu) * self.w / self.w.square().sum()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f(z), log |det ∂f/∂z|)`` for ``z`` of shape ``(B, D)``."""
        u = self.u_hat()
        h = torch.tanh(z @ self.w + self.b)  # (B,)
        log_det = torch.log1p((1 - h.square()) * (self.w @ u))
        return z + h.unsqueeze(-1) * u, log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``f⁻¹(y)``, exact to rounding, differentiable in ``y`` and the parameters.

        With ``α = wᵀz`` the layer gives ``wᵀy = α + c tanh(α + b)``, ``c = wᵀû > −1``: a
        strictly increasing scalar equation per sample, solved by bisection on the
        bracket ``[wᵀy − |c|, wᵀy + |c|]``; then ``z = y − û tanh(α + b)``. Gradients come
        from one Newton step taken with autograd at the root (implicit function theorem:
        at ``g(α*) = 0``, ``α* − g/g'`` with ``g'`` detached has ``dα/dθ = −∂_θ g / g'``).
        """
        u = self.u_hat()
        c, s = self.w @ u, y @ self.w  # (), (B,)
        with torch.no_grad():
            lo, hi = s - c.abs(), s + c.abs()
            for _ in range(_BISECTIONS):
                mid = 0.5 * (lo + hi)
                above = mid + c * torch.tanh(mid + self.b) > s
                lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
            alpha = 0.5 * (lo + hi)
            slope = 1 + c * (1 - torch.tanh(alpha + self.b).square())
        alpha = alpha - (alpha + c * torch.tanh(alpha + self.b) - s) / slope
        return y - torch.tanh(alpha + self.b).unsqueeze(-1) * u


class PlanarFlow(nn.Module):
    """``K`` planar layers between a base distribution and the data.

    Planar maps have an exact log-determinant but no closed-form inverse, so the direction
    the layers run decides which density is cheap:

    - ``direction="generative"`` (Rezende & Mohamed): layers map base → data.
      :meth:`sample_and_log_prob` is exact and cheap: the setting for density matching by
      reverse KL (Chen et al. 2018, Fig. 4).
    - ``direction="normalizing"``: layers map data → base, so :meth:`log_prob` is exact
      and cheap: OUR choice for maximum-likelihood training on toy data (Fig. 5). Neither
      the paper nor torchdiffeq's code says how its NF baseline was fit by maximum
      likelihood; this direction needs no approximation in the training loss.

    The other direction is still available: each layer is inverted exactly by a scalar
    root-find (:meth:`PlanarLayer.inverse`), at about ``_BISECTIONS`` cheap passes per
    layer, and stays differentiable.

    Args:
        dim: Dimension ``D``.
        num_layers: Number of layers ``K``.
        direction: ``"generative"`` or ``"normalizing"``, as above.
        base: Base distribution; ``GaussianBase(dim)`` by default.
    """

    def __init__(
        self,
        dim: int = 2,
        num_layers: int = 8,
        *,
        direction: str = "generative",
        base: BaseDistribution | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("num_layers", num_layers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
        self.direction = direction
        self.layers = nn.ModuleList(PlanarLayer(dim) for _ in range(num_layers))
        self.base = default_base(self, base, dim)

    @property
    def dim(self) -> int:
        """Dimension of the data."""
        return int(self.base.dim)

    def _generative_layers(self) -> list[PlanarLayer]:
        layers: list[PlanarLayer] = list(self.layers)  # type: ignore[arg-type]
        return layers if self.direction == "generative" else layers[::-1]

    def _push(self, layer: PlanarLayer, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step base → data: the new state and the change in ``log q``."""
        if self.direction == "generative":
            y, log_det = layer(z)
            return y, -log_det
        x = layer.inverse(z)
        return x, layer(x)[1]

    def _pull(self, layer: PlanarLayer, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Undo one step base → data: the previous state and ``log q`` minus its own."""
        if self.direction == "generative":
            z = layer.inverse(y)
            return z, -layer(z)[1]
        return layer(y)

    def _steps(self, fraction: float) -> list[PlanarLayer]:
        layers = self._generative_layers()
        return layers[: round(fraction * len(layers))]

    def log_prob(self, x: torch.Tensor, *, fraction: float = 1.0) -> torch.Tensor:
        """Log-density of each row of ``x`` ``(B, D)``, shape ``(B,)``.

        ``fraction < 1`` gives the density after ``round(fraction · K)`` of the ``K``
        steps from the base (for plots).
        """
        check_state(x, self.dim, "PlanarFlow.log_prob")
        steps = self._steps(check_fractions([fraction])[0])
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in reversed(steps):
            x, delta = self._pull(layer, x)
            total = total + delta
        return self.base.log_prob(x) + total

    def sample_and_log_prob(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples ``(n, D)`` and their log-densities ``(n,)``, differentiably."""
        z = self._base_sample(n, generator)
        log_q = self.base.log_prob(z)
        for layer in self._generative_layers():
            z, delta = self._push(layer, z)
            log_q = log_q + delta
        return z, log_q

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples ``(n, D)``."""
        return self.sample_trajectory(n, [1.0], generator)[-1]

    def sample_trajectory(
        self, n: int, fractions: Sequence[float], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The same ``n`` base samples after ``round(f · K)`` steps, per ``f``: ``(F, n, D)``."""
        counts = [round(f * len(self.layers)) for f in check_fractions(fractions)]
        z = self._base_sample(n, generator)
        states = {0: z}
        for k, layer in enumerate(self._generative_layers(), start=1):
            if k > max(counts):
                break
            z = self._push(layer, z)[0]
            states[k] = z
        return torch.stack([states[k] for k in counts])

    def _base_sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return base_sample(self.base, n, generator, self._generative_layers()[0].w)
