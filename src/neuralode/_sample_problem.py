"""The per-sample mode at the boundary: validate a batch of independent problems."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ._checks import check_state, check_tensor_input
from ._problem import PerSampleTuning, Problem
from ._solution import State
from ._vector_field import Structure, UserField, VectorField, private_copy
from .adjoints._time import attach_initial_time


def _batch_size(parts: tuple[torch.Tensor, ...], y0: State) -> int:
    for i, part in enumerate(parts):
        name = "y0" if isinstance(y0, torch.Tensor) else f"y0[{i}]"
        if part.ndim < 1:
            raise ValueError(
                f"batch_dims=1 needs the samples along the first dim of {name}, got a 0-d "
                "tensor; add one with y0.unsqueeze(0)"
            )
        if part.shape[0] < 1:
            raise ValueError(
                f"{name} has an empty batch (shape {tuple(part.shape)}) with batch_dims=1: "
                "there is no sample to solve; skip the call when the batch is empty"
            )
        if part.shape[0] != parts[0].shape[0]:
            raise ValueError(
                f"every part of y0 needs the same number of samples with batch_dims=1: "
                f"y0[0] has {parts[0].shape[0]}, {name} has {part.shape[0]}"
            )
    return parts[0].shape[0]


def check_sample_times(ts: object, batch: int) -> tuple[torch.Tensor, float]:
    """Validate per-sample output times; return them as ``(B, T)`` forward time, direction.

    ``ts`` is ``(T,)`` (shared by every sample) or ``(B, T)``; each row strictly monotone,
    all in the same direction.
    """
    if not isinstance(ts, torch.Tensor) or not ts.is_floating_point():
        raise TypeError(
            "ts must be a floating torch.Tensor of output times, shape (T,) or (B, T) with "
            f"batch_dims=1, got {ts.dtype if isinstance(ts, torch.Tensor) else type(ts).__name__}"
        )
    check_tensor_input(ts, "ts")
    if ts.ndim not in (1, 2) or ts.shape[-1] < 1 or (ts.ndim == 2 and ts.shape[0] != batch):
        raise ValueError(
            f"ts must have shape (T,) or (B, T) = ({batch}, T) with batch_dims=1 and a batch "
            f"of {batch} samples, got shape {tuple(ts.shape)}"
        )
    grid = ts.detach().to(torch.float64).expand(batch, -1)
    if not bool(torch.isfinite(grid).all()):
        raise ValueError(f"ts must be finite, got {ts}")
    direction = 1.0
    if grid.shape[1] > 1:
        steps = grid[:, 1:] - grid[:, :-1]
        direction = 1.0 if float(steps[0, 0]) > 0 else -1.0
        bad = (direction * steps <= 0).nonzero()
        if bad.numel():
            b, i = bad[0].tolist()
            where = f"ts[{b}, {i}]={grid[b, i].item()} and ts[{b}, {i + 1}]={grid[b, i + 1].item()}"
            raise ValueError(
                "each sample's ts must be strictly monotone, all in the same direction "
                f"(that of ts[0]), but {where}; sort each row and remove repeated times"
            )
    return (direction * grid).contiguous(), direction


def _check_args(args: object, batch: int) -> tuple[torch.Tensor, ...]:
    parts = (args,) if isinstance(args, torch.Tensor) else tuple(args)  # type: ignore[arg-type]
    for i, a in enumerate(parts):
        if not isinstance(a, torch.Tensor) or a.ndim < 1 or a.shape[0] != batch:
            shown = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(
                f"args[{i}] must be a tensor with one row per sample (leading dim {batch}), "
                f"got {shown}; per-sample constants such as each sample's mu go in args"
            )
    return parts


def make_sample_problem(
    f: UserField,
    y0: State,
    ts: torch.Tensor,
    params: Sequence[torch.Tensor] | None,
    args: object = (),
    *,
    tuning: PerSampleTuning | None = None,
) -> Problem:
    """:func:`neuralode._solve.make_problem` for ``batch_dims=1``."""
    if not callable(f):
        raise TypeError(f"f must be callable as f(t, y), got {type(f).__name__}")
    parts = check_state(y0, complex_ok=False)
    batch = _batch_size(parts, y0)
    taus, direction = check_sample_times(ts, batch)
    structure = Structure.of(y0, batched=True)
    field = VectorField(f, structure, ts.dtype, parts[0].device)
    field.args = _check_args(args, batch)
    field.select(None)
    y0_flat = attach_initial_time(field, ts, private_copy(structure, y0))
    f0 = field.first((direction * taus[:, 0]).to(ts.dtype), y0_flat, y0)
    return Problem(
        f=field,
        y0=y0_flat,
        f0=f0,
        ts=ts,
        taus=(),
        direction=direction,
        structure=structure,
        params=None if params is None else tuple(params),
        sample_taus=taus,
        tuning=PerSampleTuning() if tuning is None else tuning,
    )
