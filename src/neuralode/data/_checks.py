"""Argument checks shared by the data entry points: every error names the argument."""

from __future__ import annotations

import math
import numbers

import torch

# torch.Generator.manual_seed takes any value of int64 or uint64.
_SEED_RANGE = (-(2**63), 2**64 - 1)


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``; ``TypeError``/``ValueError`` naming ``name``."""
    # numbers.Integral admits NumPy's integers too, as torch does.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    number = int(value)
    if number < low or (high is not None and number > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {number}")
    return number


def check_seed(value: object) -> int:
    """A seed ``torch.Generator.manual_seed`` accepts."""
    return check_int("seed", value, *_SEED_RANGE)


def check_real(
    name: str, value: object, low: float, *, strict: bool = False, high: float | None = None
) -> float:
    """``value`` as a finite float ``>= low`` (``> low`` if ``strict``) and ``< high``."""
    bound = f"> {low}" if strict else f">= {low}"
    if high is not None:
        bound = f"in [{low}, {high})"
    message = f"{name} must be a finite number {bound}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(message)
    x = float(value)
    above = x > low if strict else x >= low
    if not (math.isfinite(x) and above and (high is None or x < high)):
        raise ValueError(message)
    return x


def check_generator(generator: object) -> None:
    """``None`` or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )


def check_float_dtype(dtype: object) -> torch.dtype:
    """A floating ``torch.dtype``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype such as torch.float32, got {dtype!r}")
    return dtype


def check_tensor(name: str, value: object) -> torch.Tensor:
    """``value``, which must be a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value
