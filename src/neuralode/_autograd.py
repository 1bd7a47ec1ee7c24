"""``torch.autograd.grad`` for the loops that take a vector-Jacobian product per evaluation.

The adjoint methods' augmented fields, the per-sample backsolve, the checkpoint replay,
the Hutchinson trace, the regularisers' products and the implicit solvers' Jacobians
differentiate ``f`` at every evaluation (or step). ``torch.autograd.grad`` normalises and
checks its arguments in Python first (cotangent shapes compared with symbolic sizes,
torch-function overrides, batched gradients) and then calls the autograd engine: on a
small MLP that wrapper was a fifth of the whole product (20 of 104 µs). These callers
pass tensors with cotangents of matching shapes, and the engine checks the cotangents'
shapes and dtypes again in C++, so :func:`grad` makes the call ``torch.autograd.grad``
ends with (``torch.autograd.graph._engine_run_backward``, which also passes the
context to the engine's device threads), and falls back to ``torch.autograd.grad``
itself for anything else (tensor subclasses, ``torch.compile`` tracing, a torch without
that function).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.overrides import has_torch_function

_engine_run_backward: Callable[..., tuple[torch.Tensor, ...]] | None
try:
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # another torch: the public function, checks included
    _engine_run_backward = None

Tensors = torch.Tensor | Sequence[torch.Tensor]


def grad(
    outputs: Tensors,
    inputs: Tensors,
    grad_outputs: Tensors,
    *,
    retain_graph: bool | None = None,
    create_graph: bool = False,
    allow_unused: bool = False,
) -> tuple[torch.Tensor, ...]:
    """``torch.autograd.grad(outputs, inputs, grad_outputs, ...)``, the same numbers.

    ``grad_outputs`` must be tensors shaped like ``outputs`` (no ``None``); an unused
    input gives ``None`` with ``allow_unused`` and raises without, as in autograd (whose
    annotation, ``tuple[Tensor, ...]``, this keeps).
    """
    outs = (outputs,) if isinstance(outputs, torch.Tensor) else tuple(outputs)
    ins = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    cots = (grad_outputs,) if isinstance(grad_outputs, torch.Tensor) else tuple(grad_outputs)
    if (
        _engine_run_backward is None
        or has_torch_function(outs + ins + cots)
        or torch.compiler.is_compiling()
    ):
        return torch.autograd.grad(
            outs, ins, cots, retain_graph=retain_graph, create_graph=create_graph,
            allow_unused=allow_unused,
        )  # fmt: skip
    if len(outs) != len(cots):
        raise ValueError(f"grad_outputs has {len(cots)} tensors for {len(outs)} outputs")
    retain = create_graph if retain_graph is None else retain_graph
    result = _engine_run_backward(
        outs, cots, retain, create_graph, ins, allow_unused, accumulate_grad=False
    )
    return tuple(result)
