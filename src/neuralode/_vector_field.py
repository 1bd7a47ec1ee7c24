"""The user's vector field on the flat state, with evaluation counting."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ._checks import check_call, check_field_output, in_place_error

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

    In per-sample mode (``batched``) the leading dimension is a batch of independent
    problems whose size shrinks as samples finish: the solver's tensor is ``(B, N)``,
    ``shapes`` are the shapes of one sample, and the batch size is read off each tensor.
    """

    shapes: tuple[torch.Size, ...]
    is_tuple: bool
    batched: bool = False
    # Derived once here, not as cached properties: a cached_property takes a lock on its
    # first read (Python 3.11), which torch.compile cannot trace, and a compiled step may
    # be the first to read it.
    is_plain: bool = field(init=False, repr=False, compare=False)
    sizes: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Whether a state is the solver's tensor itself (neither tuple nor reshaped), and
        # the number of elements of each part.
        plain = not self.is_tuple and (not self.batched or len(self.shapes[0]) == 1)
        object.__setattr__(self, "is_plain", plain)
        object.__setattr__(self, "sizes", [s.numel() for s in self.shapes])

    @staticmethod
    def of(y: State, batched: bool = False) -> Structure:
        """Describe the structure of ``y`` (``batched``: its leading dim is the batch)."""
        parts = (y,) if isinstance(y, torch.Tensor) else y
        shapes = tuple(part.shape[1:] if batched else part.shape for part in parts)
        return Structure(shapes, not isinstance(y, torch.Tensor), batched)

    def flatten(self, y: State) -> torch.Tensor:
        """The solver's tensor for a state."""
        if self.batched:
            if isinstance(y, torch.Tensor):
                return y if y.ndim == 2 else y.reshape(y.shape[0], -1)
            return torch.cat([part.reshape(part.shape[0], -1) for part in y], dim=-1)
        if isinstance(y, torch.Tensor):
            return y
        return torch.cat([part.reshape(-1) for part in y])

    def unflatten(self, v: torch.Tensor) -> State:
        """A state (or a stack of states, leading dims kept) from solver tensor(s)."""
        if not self.is_tuple:
            if not self.batched or len(self.shapes[0]) == 1:
                return v
            return v.reshape((*v.shape[:-1], *self.shapes[0]))
        lead = v.shape[:-1]
        # (split_with_sizes: torch.split's Python wrapper checks the sizes symbolically,
        # ~10 µs a call, and this runs at every evaluation of a tuple state.)
        parts = v.split_with_sizes(self.sizes, dim=-1)
        # One shape tuple, not unpacked arguments: reshape() with no arguments (a 0-d part
        # of an unbatched state) is an error, reshape(()) is not.
        return tuple(p.reshape((*lead, *s)) for p, s in zip(parts, self.shapes, strict=True))


_NO_TIME = torch.full((), math.nan)


@dataclass
class Counts:
    """Evaluations of a vector field: shared by the field and every view of it.

    Attributes:
        nfe: Calls of ``f``.
        rows: Per-sample mode: rows (samples) evaluated, summed over calls (the work done,
            as finished samples drop out of the batch).
        njev: Jacobians ``∂f/∂y`` evaluated by implicit solvers (per-sample mode: one per
            batched evaluation, each a ``(B, n, n)`` batch); matrix-free, Jacobian-vector
            products (and in a stage's gradient, vector-Jacobian products).
        nlu: LU factorisations of implicit solvers' Newton matrices (likewise batched).
        nsolve: Linear solves with those factorisations (likewise batched).
    """

    nfe: int = 0
    rows: int = 0
    njev: int = 0
    nlu: int = 0
    nsolve: int = 0


