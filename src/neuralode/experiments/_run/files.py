"""Files we wrote earlier and read back: written atomically, read as untrusted data.

Run folders are shared between machines (``reproduce --out``), so nothing read back is
trusted (DESIGN.md §4): JSON files are checked against the structure their readers use
(:func:`check_json`), configs field by field against their dataclass (:func:`load_config`),
and no path is taken from them. Anything wrong is a :class:`RunFolderError` naming the
file, what is wrong and what to do. Writes go to a temporary name, are fsynced and renamed
into place, so a writer killed at any moment leaves the old or the new file, never a torn
one; a failed write leaves no temporary file and says how to fix the folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch

# Temporary files of atomic_write_bytes: ".<name>.tmp<pid>".
TEMPORARY = re.compile(r"^\..+\.tmp\d+$")


class RunFolderError(ValueError):
    """A file of a run folder (or of a ``reproduce --out`` folder) cannot be used.

    It is missing, damaged, from another run or not written by neuralode, or the folder
    cannot be written or is in use. The message names the file, what is wrong and what to
    do; the command line prints it without a traceback.
    """


@dataclasses.dataclass(frozen=True)
class Kind:
    """What one value read from a file must be: a description and a test."""

    name: str
    test: Callable[[Any], bool]


def is_number(value: Any) -> bool:
    """Whether a value read back is a usable number."""
    # Not bool (JSON true is no number); ints must fit a float, or formatting them with
    # :.2f overflows. NaN and inf are numbers: diverged metrics are written as such.
    if type(value) is float:
        return True
    return type(value) is int and abs(value) <= 2**1000


NUMBER = Kind("a number", is_number)
POSITIVE = Kind("a positive number", lambda v: is_number(v) and v > 0)
COUNT = Kind("a whole number ≥ 0", lambda v: type(v) is int and 0 <= v < 2**63)
TEXT = Kind("a string", lambda v: isinstance(v, str))
OBJECT = Kind("a JSON object", lambda v: isinstance(v, dict))
NUMBERS = Kind(
    "an object of numbers",
    lambda v: (
        isinstance(v, dict) and all(isinstance(k, str) and is_number(x) for k, x in v.items())
    ),
)
STATE_DICT = Kind(
    "a state dict (names → tensors)",
    lambda v: (
        isinstance(v, dict)
        and all(isinstance(k, str) and isinstance(x, torch.Tensor) for k, x in v.items())
    ),
)
# A spec: a Kind; a dict of required keys and their specs; or a one-element list, meaning
# a non-empty list whose every item matches the element.
Spec = Kind | dict[str, Any] | list[Any]


def optional(kind: Kind) -> Kind:
    """``kind`` or null/``None``."""
    return Kind(f"{kind.name} or null", lambda v: v is None or kind.test(v))


def check_json(value: Any, spec: Spec, path: Path, fix: str, where: str = "") -> None:
    """Check ``value`` (read from ``path``) against ``spec``.

    Raises:
        RunFolderError: Naming the file, the first entry that does not match, and ``fix``.
    """
    place = where or "the top level"
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise _wrong(path, place, "an object {...}", value, fix)
        for key, sub in spec.items():
            if key not in value:
                raise RunFolderError(f"{path}: {place} has no {key!r} entry. {fix}")
            check_json(value[key], sub, path, fix, f"{where}[{key!r}]")
    elif isinstance(spec, list):
        if not isinstance(value, list) or not value:
            raise _wrong(path, place, "a non-empty list", value, fix)
        for i, item in enumerate(value):
            check_json(item, spec[0], path, fix, f"{where}[{i}]")
    elif not spec.test(value):
        raise _wrong(path, place, spec.name, value, fix)


def _wrong(path: Path, place: str, expected: str, value: Any, fix: str) -> RunFolderError:
    try:
        shown = repr(value)
    except ValueError:  # an int too long to print (over sys.get_int_max_str_digits())
        shown = f"a {type(value).__name__} too long to show"
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return RunFolderError(f"{path}: {place} should be {expected}, got {shown}. {fix}")


REWRITE = "Delete it (or its run folder) and run the command again to write it anew."


def read_json(path: Path, spec: Spec = OBJECT, fix: str = REWRITE) -> Any:
    """Read a JSON file we wrote earlier, checked against ``spec``.

    Raises:
        RunFolderError: Missing, unreadable, not JSON, or not matching ``spec``.
    """
    path = Path(path)
    if not path.is_file():
        what = "is missing" if not path.exists() else "is not a regular file"
        raise RunFolderError(f"{path} {what}. {fix}")
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RunFolderError(f"{path} is not readable JSON ({first_line(exc)}). {fix}") from None
    check_json(value, spec, path, fix)
    return value


def first_line(exc: BaseException) -> str:
    """``"Type: first line of the message"`` of an exception, for one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` into a :class:`RunFolderError` with the fix."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            fix = "free some space (or choose another --out)"
        elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            fix = "make the folder writable, or choose another --out"
        else:
            fix = "fix the folder, or choose another --out"
        raise RunFolderError(
            f"cannot write {path}: {exc.strerror or exc}. Every file already there is "
            f"unchanged (the last checkpoint is intact): {fix}, then run the same command "
            "again (with --resume for a training run)"
        ) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename (POSIX-atomic).

    Raises:
        RunFolderError: The folder is read-only, the disk is full, ...; the temporary
            file is removed and ``path`` keeps its previous content.
    """
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:  # also on Ctrl-C: leave no temporary file behind
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def _describe(hint: Any) -> str:
    """``int | None`` → ``"an integer or null"``, for messages."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             Path: "a path string", type(None): "null"}  # fmt: skip
    return names.get(hint, str(hint))


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can be the value of a config field annotated ``hint``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return type(value) is bool
    if hint is int:
        return type(value) is int
    if hint is float:
        return type(value) in (int, float)
    if hint in (str, Path):
        return isinstance(value, str)
    return False  # a field type no config uses yet: refuse rather than guess


def load_config(cls: type[Any], path: Path, *, ignore: frozenset[str] = frozenset()) -> Any:
    """Rebuild the dataclass config ``cls`` from its ``config.json``, every field checked.

    Every field must be there (a default in its place could rebuild another model); the
    fields in ``ignore`` (paths, execution settings) are never taken from the file.

    Raises:
        RunFolderError: The file is missing, not JSON, or a value does not fit its field.
    """
    fix = "The run folder is damaged or not from this command; train the run again."
    saved = read_json(path, OBJECT, fix)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name in ignore:
            continue
        if field.name not in saved:
            raise RunFolderError(f"{path}: the top level has no {field.name!r} entry. {fix}")
        value = saved[field.name]
        if not _fits(value, hints[field.name]):
            raise _wrong(path, f"[{field.name!r}]", _describe(hints[field.name]), value, fix)
        kwargs[field.name] = value
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise RunFolderError(f"{path} holds settings no run can have: {exc}. {fix}") from None
