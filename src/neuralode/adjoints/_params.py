"""Which tensors a gradient method differentiates the vector field with respect to."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._vector_field import UserField


def field_parameters(
    f: UserField, params: Sequence[torch.Tensor] | None, method: str
) -> tuple[torch.Tensor, ...]:
    """The parameters of ``f`` that need grad: the given ones, or an ``nn.Module``'s.

    Methods that re-run ``f`` in their own backward pass (backsolve, checkpoint) cannot see
    tensors a plain function closes over, so for those they must be listed explicitly; a
    silent zero gradient would be the alternative.
    """
    if params is not None:
        out = tuple(params)
        for i, p in enumerate(out):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"params[{i}] must be a tensor, got {type(p).__name__}")
        # Constants in the list have no gradient to compute (autograd.grad would refuse them).
        return tuple(p for p in out if p.requires_grad)
    if isinstance(f, torch.nn.Module):
        return tuple(p for p in f.parameters() if p.requires_grad)
    raise ValueError(
        f"{method} re-evaluates f in the backward pass and cannot find the tensors a plain "
        "function closes over: make f an nn.Module, or pass params=[...] (the tensors to "
        "differentiate; params=() if there are none)"
    )
