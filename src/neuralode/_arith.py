"""Arithmetic that reads the same on Python floats and on per-row tensors.

The joint mode keeps its clock, step sizes and error ratios as Python floats (one host
sync per step); the per-sample mode keeps one of each per sample as a ``(B,)`` tensor.
Writing the controller formulas once with these helpers keeps the two modes on the same
arithmetic instead of maintaining a tensor copy of every formula.
"""

from __future__ import annotations

from typing import Any

import torch


def where(cond: Any, a: Any, b: Any) -> Any:
    """``a if cond else b``, elementwise when ``cond`` is a tensor."""
    if isinstance(cond, torch.Tensor):
        return torch.where(cond, a, b)
    return a if cond else b


def logical_not(x: Any) -> Any:
    """``not x``, elementwise for a bool tensor."""
    return ~x if isinstance(x, torch.Tensor) else not x


def maximum(a: Any, b: Any) -> Any:
    """Python's ``max(a, b)`` (``a`` unless ``b > a``, so NaN handling matches too).

    A tensor against a float is one ``torch.clamp`` (NaN in the tensor stays NaN there,
    where Python would pick the float: callers pass finite tensors).
    """
    if isinstance(a, torch.Tensor) and isinstance(b, float):
        return torch.clamp(a, min=b)
    if isinstance(b, torch.Tensor) and isinstance(a, float):
        return torch.clamp(b, min=a)
    return where(b > a, b, a)


def minimum(a: Any, b: Any) -> Any:
    """Python's ``min(a, b)`` (``a`` unless ``b < a``); a tensor against a float clamps."""
    if isinstance(a, torch.Tensor) and isinstance(b, float):
        return torch.clamp(a, max=b)
    if isinstance(b, torch.Tensor) and isinstance(a, float):
        return torch.clamp(b, max=a)
    return where(b < a, b, a)


def clip(x: Any, lo: float, hi: float) -> Any:
    """``min(hi, max(lo, x))`` as Python evaluates it; one ``torch.clamp`` for a tensor."""
    if isinstance(x, torch.Tensor):
        return torch.clamp(x, lo, hi)
    return min(hi, max(lo, x))
