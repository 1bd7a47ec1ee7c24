"""The run folder: ``runs/<experiment>/<timestamp>/`` with config, metrics, checkpoints.

Layout (DESIGN.md §8)::

    config.json     the typed config, as given
    metrics.csv     one row per epoch, rewritten from the checkpoint on resume
    checkpoint.pt   everything needed to continue exactly (written atomically each epoch)
    best.pt         model weights with the best validation score so far
    summary.json    final numbers, read by the report
    plots/*.png
    .lock           held (``flock``) by the process training in the folder

Every file is written to a temporary name and renamed into place, so a run killed at any
moment leaves either the old or the new version of each file, never a torn one.

Files are data, never code (DESIGN.md §4): checkpoints load with ``torch.load(...,
weights_only=True)``, which unpickles tensors and plain containers only, and are checked
against what their readers use (see :mod:`.files`). Anything wrong is a
:class:`~.files.RunFolderError` naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import fcntl
import io
import json
import math
import os
import pickle
import stat
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .files import (
    COUNT,
    NUMBER,
    NUMBERS,
    OBJECT,
    STATE_DICT,
    TEMPORARY,
    RunFolderError,
    Spec,
    atomic_write_bytes,
    atomic_write_text,
    check_json,
    first_line,
    is_number,
    optional,
    read_json,
    write_json,
    writing,
)

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
LOCK = ".lock"
# Settings of how a run executes, not of what it computes: they may change on --resume.
EXECUTION_FIELDS = frozenset({"out", "resume", "progress", "threads", "device"})
# Temporary files of atomic_write_bytes: ".<name>.tmp<pid>".


def default_run_dir(experiment: str, root: str | os.PathLike[str] = "runs") -> Path:
    """``root/<experiment>/<YYYYmmdd-HHMMSS>``, the default ``--out`` of a training command."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / experiment / stamp


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
        self._lock: int | None = None

    @property
    def checkpoint(self) -> Path:
        """Path of the checkpoint that ``--resume`` continues from."""
        return self.path / CHECKPOINT

    @property
    def plots(self) -> Path:
        """Folder of the run's figures."""
        return self.subfolder("plots")

    def subfolder(self, name: str) -> Path:
        """``path/name``, a folder we write into: never a symbolic link.

        A run folder may come from elsewhere; a planted link would make us write files
        wherever it points (the run folder itself may be a link: the user chose it).

        Raises:
            RunFolderError: It is a symbolic link.
        """
        folder = self.path / name
        if folder.is_symlink():
            raise RunFolderError(
                f"{folder} is a symbolic link (to {os.readlink(folder)}); neuralode writes "
                "there and follows no link planted in a run folder: replace it with a plain "
                "folder (or remove it)"
            )
        return folder

    def has_checkpoint(self) -> bool:
        """Whether a checkpoint exists to resume from (damaged or not: loading tells)."""
        return self.checkpoint.exists() or self.checkpoint.is_symlink()

    def started(self) -> bool:
        """Whether a run was started here (possibly killed before its first checkpoint)."""
        return (self.path / "config.json").exists()

    def prepare(self, config: Any, *, resume: bool) -> None:
        """Lock the folder, then create it for a new run or check that a resumed run is the same.

        The lock is held until :meth:`release` or the end of the process.

        Raises:
            FileExistsError: A new run would overwrite an existing one.
            FileNotFoundError: ``resume`` was asked for but there is nothing to resume.
            ValueError: The resumed run was started with different settings; the message
                names every differing flag.
            RunFolderError: The folder is in use by another process, cannot be written,
                or its config.json is damaged.
        """
        given = config_dict(config)
        saved_path = self.path / "config.json"
        if resume and not self.started():
            raise FileNotFoundError(
                f"--resume: no run in {self.path} (no config.json); start the run without "
                "--resume, or point --out at the folder of the run to continue"
            )
        self.lock()
        try:
            self._prepare_locked(given, _defaults(config), saved_path, resume)
        except BaseException:
            self.release()
            raise

    def _prepare_locked(
        self, given: dict[str, Any], defaults: dict[str, Any], saved_path: Path, resume: bool
    ) -> None:
        self._remove_temporaries()
        if resume:
            # A run killed before its first checkpoint has only config.json: resuming it
            # starts from scratch, which loses nothing.
            saved = read_json(saved_path, OBJECT, "Start a new run in another --out.")
            # A setting added after the run started is absent from its config.json: the run
            # trained with that setting's default.
            saved = {**defaults, **saved}
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
        if self.has_checkpoint() or self.started():
            raise FileExistsError(
                f"--out {self.path} already holds a run; pass --resume to continue it, "
                "or choose another --out"
            )
        write_json(saved_path, given)

    def lock(self) -> None:
        """Take the folder's lock (creating the folder), so one process at a time trains in it.

        ``flock`` on ``.lock``: the OS releases it when the process ends, even when killed.

        Raises:
            RunFolderError: Another process holds it, or the folder cannot be written.
        """
        if self._lock is not None:
            return
        path = self.path / LOCK
        with writing(path):
            self.path.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a planted .lock symlink must not make us open (and write) its target.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        # Only a plain file of ours holds a pid to read or write: never through a link.
        info = os.fstat(fd)
        plain = stat.S_ISREG(info.st_mode) and info.st_nlink == 1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() if plain else ""
            os.close(fd)
            raise RunFolderError(
                f"run folder {self.path} is in use by another process "
                f"(pid {holder if holder.isdigit() else 'unknown'}); wait for it to finish, "
                "or use another --out"
            ) from None
        if plain:
            try:
                with writing(path):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            except BaseException:
                os.close(fd)
                raise
        self._lock = fd

    def release(self) -> None:
        """Release the lock taken by :meth:`lock` (a no-op without one)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _remove_temporaries(self) -> None:
        # Left by a writer killed between open and rename; under the lock no writer of this
        # folder is alive. Only our own naming pattern, only plain files.
        for folder in (self.path, self.plots):
            if not folder.is_dir():
                continue
            for entry in folder.iterdir():
                if TEMPORARY.match(entry.name) and entry.is_file() and not entry.is_symlink():
                    with contextlib.suppress(OSError):
                        entry.unlink()

    def save_checkpoint(self, state: Mapping[str, Any], name: str = CHECKPOINT) -> None:
        """``torch.save`` ``state`` atomically (tensors and plain containers only)."""
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        atomic_write_bytes(self.path / name, buffer.getvalue())

    def load_checkpoint(
        self, name: str = CHECKPOINT, spec: Spec | None = None, fix: str | None = None
    ) -> dict[str, Any]:
        """Load a checkpoint written by :meth:`save_checkpoint` (CPU tensors), checked.

        Args:
            name: The file in the run folder.
            spec: What the readers need (default: a dict with a ``"model"`` state dict).
            fix: What to do if it cannot be used (default: train the run again).

        Raises:
            RunFolderError: Missing, not a file, damaged, holding anything but tensors and
                plain containers (never unpickled), or not matching ``spec``.
        """
        path = self.path / name
        fix = fix or "Its weights cannot be recovered: train the run again (another --out)."
        if not path.is_file():
            what = "is missing" if not path.exists() else "is not a regular file"
            raise RunFolderError(f"{path} {what}. {fix}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pickle-protocol notes of the unpickler
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise RunFolderError(
                f"{path} holds objects other than tensors and plain containers, so it was "
                "not written by neuralode; it was not loaded, since unpickling it could "
                f"run code it carries ({first_line(exc)[:120]}). {fix}"
            ) from None
        except Exception as exc:  # any failure of the reader: the file is damaged
            raise RunFolderError(
                f"{path} is damaged or truncated: not a readable checkpoint "
                f"({first_line(exc)}). {fix}"
            ) from None
        check_json(state, {"model": STATE_DICT} if spec is None else spec, path, fix)
        result: dict[str, Any] = state
        return result

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

    def read_summary(self, spec: Spec = OBJECT) -> dict[str, Any]:
        """Read ``summary.json``, checked against ``spec``.

        Raises:
            RunFolderError: Not a run folder, a run that has not finished, or a damaged
                summary.
        """
        path = self.path / "summary.json"
        if not self.started():
            what = "does not exist" if not self.path.exists() else "is not a run folder"
            raise RunFolderError(
                f"{self.path} {what} (no config.json): give the folder that a training "
                "command printed as 'run folder: ...'"
            )
        if not path.exists():
            raise RunFolderError(
                f"{self.path} has no summary.json: the run has not finished; "
                "continue it with --resume"
            )
        summary: dict[str, Any] = read_json(
            path, spec, "Delete it and continue the run with --resume to write it again."
        )
        return summary

    def load_training_state(self, metric: str) -> dict[str, Any]:
        """Load ``checkpoint.pt`` for ``--resume``, checked for everything the loop reads.

        Args:
            metric: The history key that selects the best checkpoint (``"val_accuracy"``).

        Raises:
            RunFolderError: As :meth:`load_checkpoint`, or an inconsistent history.
        """
        fix = (
            "Delete it to restart this run from its first epoch with --resume, or start a "
            "new run in another --out."
        )
        spec = {
            "epoch": COUNT,
            "model": STATE_DICT,
            "optimizer": {"state": OBJECT, "param_groups": [OBJECT]},
            "scheduler": optional(OBJECT),
            "history": [NUMBERS],
            "best": {"score": NUMBER, "epoch": COUNT},
        }
        state = self.load_checkpoint(CHECKPOINT, spec, fix)
        history, epoch = state["history"], state["epoch"]
        keys, needed = set(history[0]), {"epoch", "train_seconds", metric}  # what fit reads
        for i, row in enumerate(history):
            if set(row) != keys or row.get("epoch") != i + 1 or not needed <= keys:
                raise RunFolderError(
                    f"{self.checkpoint}: the history row of epoch {i + 1} is not a row this "
                    f"run writes (keys {sorted(row)}). {fix}"
                )
        if len(history) != epoch or not 1 <= state["best"]["epoch"] <= epoch:
            raise RunFolderError(
                f"{self.checkpoint}: epoch {epoch}, {len(history)} history rows and best "
                f"epoch {state['best']['epoch']} do not agree. {fix}"
            )
        return state

    def restore(self, target: Any, state: Any, name: str = CHECKPOINT) -> None:
        """``target.load_state_dict(state)`` for a module, optimiser or scheduler, checked.

        A module checks names and shapes itself; an optimiser or scheduler would take any
        dict and fail later, so ``state`` must have the structure of ``target``'s own.

        Raises:
            RunFolderError: ``state`` (from ``name``) belongs to another model or settings.
        """
        path = self.path / name
        if not isinstance(target, torch.nn.Module):
            fresh = target.state_dict()
            # An optimiser's per-parameter state is empty before its first step: its
            # tensors are checked against the parameters after loading, below.
            if isinstance(target, torch.optim.Optimizer):
                fresh, state_part = fresh["param_groups"], state["param_groups"]
            else:
                state_part = state
            problem = _unlike(fresh, state_part, "")
            if problem:
                raise self._other(path, target, problem)
        try:
            target.load_state_dict(state)
        except Exception as exc:  # load_state_dict's own checks, whatever their type
            raise self._other(path, target, first_line(exc)) from None
        if isinstance(target, torch.optim.Optimizer) and (problem := _unusable(target)):
            raise self._other(path, target, problem)

    def _other(self, path: Path, target: Any, problem: str) -> RunFolderError:
        return RunFolderError(
            f"{path} holds the {type(target).__name__} state of another model or other settings "
            f"({problem}); it cannot continue this run. Point --out / RUN_DIR at the run "
            "that wrote it, or train this one again in another --out."
        )


def _unlike(fresh: Any, loaded: Any, where: str) -> str:
    """Where ``loaded`` differs in structure from ``fresh`` ('' if nowhere)."""
    if isinstance(fresh, dict):
        if not isinstance(loaded, dict) or set(loaded) != set(fresh):
            return f"{where or 'the top level'}: keys differ"
        return next(
            (p for k in fresh if (p := _unlike(fresh[k], loaded[k], f"{where}[{k!r}]"))), ""
        )
    if isinstance(fresh, (list, tuple)):
        if type(loaded) is not type(fresh) or len(loaded) != len(fresh):
            return f"{where}: length differs"
        return next((p for i, (a, b) in enumerate(zip(fresh, loaded, strict=True))
                     if (p := _unlike(a, b, f"{where}[{i}]"))), "")  # fmt: skip
    if isinstance(fresh, torch.Tensor):
        ok = isinstance(loaded, torch.Tensor) and loaded.shape == fresh.shape
        return "" if ok else f"{where}: not a tensor of shape {list(fresh.shape)}"
    if is_number(fresh):
        # A NaN learning rate would load and then train nothing, silently.
        finite = not math.isfinite(fresh) or is_number(loaded) and math.isfinite(loaded)
        return "" if is_number(loaded) and finite else f"{where}: {loaded!r:.40}"
    return "" if type(loaded) is type(fresh) else f"{where}: {type(loaded).__name__}"


def _unusable(optimizer: torch.optim.Optimizer) -> str:
    """What in a loaded optimiser's per-parameter state its next step would fail on ('' if none).

    ``load_state_dict`` takes any per-parameter dicts; the keys a step needs come from a
    twin optimiser of the same class and settings stepped once on a probe parameter.
    """
    probe = torch.zeros(1, requires_grad=True)
    settings = {k: v for k, v in optimizer.param_groups[0].items() if k in optimizer.defaults}
    try:
        twin = type(optimizer)([probe], **settings)  # checks the settings: lr ≥ 0, ...
    except ValueError as exc:
        return first_line(exc)
    try:
        probe.grad = torch.zeros(1)
        twin.step()
        needed = set(twin.state[probe])
    except Exception:  # an optimiser that cannot be probed so (LBFGS needs a closure)
        needed = set()
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state is None:
                continue
            if not isinstance(state, dict) or not needed <= set(state):
                return f"per-parameter state {type(state).__name__} without {sorted(needed)}"
            for key, value in state.items():
                if not isinstance(value, torch.Tensor) or (
                    value.dim() and (value.shape != param.shape or value.dtype != param.dtype)
                ):
                    return f"{key} is not a tensor of shape {list(param.shape)}"
    return ""


def _defaults(config: Any) -> dict[str, Any]:
    """The config class's field defaults, JSON-ready (fields without one are left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return json.loads(json.dumps(out, default=str))  # as config_dict spells them