class VectorField:
    """``f(t, y)`` on the flat state, with ``t`` a Python float; counts evaluations.

    The user's function receives ``t`` as a 0-d tensor of the output times' dtype and ``y``
    in its own structure. The first evaluation is checked in full at the boundary
    (:func:`neuralode.solve`); every evaluation checks the output's shape and dtype
    metadata and that ``f`` did not write into ``y`` (its version counter), which costs no
    host sync (about a microsecond). In per-sample mode ``t`` is a tensor with one time
    per row of ``y``, and ``args`` are per-sample tensors passed on as ``f(t, y, *args)``.

    A field is not changed once built: :meth:`restrict` (the rows of some samples) and
    :meth:`uncounted` (for ``torch.compile``) return views that share its :class:`Counts`.
    """

    def __init__(
        self,
        f: UserField,
        structure: Structure,
        t_dtype: torch.dtype,
        device: torch.device,
        args: tuple[torch.Tensor, ...] = (),
        *,
        counts: Counts | None = None,
        counting: bool = True,
    ) -> None:
        self.f = f
        self.structure = structure
        self.t_dtype = t_dtype
        self.device = device
        self.args = args
        self.counts = Counts() if counts is None else counts
        # Off in the view a torch.compile'd step calls: a counter changing under the trace
        # would be a guard that fails every step; the caller counts for the compiled step.
        self.counting = counting
        # The last float time converted, and its tensor (NaN: none yet, as NaN equals no
        # time; the tensor is a placeholder until then).
        self._t_float = math.nan
        self._t = _NO_TIME

    @property
    def nfe(self) -> int:
        """Calls of ``f`` so far (this field and its views)."""
        return self.counts.nfe

    @nfe.setter
    def nfe(self, value: int) -> None:
        self.counts.nfe = value

    @property
    def rows(self) -> int:
        """Per-sample mode: rows evaluated so far (this field and its views)."""
        return self.counts.rows

    @rows.setter
    def rows(self, value: int) -> None:
        self.counts.rows = value

    def _view(self, args: tuple[torch.Tensor, ...], counting: bool) -> VectorField:
        return VectorField(
            self.f, self.structure, self.t_dtype, self.device, args,
            counts=self.counts, counting=counting,
        )  # fmt: skip

    def restrict(self, index: torch.Tensor) -> VectorField:
        """The field on the samples at ``index``: their rows of ``args`` (same counts)."""
        if not self.args:
            return self
        return self._view(tuple(a.index_select(0, index) for a in self.args), self.counting)

    def uncounted(self) -> VectorField:
        """The same field, not counting its calls (the caller counts them)."""
        return self._view(self.args, False)

    def time(self, t: float) -> torch.Tensor:
        """``t`` as the 0-d tensor the user's function receives."""
        return torch.scalar_tensor(t, dtype=self.t_dtype, device=self.device)

    def __call__(self, t: float | torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Evaluate ``f`` at time ``t`` (a float, or one time per row) on the flat ``y``."""
        # (Written for speed: this wraps every evaluation, six per step of a small neural
        # ODE, and each attribute read or method call here is ~0.1 µs of that step.)
        structure = self.structure
        if self.counting:
            self.counts.nfe += 1
            # Views share their base's version counter, so this sees writes into any part
            # of a tuple state too. Inference tensors keep no counter (-1: not checked).
            # Skipped under torch.compile (counting off), where the counter is not
            # traceable; the uncompiled first evaluation at t0 has checked the same f.
            version = _version(y)
        else:
            version = -1
        # A tensor state is the solver's tensor itself (see Structure.unflatten).
        state: Any = y if structure.is_plain else structure.unflatten(y)
        if isinstance(t, torch.Tensor):
            if self.counting:
                self.counts.rows += y.shape[0]
            t = t if t.dtype == self.t_dtype else t.to(self.t_dtype)
            out = self._call(t, state, self.args)
        else:
            if t != self._t_float:
                # The same tensor for the same t twice in a row: most explicit tableaus
                # have two stages at the step's end (Dopri5's and Tsit5's last two).
                self._t_float = t
                self._t = torch.scalar_tensor(t, dtype=self.t_dtype, device=self.device)
            t = self._t
            out = self._call(t, state, ())
        if version >= 0 and y._version != version:
            raise in_place_error(t)
        # The tensor case inline (the common one, a microsecond matters per call); tuples
        # and every mismatch go through the full check, which names the problem.
        if not (
            isinstance(out, torch.Tensor) and out.dtype == state.dtype and out.shape == state.shape
        ):
            check_call(out, state, t)
        return out if structure.is_plain else structure.flatten(out)

    def _call(self, t: torch.Tensor, state: Any, args: tuple[torch.Tensor, ...]) -> Any:
        try:
            return self.f(t, state, *args)
        except RuntimeError as err:
            # When y needs grad, autograd itself refuses some writes into y (a view made by
            # a custom Function or by split): the same mistake, so the same message.
            if "in-place operation" in str(err) or "modified inplace" in str(err):
                raise in_place_error(t) from err
            raise

    def first(self, t: torch.Tensor, y: torch.Tensor, y0: State) -> torch.Tensor:
        """The boundary evaluation ``f(t0, y0)``: counted, and checked in full (device too).

        ``y`` is the private copy of the caller's ``y0``. Under ``torch.inference_mode``
        tensors keep no version counter, so this one call compares ``y`` with ``y0``
        instead (one host sync per solve, in that mode only): an ``f`` that always writes
        into ``y`` is caught there too; later calls are not checked in that mode.
        """
        version = _version(y)
        state = self.structure.unflatten(y)
        out = self._call(t, state, self.args)
        self.counts.nfe += 1
        if self.structure.batched:
            self.counts.rows += y.shape[0]
        if version >= 0 and y._version != version:
            raise in_place_error(t)
        if version < 0 and not torch.equal(y, self.structure.flatten(y0)):
            raise in_place_error(t)
        check_field_output(out, state, t)
        return self.structure.flatten(out)


def private_copy(structure: Structure, y0: State) -> torch.Tensor:
    """The solver's tensor for ``y0``, never sharing memory with the caller's tensors.

    A tuple is concatenated (a copy already); a tensor state would otherwise be used as
    it is, and a vector field that wrote into ``y`` would write into the caller's ``y0``
    before the in-place check could stop it. One copy per solve (differentiable).
    """
    flat = structure.flatten(y0)
    return flat.clone() if isinstance(y0, torch.Tensor) else flat


def _version(y: torch.Tensor) -> int:
    try:
        return y._version
    except RuntimeError:  # an inference tensor (torch.inference_mode) has no version counter
        return -1
