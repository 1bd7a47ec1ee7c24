"""Irregularly sampled time series: per-series time grids in one padded, masked batch.

An :class:`IrregularSeries` holds ``S`` series, each observed at its own times. Series of
different lengths share one ``(S, N)`` layout; ``mask`` marks the real entries, and the
padded entries may hold anything (zeros, NaN): the models in :mod:`neuralode.nn` never
read them, so they change nothing in a loss or a prediction. Each series may also carry
*targets*: later times to predict from the observations (extrapolation), with the
noise-free values where they are known (synthetic data).

The same class is the data set and the minibatch: ``series[idx]`` selects series and drops
the padding columns no selected series needs.

Times follow one convention: each series' latent state lives at ``t = 0``, so times are
measured from the start of the series' window and must be ``≥ 0``
(:func:`from_arrays` shifts user times accordingly).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._checks import check_float_dtype, check_seed

__all__ = [
    "IrregularSeries",
    "check_times",
    "from_arrays",
    "next_valid_time",
    "previous_valid_time",
]


def previous_valid_time(times: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    """For each entry, the time of the nearest real entry before it in its row.

    Args:
        times: ``(B, N)`` times, increasing along each row over the real entries.
        mask: ``(B, N)`` bool, ``True`` at real entries.
        fill: The value where a row has no real entry before the position.

    Returns:
        ``(B, N)``; padded times never appear in it.
    """
    # The running maximum of the real times is the latest real time so far, since real
    # times increase; shifting it one place right excludes the entry itself.
    seen = torch.where(mask, times, torch.full_like(times, -torch.inf)).cummax(dim=1).values
    before = torch.cat([torch.full_like(seen[:, :1], -torch.inf), seen[:, :-1]], dim=1)
    return torch.where(torch.isinf(before), torch.full_like(before, fill), before)


def next_valid_time(times: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    """For each entry, the time of the nearest real entry after it in its row.

    The mirror image of :func:`previous_valid_time` (same arguments); ``fill`` where a row
    has no real entry after the position.
    """
    return -previous_valid_time(-times.flip(1), mask.flip(1), -fill).flip(1)


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    return f"a {type(x).__name__}"


def check_times(name: str, times: Any, mask: Any) -> None:
    """Validate a ``(B, N)`` time grid and its mask; errors name ``name``.

    Real entries must be finite, ``>= 0`` and strictly increasing along each row.
    """
    if not isinstance(times, torch.Tensor) or not times.is_floating_point():
        raise TypeError(f"{name}times must be a floating torch.Tensor, got {_describe(times)}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"{name}mask must be a bool torch.Tensor, got {_describe(mask)}")
    if times.ndim != 2 or mask.shape != times.shape:
        raise ValueError(
            f"{name}times and {name}mask must have one shape (series, points), got "
            f"{tuple(times.shape)} and {tuple(mask.shape)}"
        )
    real = times[mask]
    if not bool(torch.isfinite(real).all()):
        raise ValueError(
            f"{name}times must be finite where {name}mask is True; mark missing points "
            "False in the mask instead of storing NaN"
        )
    if real.numel() and float(real.min()) < 0:
        raise ValueError(
            f"{name}times must be >= 0 (the latent state lives at t = 0), got a minimum of "
            f"{float(real.min())}; measure times from the start of each series"
        )
    prev = previous_valid_time(times, mask, -1.0)
    bad = mask & (times <= prev)
    if bool(bad.any()):
        row, col = (int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(
            f"{name}times must be strictly increasing over the real entries of each series, "
            f"but series {row} has time {float(times[row, col])} at position {col} after "
            f"{float(prev[row, col])}; sort each series by time and merge repeated times"
        )


def _check_part(name: str, times: Any, values: Any, mask: Any, rows: int | None) -> tuple[int, int]:
    """Validate one (times, values, mask) triple; return ``(rows, channels)``."""
    if not isinstance(values, torch.Tensor) or not values.is_floating_point():
        raise TypeError(f"{name}values must be a floating torch.Tensor, got {_describe(values)}")
    if values.ndim != 3:
        raise ValueError(
            f"{name}values must have shape (series, points, channels), got "
            f"{tuple(values.shape)}; add a channel axis with values[..., None] for 1-D data"
        )
    check_times(name, times, mask)
    if times.shape != values.shape[:2]:
        raise ValueError(
            f"{name}times and {name}mask must have shape {tuple(values.shape[:2])} (the first "
            f"two axes of {name}values), got {tuple(times.shape)}"
        )
    if rows is not None and values.shape[0] != rows:
        raise ValueError(
            f"{name}values has {values.shape[0]} series but the observations have {rows}"
        )
    if not bool(torch.isfinite(values[mask]).all()):
        raise ValueError(
            f"{name}values must be finite where {name}mask is True; mark missing points "
            "False in the mask instead of storing NaN"
        )
    return values.shape[0], values.shape[2]


@dataclass(frozen=True)
class IrregularSeries:
    """A padded batch of irregularly sampled series, with optional prediction targets.

    Attributes:
        times: ``(S, N)`` observation times, ``≥ 0`` and strictly increasing per series
            over its real entries.
        values: ``(S, N, D)`` observed values.
        mask: ``(S, N)`` bool, ``True`` at real observations. Every series has at least one.
        target_times: ``(S, M)`` times to predict, or ``None``.
        target_values: ``(S, M, D)`` the observed (noisy) values at ``target_times``.
        target_mask: ``(S, M)`` bool, ``True`` at real targets.
        target_clean: ``(S, M, D)`` noise-free values at ``target_times`` where known
            (synthetic data), else ``None``.
    """

    times: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor
    target_times: torch.Tensor | None = None
    target_values: torch.Tensor | None = None
    target_mask: torch.Tensor | None = None
    target_clean: torch.Tensor | None = None

    def __post_init__(self) -> None:
        rows, channels = _check_part("", self.times, self.values, self.mask, None)
        empty = ~self.mask.any(dim=1)
        if bool(empty.any()):
            raise ValueError(
                f"every series needs at least one observation; series "
                f"{torch.nonzero(empty).flatten()[:5].tolist()} have none in mask"
            )
        times, values, mask = self.target_times, self.target_values, self.target_mask
        if times is None and values is None and mask is None:
            if self.target_clean is not None:
                raise ValueError("target_clean was given without target_times/values/mask")
            return
        if times is None or values is None or mask is None:
            raise ValueError("target_times, target_values and target_mask go together")
        _check_part("target_", times, values, mask, rows)
        if values.shape[2] != channels:
            raise ValueError(
                f"target_values has {values.shape[2]} channels, the observations {channels}"
            )
        clean = self.target_clean
        if clean is not None and (
            not isinstance(clean, torch.Tensor) or clean.shape != values.shape
        ):
            raise ValueError(
                f"target_clean must be a tensor of target_values' shape {tuple(values.shape)}, "
                f"got {_describe(clean)}"
            )

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def channels(self) -> int:
        """Number of observed channels ``D``."""
        return self.values.shape[2]

    @property
    def has_targets(self) -> bool:
        """Whether the series carry prediction targets."""
        return self.target_times is not None

    def __getitem__(self, index: torch.Tensor | slice | Sequence[int]) -> IrregularSeries:
        """The selected series, without the padding columns none of them needs."""
        rows = torch.arange(len(self))[index]
        if rows.ndim == 0:
            rows = rows[None]
        mask = self.mask[rows]
        keep = _used_columns(mask)
        fields: dict[str, torch.Tensor | None] = {
            "times": self.times[rows, :keep],
            "values": self.values[rows, :keep],
            "mask": mask[:, :keep],
        }
        if self.target_mask is not None:
            target_mask = self.target_mask[rows]
            keep_t = _used_columns(target_mask)
            fields["target_mask"] = target_mask[:, :keep_t]
            for name in ("target_times", "target_values", "target_clean"):
                x = getattr(self, name)
                fields[name] = None if x is None else x[rows, :keep_t]
        return IrregularSeries(**fields)  # type: ignore[arg-type]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> IrregularSeries:
        """The same series on ``device`` with floating tensors in ``dtype`` (masks stay bool)."""
        if dtype is not None:
            check_float_dtype(dtype)
        moved = {}
        for f in dataclasses.fields(self):
            x = getattr(self, f.name)
            if x is not None:
                x = x.to(device=device, dtype=dtype if x.is_floating_point() else None)
            moved[f.name] = x
        return IrregularSeries(**moved)

    def split(self, test_size: int, *, seed: int) -> tuple[IrregularSeries, IrregularSeries]:
        """A random ``(rest, test)`` partition with ``test_size`` series in ``test``.

        Seeded by a private ``torch.Generator`` (the global RNG is not touched).
        """
        if isinstance(test_size, bool) or not isinstance(test_size, int):
            raise TypeError(f"test_size must be an int, got {type(test_size).__name__}")
        if not 0 < test_size < len(self):
            raise ValueError(f"test_size must lie in [1, {len(self) - 1}], got {test_size}")
        generator = torch.Generator().manual_seed(check_seed(seed))
        perm = torch.randperm(len(self), generator=generator)
        return self[perm[test_size:].sort().values], self[perm[:test_size].sort().values]

    def batches(
        self, batch_size: int, *, generator: torch.Generator | None = None
    ) -> Iterator[IrregularSeries]:
        """Minibatches covering every series once: shuffled by ``generator``, else in order.

        The last batch is smaller when ``batch_size`` does not divide the number of series.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        n = len(self)
        order = torch.arange(n) if generator is None else torch.randperm(n, generator=generator)
        for chunk in order.split(batch_size):
            yield self[chunk]


