"""How training stops on a failure: the errors, and the checks that raise them with where.

A solver failure or a non-finite loss, weight or metric is :class:`TrainingDiverged`; an
allocation failure :class:`OutOfMemory`. Every message says where training was and that
the last checkpoint is untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from ..._solution import SolverError
from .config import RunOptions, flag
from .distributed import World, unwrap


class TrainingDiverged(RuntimeError):
    """The loss, a weight or a validation metric became NaN or infinite (or the solver failed).

    The run stopped without saving the bad epoch: the last checkpoint stays as it was.
    """


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training; the message says where. ``--resume`` continues exactly.

    A ``KeyboardInterrupt``, so that code which catches ``Exception`` lets it through.
    """


class OutOfMemory(MemoryError):
    """The data, the model or a batch did not fit in memory; the message names the sizes."""


@contextlib.contextmanager
def failures(
    where: str, epoch: int, size_flags: Sequence[str], options: RunOptions
) -> Iterator[None]:
    """Turn solver and allocation failures into errors that say where training was.

    A solver failure becomes :class:`TrainingDiverged`; an allocation failure
    :class:`OutOfMemory`, naming the ``size_flags`` (config fields) set in ``options``.
    """
    try:
        yield
    except SolverError as exc:
        raise TrainingDiverged(
            f"the ODE solver failed at {where}: {exc}. This epoch was not saved "
            f"(last checkpoint: {last_checkpoint(epoch)}). A lower --lr, a looser --tol or "
            "a larger --max-steps may help"
        ) from exc
    except (RuntimeError, MemoryError) as exc:
        if not out_of_memory(exc):
            raise
        sizes = ", ".join(
            f"{flag(name)} {getattr(options, name)}"
            for name in size_flags
            if getattr(options, name, None) is not None
        )
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OutOfMemory(
            f"not enough memory at {where} ({detail}); lower the sizes"
            + (f" ({sizes})" if sizes else "")
            + " or free memory"
        ) from exc


# What torch says when an allocation fails: CUDA raises torch.OutOfMemoryError; the CPU
# allocator a plain RuntimeError; sizes beyond int64 fail before allocating.
_ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "size calculation overflowed")


def out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _ALLOCATION_FAILURES)


def last_checkpoint(epoch: int) -> str:
    return f"the end of epoch {epoch}" if epoch else "none (first epoch)"


def check_finite(values: Mapping[str, float], world: World, epoch: int, where: str) -> None:
    """Stop with :class:`TrainingDiverged` if any of ``values`` is NaN or infinite.

    ``where`` completes "became nan ...", e.g. ``"at epoch 2, step 1 of 5"``.
    """
    bad = [(name, value) for name, value in values.items() if not math.isfinite(value)]
    stop = bool(bad)
    # Every rank must agree to stop, or the others would wait forever in DDP's all-reduce.
    if world.size > 1:
        stop = world.sum({"bad": float(stop)})["bad"] > 0.0
    if stop:
        what = f"{bad[0][0]} became {bad[0][1]}" if bad else "another process diverged"
        raise TrainingDiverged(
            f"{what} {where}; this epoch was not saved (last checkpoint: "
            f"{last_checkpoint(epoch)}). Try a lower --lr or a tighter --tol, and start a "
            "new run"
        )


def bad_weight(model: nn.Module) -> dict[str, float]:
    """``{}`` if every weight is finite (one host sync), else the first bad one's name and value."""
    params = [p.detach() for p in model.parameters()]
    if not params or bool(torch.stack([p.isfinite().all() for p in params]).all()):
        return {}
    for name, param in unwrap(model).named_parameters():
        bad = param.detach()[~param.detach().isfinite()]
        if bad.numel():
            return {f"the weight {name}": float(bad[0])}
    return {}  # pragma: no cover - the stack above found one
