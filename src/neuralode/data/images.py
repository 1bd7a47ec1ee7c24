"""MNIST, Fashion-MNIST and scikit-learn's 8×8 digits as torch tensors.

Where ``load_images`` looks, in order:

1. A folder you name, with ``data_dir=`` (``--data-dir``) or else ``$NEURALODE_DATA_DIR``:
   ``<folder>/<name>/``, ``<folder>/`` itself and torchvision's layout
   ``<folder>/FashionMNIST/raw/`` or ``<folder>/MNIST/raw/``, for the standard file names,
   gzip-compressed or raw. A named folder is the only place searched: if it does not hold
   the files, that is an error (a mistyped path must not quietly load other data).
2. With no folder named: the same layout under the cache folder
   (``$XDG_CACHE_HOME/neuralode/datasets``, else ``~/.cache/neuralode/datasets``), then,
   for Fashion-MNIST, the Debian/Ubuntu package ``dataset-fashion-mnist``, which installs
   the four upstream ``.gz`` files in ``/usr/share/datasets/fashion-mnist/``.
3. With ``download=True``, the official mirrors, into ``<folder>/<name>/``. The per-name
   subfolder matters: MNIST and Fashion-MNIST use the same file names.

Every file is verified when it is read: the SHA-256 of its IDX content (the raw file, or
the decompressed stream of a ``.gz``) must be the pinned digest of the official file
(``ImageSource.content_sha256``). Pinning the content rather than the ``.gz`` bytes
accepts every faithful copy: Debian recompresses the ``.gz`` files (other bytes, the same
IDX payload), torchvision keeps raw copies. Downloads are checked once more against the
digests of the upstream ``.gz`` files (``ImageSource.sha256``) before they are renamed
into place. Your own data under the standard names loads with ``verify=False``
(``--no-verify-data``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from ._download import download_verified
from .idx import IDXChecksumError, IDXFormatError, read_idx_pair
from .sources import SOURCES, SPLITS, ImageSource

__all__ = [
    "DATA_DIR_ENV",
    "SOURCES",
    "SPLITS",
    "ImageSource",
    "default_data_dir",
    "find_image_files",
    "load_digits",
    "load_images",
]

#: The environment variable that names the data folder when no ``data_dir`` is given.
DATA_DIR_ENV = "NEURALODE_DATA_DIR"
# `train classify --help` once documented $NEURALODE_DATA, which nothing read. It is still
# honoured, with a warning, so that whoever followed that help gets the folder they named.
_OLD_DATA_DIR_ENV = "NEURALODE_DATA"


def _named_data_dir(data_dir: str | os.PathLike[str] | None) -> tuple[Path, str] | None:
    """The folder the user named and where they named it, or ``None`` if they did not."""
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(
                f"data_dir must be a folder path (str or os.PathLike), got "
                f"{type(data_dir).__name__} {data_dir!r}"
            )
        # Path("") is the current folder: an empty value is a mistake, not a choice.
        if not os.fspath(data_dir):
            raise ValueError(
                "data_dir is an empty path; pass the folder that holds the IDX files (on the "
                "command line: --data-dir FOLDER), or leave it out"
            )
        return Path(data_dir).expanduser(), "data_dir (--data-dir)"
    if env := os.environ.get(DATA_DIR_ENV):
        return Path(env).expanduser(), f"${DATA_DIR_ENV}"
    if env := os.environ.get(_OLD_DATA_DIR_ENV):
        warnings.warn(
            f"${_OLD_DATA_DIR_ENV} is deprecated and will be ignored in a future release; "
            f"rename it to ${DATA_DIR_ENV}",
            FutureWarning,
            stacklevel=2,
        )
        return Path(env).expanduser(), f"${_OLD_DATA_DIR_ENV}"
    return None


def _cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "neuralode" / "datasets"


def default_data_dir() -> Path:
    """The folder used when no ``data_dir`` is given.

    Returns:
        ``$NEURALODE_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/neuralode/datasets``, else
        ``~/.cache/neuralode/datasets``.
    """
    named = _named_data_dir(None)
    return named[0] if named else _cache_dir()


def _check_choice(argument: str, value: str, choices: Mapping[str, object]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{argument} must be one of {sorted(choices)}, got {value!r}")


def _search_dirs(
    name: str, data_dir: str | os.PathLike[str] | None
) -> tuple[list[Path], str | None]:
    """The folders to search, first the download target, and where the base was named."""
    source = SOURCES[name]
    named = _named_data_dir(data_dir)
    base, origin = named if named else (_cache_dir(), None)
    dirs = [base / name, base, base / source.torchvision_dir / "raw"]
    if origin is None:
        # Only when no folder is named: a named folder that lacks the files is an error,
        # never a reason to load the system copy instead.
        dirs += [Path(d) for d in source.system_dirs]
    return dirs, origin


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _find_split(folder: Path, split: str) -> tuple[Path, Path] | None:
    images_stem, labels_stem = SPLITS[split]
    images, labels = _find(folder, images_stem), _find(folder, labels_stem)
    return (images, labels) if images is not None and labels is not None else None


def _locate(
    name: str, split: str, data_dir: str | os.PathLike[str] | None
) -> tuple[Path, Path] | None:
    _check_choice("name", name, SOURCES)
    _check_choice("split", split, SPLITS)
    for folder in _search_dirs(name, data_dir)[0]:
        if found := _find_split(folder, split):
            return found
    return None


def find_image_files(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path] | None:
    """Find the image and label files of a split without reading them.

    Args:
        name: ``"fashion-mnist"`` or ``"mnist"``.
        split: ``"train"`` or ``"test"``.
        data_dir: The folder to search (else ``$NEURALODE_DATA_DIR``); when neither is
            given, the cache folder and the system package folder. See the module
            docstring for the layouts.

    Returns:
        ``(images_path, labels_path)`` from the first folder that holds both, or ``None``
        when no folder was named and the files are not installed.

    Raises:
        FileNotFoundError: If a folder was named (``data_dir`` or
            ``$NEURALODE_DATA_DIR``) and does not hold the files: a mistyped path must
            not read as "not installed" to a caller that then picks other data.
    """
    found = _locate(name, split, data_dir)
    if found is None and _named_data_dir(data_dir) is not None:
        raise FileNotFoundError(_how_to_get(name, split, data_dir))
    return found


def _describe_named(base: Path, origin: str) -> str:
    if not base.exists():
        state = "does not exist"
    elif not base.is_dir():
        state = "is not a folder"
    else:
        names = sorted(p.name for p in base.iterdir())
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        state = f"holds {len(names)} entries ({shown})" if names else "is empty"
    return (
        f"{base}, named by {origin}, {state}. Only the folder you name is searched: "
        "check its spelling."
    )


def _how_to_get(name: str, split: str, data_dir: str | os.PathLike[str] | None) -> str:
    source = SOURCES[name]
    images_stem, labels_stem = SPLITS[split]
    dirs, origin = _search_dirs(name, data_dir)
    searched = "\n".join(f"  {d}" for d in dirs)
    lines = [
        f"{source.title} {split} split not found: looked for {images_stem}[.gz] and "
        f"{labels_stem}[.gz] in\n{searched}"
    ]
    installed = next((d for d in source.system_dirs if _find_split(Path(d), split)), None)
    if origin is not None:
        lines.append(_describe_named(dirs[1], origin))
        if installed:
            unset = f", or unset {origin}" if origin.startswith("$") else ""
            lines.append(
                f"{source.title} is installed in {installed}: pass data_dir={installed} (on "
                f"the command line: --data-dir {installed}){unset}."
            )
    ways = []
    if source.apt_package and not installed:
        where = f"; installs the files in {source.system_dirs[0]}/" if source.system_dirs else ""
        ways.append(f"  - sudo apt-get install {source.apt_package}   (Debian/Ubuntu{where})")
    ways.append(
        f"  - fetch the .gz files from {source.homepage} into a folder and pass "
        "data_dir=FOLDER (on the command line: --data-dir FOLDER)"
    )
    ways.append(
        f"  - pass download=True (--download) to download them into {dirs[0]}/ from "
        f"{source.mirrors[0]} (SHA-256 checked)"
    )
    return "\n".join(lines) + "\nGet the files in one of these ways:\n" + "\n".join(ways)


def _download(name: str, split: str, data_dir: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    source = SOURCES[name]
    target = _search_dirs(name, data_dir)[0][0]
    paths = []
    for stem in SPLITS[split]:
        path = target / f"{stem}.gz"
        # One file of the pair may already be there from an interrupted earlier call; it is
        # not fetched again, and like every file it is verified when it is read.
        if not path.is_file():
            urls = [mirror + path.name for mirror in source.mirrors]
            download_verified(urls, path, source.sha256[path.name])
        paths.append(path)
    return paths[0], paths[1]


def _not_official(name: str, error: IDXChecksumError) -> IDXChecksumError:
    """``error`` again, with advice that fits a loaded data set."""
    source = SOURCES[name]
    path = Path(error.path)
    if source.apt_package and str(path.parent) in source.system_dirs:
        fix = f"reinstall it (sudo apt-get install --reinstall {source.apt_package})"
    else:
        fix = (
            f"delete it and get it again (download=True, on the command line --download, "
            f"fetches a verified copy; or from {source.homepage})"
        )
    advice = (
        f"it is not the official {source.title} file {path.name}: damaged, modified, or "
        f"other data under that name. If it should be the official file, {fix}. To load "
        "your own data under the standard file names on purpose, pass verify=False (on "
        "the command line: --no-verify-data)."
    )
    return IDXChecksumError(path, error.expected, error.actual, advice)


def _check_contents(
    name: str, found: tuple[Path, Path], images: torch.Tensor, labels: torch.Tensor
) -> None:
    """What a classifier needs beyond a well-formed pair: images and labels in range."""
    if images.shape[0] == 0:
        raise IDXFormatError(f"{found[0]}: holds no images; a data set needs at least one")
    rows, cols = images.shape[1:]
    if rows == 0 or cols == 0:
        raise IDXFormatError(
            f"{found[0]}: its images are {rows}x{cols} pixels; the header is corrupt or the "
            "file is not an image file"
        )
    num_classes = SOURCES[name].num_classes
    # Labels come from uint8, so only the upper end can be wrong.
    if int(labels.max()) >= num_classes:
        raise IDXFormatError(
            f"{found[1]}: labels must lie in [0, {num_classes}), found a {int(labels.max())}; "
            f"is this a {SOURCES[name].title} label file?"
        )


def load_images(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    *,
    verify: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST or Fashion-MNIST.

    Args:
        name: ``"fashion-mnist"`` or ``"mnist"``.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: Folder holding the standard IDX files (``train-images-idx3-ubyte.gz``,
            ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
            ``t10k-labels-idx1-ubyte.gz``; ``.gz`` or raw), directly or in a ``<name>/``
            subfolder. Defaults to ``$NEURALODE_DATA_DIR``; a folder named either way is
            the only place searched. With neither, the cache folder and then the system
            package folder are searched (see the module docstring).
        download: If the files are not found, download them (SHA-256 checked) into
            ``<folder>/<name>/``.
        verify: Check each file's IDX content against the pinned SHA-256 of the official
            file. ``False`` loads your own data under the standard names (still checked
            for format, matching counts and labels in ``[0, 10)``).

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``. Use
        :func:`~neuralode.data.to_float` for network input.

    Raises:
        ValueError: For an unknown ``name`` or ``split``, or an empty ``data_dir``.
        TypeError: If ``data_dir`` is not a path or ``download``/``verify`` not a bool.
        FileNotFoundError: If the files are not found and ``download`` is false; the
            message names the folders searched and says how to get the files.
        DownloadError: If ``download`` is true and no mirror delivered the right bytes.
        IDXChecksumError: If ``verify`` and a file is not the official one.
        IDXFormatError: If a file is corrupt, the counts differ, or a label is out of range.
    """
    for flag, value in (("download", download), ("verify", verify)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be True or False, got {value!r}")
    found = _locate(name, split, data_dir)
    if found is None:
        if not download:
            raise FileNotFoundError(_how_to_get(name, split, data_dir))
        found = _download(name, split, data_dir)
    pins = SOURCES[name].content_sha256
    images_stem, labels_stem = SPLITS[split]
    digests = (pins[images_stem], pins[labels_stem]) if verify else (None, None)
    try:
        images, labels = read_idx_pair(*found, sha256=digests)
    except IDXChecksumError as error:
        raise _not_official(name, error) from None
    _check_contents(name, found, images, labels)
    return images, labels


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8×8 handwritten digits (1,797 images): for runs that take seconds.

    The pixel values are counts from 0 to 16 (of 4×4 blocks of a 32×32 bitmap); they are
    divided by 16 to lie in ``[0, 1]`` like :func:`~neuralode.data.to_float`'s output.

    Returns:
        ``(images, labels)``: float32 ``(1797, 1, 8, 8)`` in ``[0, 1]`` and int64 ``(1797,)``.

    Raises:
        ImportError: If scikit-learn is not installed, with the command that installs it.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as exc:
        raise ImportError(
            "load_digits needs scikit-learn (an optional extra): pip install 'neuralode[data]'"
        ) from exc
    bunch = sklearn_load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div(16.0).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    return images, labels
