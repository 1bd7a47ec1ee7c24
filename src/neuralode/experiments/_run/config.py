"""Settings shared by every training command, and the checks that name the offending flag."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

# Counts and sizes beyond a C int are never meant (and overflow inside torch as raw errors).
MAX_COUNT = 2**31 - 1
# torch.manual_seed's range is [-2**63, 2**64 - 1]; seeds also seed +1 streams (data_seed + 1).
MAX_SEED = 2**63 - 1
MAX_THREADS = 1024
# Adam's learning rate: the paper's runs use 1e-3 to 1e-1. Far above, a step throws the
# weights out of float32's range (inf or NaN, or an overflow error inside Adam from 3.4e38).
MAX_LR = 10.0


def flag(name: str) -> str:
    """The command-line spelling of a config field: ``train_size`` → ``--train-size``."""
    return "--" + name.replace("_", "-")


def check_positive(
    config: object, *names: str, allow_zero: bool = False, maximum: float | None = None
) -> None:
    """Raise ``ValueError`` naming the flag unless each field is a positive, finite number.

    ``None`` passes (an optional flag left unset). NaN and ±inf are refused (``nan < 0`` is
    false, so a plain sign test would let NaN through to fail later under another name);
    so is anything above ``maximum`` and, for integers, above :data:`MAX_COUNT`.
    """
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        low = "≥ 0" if allow_zero else "> 0"
        high = MAX_COUNT if maximum is None and isinstance(value, int) else maximum
        if not math.isfinite(value):
            raise ValueError(f"{flag(name)} must be a finite number {low}, got {value!r}")
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"{flag(name)} must be {low}, got {value!r}")
        if high is not None and value > high:
            raise ValueError(f"{flag(name)} must be {_interval(allow_zero, high)}, got {value!r}")


def _interval(allow_zero: bool, high: float) -> str:
    return f"in {'[' if allow_zero else '('}0, {high:g}]"


def check_seed(config: object, *names: str) -> None:
    """Raise ``ValueError`` naming the flag unless each field is a seed torch accepts."""
    for name in names:
        value = getattr(config, name)
        if not 0 <= value <= MAX_SEED:
            raise ValueError(f"{flag(name)} must be an integer in [0, 2**63 - 1], got {value!r}")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Where a run is written and how it is executed (shared by every ``train`` command)."""

    out: Path | None = None
    """Run folder. Default: runs/<experiment>/<timestamp>. With --resume: the run to continue."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint (exactly: same flags, same result)."""
    seed: int = 0
    """Seed of data subsets, initialisation, shuffling and augmentation."""
    progress: bool = True
    """Show progress bars (rank 0 only)."""
    threads: int | None = None
    """torch CPU threads per process (default: torch's choice; torchrun sets 1)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: CUDA when available with 'auto'."""

    def __post_init__(self) -> None:
        check_positive(self, "threads", maximum=MAX_THREADS)
        check_seed(self, "seed")
        if self.resume and self.out is None:
            raise ValueError("--resume needs --out: the folder of the run to continue")
        check_out_folder(self.out, "runs/my-run", "runs/<experiment>/<time>")


def check_out_folder(out: Path | None, example: str, default: str) -> None:
    """Refuse an ``--out`` that names the current folder.

    ``Path("")`` is ``Path(".")``: an empty ``--out`` would spread a run's files over the
    current folder, mixed with whatever is there.
    """
    if out is not None and out == Path("."):
        raise ValueError(
            "--out '' or . names the current folder; give the run a folder of its own,"
            f" e.g. --out {example} (or omit --out for {default})"
        )
