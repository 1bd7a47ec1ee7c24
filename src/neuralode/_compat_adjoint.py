"""odeint_adjoint's backward solve as torchdiffeq sets it up, for neuralode.compat.

neuralode's backward state is ``[y, a, g]`` (state, adjoint, parameter gradients) on one
flat tensor. torchdiffeq's is the tuple ``(t, y, adj_y, *adj_params)``, where ``t``
accumulates the time gradient and ``y``/``adj_y`` are flat for a tuple state; its adjoint
norm and the ``_adjoint`` callbacks receive that tuple. :class:`Augmented` translates, so
the defaults, ``'seminorm'`` and a user's callable norm all behave as torchdiffeq's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from ._compat_config import Config, configure, mixed_norm, tolerance
from ._compat_hooks import CompatController
from ._norms import rms_norm
from ._solution import State
from ._vector_field import Structure
from .adjoints import BacksolveAdjoint
from .controllers import PIDController

ADJOINT_NAMES = {
    "method": "adjoint_method",
    "options": "adjoint_options",
    "rtol": "adjoint_rtol",
    "atol": "adjoint_atol",
}
Norm = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class AdjointSpec:
    """The backward solve's arguments, as odeint_adjoint received them."""

    rtol: Any
    atol: Any
    method: str | None
    options: dict[str, Any]
    params: tuple[torch.Tensor, ...]


def backward_adjoint(
    func: Callable[..., State], y0: State, t: torch.Tensor, forward: Config, spec: AdjointSpec
) -> BacksolveAdjoint:
    """The BacksolveAdjoint for ``spec``: torchdiffeq's norm, tolerances and callbacks."""
    options = dict(spec.options)
    norm = options.pop("norm", None)
    if norm is not None and norm != "seminorm" and not callable(norm):
        raise ValueError(
            "adjoint_options['norm'] must be 'seminorm' or a callable taking torchdiffeq's "
            f"tuple (t, *y, *adj_y, *adj_params), got {norm!r}"
        )
    back = configure(func, y0, t.flip(0), spec.rtol, spec.atol, spec.method, options,
                     names=ADJOINT_NAMES, callback_suffix="_adjoint")  # fmt: skip
    if back.solver is None:
        raise ValueError(
            "adjoint_method='scipy_solver' is available only with method='scipy_solver'; "
            "choose one of neuralode's methods for the backward solve"
        )
    controller = back.controller
    assert isinstance(controller, CompatController)  # configure() always wraps
    assert isinstance(forward.controller, CompatController)
    state = forward.controller.inner
    layout = Augmented(
        y0, spec.params, state.norm if isinstance(state, PIDController) else rms_norm
    )
    layout.options["norm"] = layout.torchdiffeq_norm(norm)
    inner = controller.inner
    if isinstance(inner, PIDController):
        inner = dataclasses.replace(
            inner,
            norm=layout.norm,
            rtol=layout.tolerance(tolerance(spec.rtol, y0, "adjoint_rtol")),
            atol=layout.tolerance(tolerance(spec.atol, y0, "adjoint_atol")),
        )
    callbacks = controller.callbacks
    if callbacks is not None:
        callbacks = dataclasses.replace(callbacks, unflatten=layout.internal)
    # A CompatController, not a PIDController: BacksolveAdjoint takes it as it is.
    controller = dataclasses.replace(controller, inner=inner, callbacks=callbacks)
    return _WithOptions(solver=back.solver, controller=controller, options=layout.options)


@dataclasses.dataclass(frozen=True)
class _WithOptions(BacksolveAdjoint):
    # The dict torchdiffeq exposes as ``grad_fn.adjoint_options``; its "norm" is read at
    # every backward step, so replacing it there takes effect, as in torchdiffeq.
    options: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)


