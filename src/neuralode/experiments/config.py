"""Settings shared by every training command, and the checks that name the offending flag."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal


def flag(name: str) -> str:
    """The command-line spelling of a config field: ``train_size`` → ``--train-size``."""
    return "--" + name.replace("_", "-")


def check_positive(config: object, *names: str, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` naming the flag if a numeric field is not positive."""
    for name in names:
        value = getattr(config, name)
        if value is None:
            continue
        if value < 0 or (value == 0 and not allow_zero):
            bound = "≥ 0" if allow_zero else "> 0"
            raise ValueError(f"{flag(name)} must be {bound}, got {value!r}")


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
        check_positive(self, "threads")
        if self.resume and self.out is None:
            raise ValueError("--resume needs --out: the folder of the run to continue")