def _used_columns(mask: torch.Tensor) -> int:
    """One past the last column that holds a real entry of any row."""
    used = torch.nonzero(mask.any(dim=0))
    return int(used[-1]) + 1 if used.numel() else 0


def _as_tensor(name: str, x: Any, dtype: torch.dtype | None) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}") from error
    if dtype is None:
        return tensor
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    return tensor.to(dtype)


def _as_mask(name: str, mask: Any, shape: torch.Size) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    tensor = _as_tensor(name, mask, None)
    if tensor.dtype != torch.bool:
        raise TypeError(
            f"{name} must be boolean (True = observed), got dtype {tensor.dtype}; "
            "convert with mask != 0"
        )
    return tensor


def _as_times(name: str, times: Any, rows: int, dtype: torch.dtype) -> torch.Tensor:
    tensor = _as_tensor(name, times, dtype)
    # One time grid shared by every series is common (regular data with gaps): broadcast it.
    return tensor.expand(rows, -1) if tensor.ndim == 1 else tensor


def from_arrays(
    times: Any,
    values: Any,
    mask: Any = None,
    *,
    target_times: Any = None,
    target_values: Any = None,
    target_mask: Any = None,
    origin: float | str = "first",
    dtype: torch.dtype = torch.float32,
) -> IrregularSeries:
    """Build an :class:`IrregularSeries` from your own arrays (NumPy arrays or tensors).

    Args:
        times: ``(S, N)`` observation times per series, or ``(N,)`` shared by all.
        values: ``(S, N, D)`` observed values.
        mask: ``(S, N)`` bool, ``True`` where observed; ``None``: everything is observed.
            Entries marked ``False`` may hold anything, NaN included.
        target_times: Optional ``(S, M)`` (or ``(M,)``) times to predict later.
        target_values: ``(S, M, D)`` values at ``target_times`` (needed with them).
        target_mask: ``(S, M)`` bool; ``None``: every target is real.
        origin: Where each series' time starts (its latent state lives at ``t = 0``):
            ``"first"`` subtracts each series' first observed time from all of its times
            (targets included); a number is subtracted from every time.
        dtype: Floating dtype of the result.

    Returns:
        The validated series.

    Raises:
        TypeError: An argument is not an array of the right kind (the message names it).
        ValueError: Shapes disagree, real entries are not finite or not strictly
            increasing in time, a series has no observation, or a time is before its
            origin.
    """
    check_float_dtype(dtype)
    values_t = _as_tensor("values", values, dtype)
    if values_t.ndim != 3:
        raise ValueError(
            f"values must have shape (series, points, channels), got {tuple(values_t.shape)}; "
            "add a channel axis with values[..., None] for 1-D data"
        )
    if values_t.shape[1] == 0:
        raise ValueError(
            f"values must have at least one point per series, got shape {tuple(values_t.shape)}"
        )
    rows = values_t.shape[0]
    times_t = _as_times("times", times, rows, dtype)
    mask_t = _as_mask("mask", mask, values_t.shape[:2])
    targets: dict[str, torch.Tensor | None] = {}
    if target_times is not None or target_values is not None:
        if target_times is None or target_values is None:
            raise ValueError("target_times and target_values must be given together")
        tv = _as_tensor("target_values", target_values, dtype)
        targets = {
            "target_times": _as_times("target_times", target_times, rows, dtype),
            "target_values": tv,
            "target_mask": _as_mask("target_mask", target_mask, tv.shape[:2]),
        }
    shift = _origin(origin, times_t, mask_t)
    if "target_times" in targets:
        targets["target_times"] = targets["target_times"] - shift  # type: ignore[operator]
    return IrregularSeries(times_t - shift, values_t, mask_t, **targets)


def _origin(origin: float | str, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if origin == "first":
        if times.shape != mask.shape:
            raise ValueError(
                f"times must have shape {tuple(mask.shape)} like mask, got {tuple(times.shape)}"
            )
        # The first real time of each row: the smallest, as real times increase.
        first = torch.where(mask, times, torch.full_like(times, torch.inf)).amin(dim=1)
        return torch.where(torch.isfinite(first), first, torch.zeros_like(first))[:, None]
    if isinstance(origin, bool) or not isinstance(origin, (int, float)):
        raise TypeError(f"origin must be 'first' or a number, got {origin!r}")
    return torch.tensor(float(origin), dtype=times.dtype)
