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


def maximum(a: Any, b: Any) -> Any:
    """Python's ``max(a, b)`` (``a`` unless ``b > a``, so NaN handling matches too)."""
    return where(b > a, b, a)


def minimum(a: Any, b: Any) -> Any:
    """Python's ``min(a, b)`` (``a`` unless ``b < a``)."""
    return where(b < a, b, a)


def clip(x: Any, lo: float, hi: float) -> Any:
    """``min(hi, max(lo, x))`` as Python evaluates it, elementwise for a tensor."""
    return minimum(hi, maximum(lo, x))
