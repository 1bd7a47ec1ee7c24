"""The run folder: ``runs/<experiment>/<timestamp>/`` with config, metrics, checkpoints.

Layout (DESIGN.md §8)::

    config.json     the typed config, as given
    metrics.csv     one row per epoch, rewritten from the checkpoint on resume
    checkpoint.pt   everything needed to continue exactly (written atomically each epoch)
    best.pt         model weights with the best validation score so far
    summary.json    final numbers, read by the report
    plots/*.png

Every file is written to a temporary name and renamed into place, so a run killed at any
moment leaves either the old or the new version of each file, never a torn one.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
# Settings of how a run executes, not of what it computes: they may change on --resume.
EXECUTION_FIELDS = frozenset({"out", "resume", "progress", "threads", "device"})


def default_run_dir(experiment: str, root: str | os.PathLike[str] = "runs") -> Path:
    """``root/<experiment>/<YYYYmmdd-HHMMSS>``, the default ``--out`` of a training command."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / experiment / stamp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename (POSIX-atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as a JSON-ready dict (paths and other objects as strings)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


class RunDir:
    """One run's folder.

    Args:
        path: The folder; created if missing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def checkpoint(self) -> Path:
        """Path of the checkpoint that ``--resume`` continues from."""
        return self.path / CHECKPOINT

    @property
    def plots(self) -> Path:
        """Folder of the run's figures."""
        return self.path / "plots"

    def has_checkpoint(self) -> bool:
        """Whether a checkpoint exists to resume from."""
        return self.checkpoint.is_file()

    def started(self) -> bool:
        """Whether a run was started here (possibly killed before its first checkpoint)."""
        return (self.path / "config.json").is_file()

    def prepare(self, config: Any, *, resume: bool) -> None:
        """Create the folder for a new run, or check that a resumed run is the same run.

        Raises:
            FileExistsError: A new run would overwrite an existing one.
            FileNotFoundError: ``resume`` was asked for but there is nothing to resume.
            ValueError: The resumed run was started with different settings; the message
                names every differing flag.
        """
        given = config_dict(config)
        saved_path = self.path / "config.json"
        if resume:
            if not self.started():
                raise FileNotFoundError(
                    f"--resume: no run in {self.path} (no config.json); start the run without "
                    "--resume, or point --out at the folder of the run to continue"
                )
            # A run killed before its first checkpoint has only config.json: resuming it
            # starts from scratch, which loses nothing.
            saved = read_json(saved_path)
            diffs = [
                f"--{k.replace('_', '-')} was {saved.get(k)!r}, now {v!r}"
                for k, v in given.items()
                if k not in EXECUTION_FIELDS and saved.get(k) != v
            ]
            if diffs:
                raise ValueError(
                    f"--resume: {self.path} was started with different settings ("
                    + "; ".join(diffs)
                    + "); repeat the original flags to continue it, or start a new run"
                )
            return
        if self.has_checkpoint() or saved_path.exists():
            raise FileExistsError(
                f"--out {self.path} already holds a run; pass --resume to continue it, "
                "or choose another --out"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(saved_path, given)

    def save_checkpoint(self, state: Mapping[str, Any], name: str = CHECKPOINT) -> None:
        """``torch.save`` ``state`` atomically."""
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        atomic_write_bytes(self.path / name, buffer.getvalue())

    def load_checkpoint(self, name: str = CHECKPOINT) -> dict[str, Any]:
        """Load a checkpoint written by :meth:`save_checkpoint` (CPU tensors)."""
        # weights_only=False: the checkpoint holds RNG states and plain Python metrics we
        # wrote ourselves; never point --resume at files from elsewhere.
        state: dict[str, Any] = torch.load(self.path / name, map_location="cpu", weights_only=False)
        return state

    def write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Rewrite ``metrics.csv`` from all rows so far (one per epoch)."""
        if not rows:
            return
        fields: list[str] = []
        for row in rows:
            fields += [k for k in row if k not in fields]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path / "metrics.csv", out.getvalue())

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write ``summary.json``."""
        write_json(self.path / "summary.json", dict(summary))

    def read_summary(self) -> dict[str, Any]:
        """Read ``summary.json`` (raises ``FileNotFoundError`` for an unfinished run)."""
        path = self.path / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.path} has no summary.json: the run has not finished; "
                "continue it with --resume"
            )
        summary: dict[str, Any] = read_json(path)
        return summary