def expose_adjoint_options(ys: State, adjoint: BacksolveAdjoint) -> None:
    """Put ``adjoint_options`` on the solve's autograd node, where torchdiffeq has it.

    torchdiffeq's own tests (and code that imitates them) read and replace the adjoint
    norm through ``ys.grad_fn.adjoint_options``. The solve's node is the first node below
    the outputs implemented in Python (a custom autograd Function); the reshapes and
    splits above it are C++ nodes without attributes.
    """
    if not isinstance(adjoint, _WithOptions):
        return
    outputs = (ys,) if isinstance(ys, torch.Tensor) else ys
    seen: set[int] = set()
    frontier = [o.grad_fn for o in outputs if o.grad_fn is not None]
    for _ in range(4):
        below: list[Any] = []
        for node in frontier:
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, torch.autograd.function.BackwardCFunction):
                node.adjoint_options = adjoint.options
                return
            below.extend(next_node for next_node, _ in node.next_functions)
        frontier = below


class Augmented:
    """torchdiffeq's view of the backward state ``[y, a, g]``.

    ``t``, torchdiffeq's time-gradient accumulator, is not part of neuralode's backward
    state (time gradients are attached outside the solve): norms and callbacks see it as a
    zero, where it never decides anything.
    """

    def __init__(self, y0: State, params: tuple[torch.Tensor, ...], state_norm: Norm) -> None:
        self.structure = Structure.of(y0)
        self.n = sum(self.structure.sizes)
        self.param_shapes = [p.shape for p in params]
        self.param_sizes = [p.numel() for p in params]
        self.state_norm = state_norm
        self.options: dict[str, Any] = {}

    def internal(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Torchdiffeq's ``(t, y, adj_y, *adj_params)`` (``y`` flat for a tuple state)."""
        x = x.reshape(-1)
        n = self.n
        shape = (n,) if self.structure.is_tuple else self.structure.shapes[0]
        grads = torch.split(x[2 * n :], self.param_sizes)
        params = (g.reshape(s) for g, s in zip(grads, self.param_shapes, strict=True))
        return (x.new_zeros(()), x[:n].reshape(shape), x[n : 2 * n].reshape(shape), *params)

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """The norm the backward controller uses: ``options['norm']`` on the tuple."""
        return torch.as_tensor(self.options["norm"](self.internal(x))).to(x)

    def torchdiffeq_norm(self, norm: object) -> Callable[[tuple[torch.Tensor, ...]], Any]:
        """Torchdiffeq's adjoint norm on its tuple: default, ``'seminorm'`` or the user's."""
        structure, state_norm = self.structure, self.state_norm
        if callable(norm):
            if not structure.is_tuple:
                return norm
            user = norm

            def unpacked(state: tuple[torch.Tensor, ...]) -> Any:
                t, y, adj_y, *params = state
                return user((t, *structure.unflatten(y), *structure.unflatten(adj_y), *params))

            return unpacked
        params_norm = mixed_norm(self.param_sizes) if sum(self.param_sizes) else None
        seminorm = norm == "seminorm"

        def default(state: tuple[torch.Tensor, ...]) -> torch.Tensor:
            t, y, adj_y, *params = state
            values = [t.abs(), state_norm(y), state_norm(adj_y)]
            if params_norm is not None and not seminorm:
                values.append(params_norm(torch.cat([p.reshape(-1) for p in params])))
            return torch.stack([torch.as_tensor(v).to(y) for v in values]).amax()

        return default

    def tolerance(self, value: Any) -> Any:
        """A forward tolerance laid out on ``[y, a, g]`` (``g`` gets the smallest value)."""
        if isinstance(value, float):
            return value
        if isinstance(value, tuple):
            parts = [torch.as_tensor(v, dtype=torch.float64).expand(s)
                     for v, s in zip(value, self.structure.shapes, strict=True)]  # fmt: skip
            flat = torch.cat([p.reshape(-1) for p in parts])
        else:
            flat = torch.as_tensor(value, dtype=torch.float64)
            flat = flat.expand(self.structure.shapes[0]) if flat.ndim else flat
        return (flat, flat, float(flat.min()))
