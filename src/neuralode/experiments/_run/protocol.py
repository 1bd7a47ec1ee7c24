"""What a protocol of ``neuralode reproduce`` is: a planner of jobs and a report section."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Context:
    """What every protocol needs to plan its jobs and write its section.

    Attributes:
        preset: ``"demo"``, ``"quick"`` or ``"full"``.
        out: The reproduce folder.
        seed: Seed of every run.
        data_dir: ``--data-dir`` for the image datasets.
        progress: Whether runs draw their own progress bars.
        image_dataset: ``"fashion-mnist"`` or ``"digits"`` (what is installed).
        image_note: Why that dataset, for the report.
    """

    preset: str
    out: Path
    seed: int
    data_dir: Path | None
    progress: bool
    image_dataset: str
    image_note: str

    def folder(self, protocol: str, name: str = "") -> Path:
        """``OUT/<protocol>/<name>``."""
        return self.out / protocol / name if name else self.out / protocol


@dataclasses.dataclass
class Job:
    """One run of a protocol.

    Attributes:
        protocol: e.g. ``"p1"``.
        name: Short name, unique within the protocol (the run folder's name).
        run: Does the work, resuming whatever an earlier, interrupted attempt left.
        done: Whether the finished result already exists.
        cost: Rough cost in seconds of one free core (the run uses one thread), for the
            overall ETA.
        after: Keys (``protocol/name``) of jobs that must finish before this one starts.
    """

    protocol: str
    name: str
    run: Callable[[], None]
    done: Callable[[], bool]
    cost: float = 1.0
    after: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """``protocol/name``: unique across protocols (the key of wall_times.json)."""
        return f"{self.protocol}/{self.name}"


@dataclasses.dataclass(frozen=True)
class Claim:
    """One line of the report's "What this run shows": a claim of the paper, checked.

    Attributes:
        claim: What the paper claims, in a few words.
        ours: Our number(s), as printed in the protocol's section.
        paper: The paper's number(s), or what it shows where it gives none.
        holds: The verdict by the protocol's own threshold; ``None`` where it is not
            decided (runs missing) or the claim is reported without a verdict.
        figure: The figure that shows it (``None`` where the protocol draws none).
        note: Why ``holds`` is ``None`` (e.g. "not run", "reported, not judged").
    """

    claim: str
    ours: str
    paper: str
    holds: bool | None
    figure: Path | None = None
    note: str = ""


class Planner(abc.ABC):
    """One protocol: the jobs a preset needs, and the report section from their results.

    Attributes:
        name: ``p<N>``.
        title: Its section's heading.
        default: Whether ``neuralode reproduce`` runs it without ``--only`` (the paper's
            protocols); the ones beyond the paper run only when named.
    """

    name: str
    title: str
    default: bool = True

    @abc.abstractmethod
    def jobs(self, ctx: Context) -> list[Job]:
        """The runs of this protocol at ``ctx.preset``, in order."""

    @abc.abstractmethod
    def section(self, ctx: Context, walls: Mapping[str, float]) -> str:
        """This protocol's REPORT.md section (Markdown), from the finished runs."""

    @abc.abstractmethod
    def claims(self, ctx: Context) -> list[Claim]:
        """The paper's claims this protocol checks, from the same numbers as its section."""
