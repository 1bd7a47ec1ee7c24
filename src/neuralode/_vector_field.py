"""The user's vector field on the flat state, with evaluation counting."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

State = torch.Tensor | tuple[torch.Tensor, ...]
UserField = Callable[[torch.Tensor, State], State]


@dataclass(frozen=True)
class Structure:
    """How a state (a tensor, or a tuple of tensors) maps to the solver's one tensor.

    Solvers work on one tensor so a fused update serves any state. A tensor state is used
    as it is (reshaping it on every evaluation measured 2–4 µs per call, a visible share
    of a small neural ODE step); a tuple is concatenated into a flat vector.
    ``flatten(x)`` accepts a state; ``unflatten(v)`` accepts a stack ``(..., *solver
    shape)`` of solver tensors and restores the state's structure.
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

    def flatten(self, y: State) -> torch.Tensor:
        """The solver's tensor for a state."""
        if isinstance(y, torch.Tensor):
            return y
        return torch.cat([part.reshape(-1) for part in y])

    def unflatten(self, v: torch.Tensor) -> State:
        """A state (or a stack of states, leading dims kept) from solver tensor(s)."""
        if not self.is_tuple:
            return v
        lead = v.shape[:-1]
        parts = torch.split(v, self.sizes, dim=-1)
        return tuple(p.reshape(*lead, *s) for p, s in zip(parts, self.shapes, strict=True))


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
