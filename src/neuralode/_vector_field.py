"""The user's vector field on the flat state, with evaluation counting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

State = torch.Tensor | tuple[torch.Tensor, ...]
UserField = Callable[[torch.Tensor, State], State]


@dataclass(frozen=True)
class Structure:
    """How a state (a tensor, or a tuple of tensors) maps to one flat vector.

    Solvers work on a flat 1-D vector so one fused update serves any state; this records
    the shapes to undo it. ``flatten(x)`` accepts a state; ``unflatten(v)`` accepts a
    tensor of shape ``(..., N)`` and restores the trailing dimension.
    """

    shapes: tuple[torch.Size, ...]
    is_tuple: bool

    @staticmethod
    def of(y: State) -> Structure:
        """Describe the structure of ``y``."""
        if isinstance(y, torch.Tensor):
            return Structure((y.shape,), False)
        return Structure(tuple(part.shape for part in y), True)

    @property
    def sizes(self) -> list[int]:
        """Number of elements of each part."""
        return [s.numel() for s in self.shapes]

    @property
    def numel(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)

    def flatten(self, y: State) -> torch.Tensor:
        """The flat vector of a state."""
        if isinstance(y, torch.Tensor):
            return y.reshape(-1)
        return torch.cat([part.reshape(-1) for part in y])

    def unflatten(self, v: torch.Tensor) -> State:
        """A state (or a stack of states, leading dims kept) from flat vector(s)."""
        lead = v.shape[:-1]
        if not self.is_tuple:
            return v.reshape(*lead, *self.shapes[0])
        parts = torch.split(v, self.sizes, dim=-1)
        return tuple(p.reshape(*lead, *s) for p, s in zip(parts, self.shapes, strict=False))


class VectorField:
    """``f(t, y)`` on the flat state, with ``t`` a Python float; counts evaluations.

    The user's function receives ``t`` as a 0-d tensor of the output times' dtype and ``y``
    in its own structure. Shape and dtype are checked once, at the boundary
    (:func:`neuralode.solve`), not on every call.
    """

    def __init__(
        self,
        f: UserField,
        structure: Structure,
        t_dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.f = f
        self.structure = structure
        self.t_dtype = t_dtype
        self.device = device
        self.nfe = 0

    def time(self, t: float) -> torch.Tensor:
        """``t`` as the 0-d tensor the user's function receives."""
        return torch.scalar_tensor(t, dtype=self.t_dtype, device=self.device)

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        """Evaluate ``f`` at float time ``t`` on the flat state ``y``."""
        self.nfe += 1
        out = self.f(self.time(t), self.structure.unflatten(y))
        return self.structure.flatten(out)
