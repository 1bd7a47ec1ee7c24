"""Boundary checks on the state and on the vector field's first output."""

from __future__ import annotations

import torch

from ._solution import State
from ._vector_field import Structure


def check_state(y0: object) -> tuple[torch.Tensor, ...]:
    """The parts of ``y0`` (a tensor or tuple), checked: floating, finite, one dtype/device."""
    parts = (y0,) if isinstance(y0, torch.Tensor) else y0
    if not isinstance(parts, tuple) or not parts:
        raise TypeError(
            f"y0 must be a tensor or a non-empty tuple of tensors, got {type(y0).__name__}"
        )
    for i, part in enumerate(parts):
        name = "y0" if isinstance(y0, torch.Tensor) else f"y0[{i}]"
        if not isinstance(part, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(part).__name__}")
        if not part.is_floating_point():
            raise TypeError(
                f"{name} must be floating point, got dtype {part.dtype}; convert with .float()"
            )
        if not bool(torch.isfinite(part).all()):
            bad = torch.nonzero(~torch.isfinite(part))[:5].tolist()
            raise ValueError(f"{name} contains NaN or inf (at indices {bad}); fix the input")
        if part.dtype != parts[0].dtype or part.device != parts[0].device:
            raise TypeError(
                f"all parts of y0 must share a dtype and device: y0[0] is {parts[0].dtype} on "
                f"{parts[0].device}, {name} is {part.dtype} on {part.device}"
            )
    return parts


def check_field_output(out: object, y0: State) -> None:
    """Check that ``f(t0, y0)`` has ``y0``'s structure, shapes and dtypes."""
    expected = Structure.of(y0)
    if isinstance(y0, torch.Tensor):
        got = out if isinstance(out, torch.Tensor) else None
        if got is None:
            raise TypeError(f"f(t, y) must return a tensor like y0, got {type(out).__name__}")
        pairs = [("f(t, y)", got, y0)]
    else:
        if not isinstance(out, (tuple, list)) or len(out) != len(expected.shapes):
            raise TypeError(
                f"f(t, y) must return a tuple of {len(expected.shapes)} tensors like y0, "
                f"got {type(out).__name__}"
            )
        pairs = [(f"f(t, y)[{i}]", o, y) for i, (o, y) in enumerate(zip(out, y0, strict=False))]
    for name, got, want in pairs:
        if not isinstance(got, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(got).__name__}")
        if got.shape != want.shape:
            raise ValueError(
                f"{name} returned shape {tuple(got.shape)} but the state has shape "
                f"{tuple(want.shape)}; the vector field must return dy/dt with y's shape "
                "(no broadcasting)"
            )
        if got.dtype != want.dtype:
            raise TypeError(
                f"{name} returned dtype {got.dtype} but the state is {want.dtype}; cast the "
                "output (or y0) so both match"
            )
