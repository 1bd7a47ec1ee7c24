"""MNIST, Fashion-MNIST and scikit-learn's 8×8 digits as torch tensors.

Where ``load_images`` looks, in order:

1. ``data_dir/<name>/`` and ``data_dir/`` itself (``data_dir`` defaults to
   :func:`default_data_dir`), then torchvision's layout ``data_dir/FashionMNIST/raw/`` or
   ``data_dir/MNIST/raw/``, for the standard file names, gzip-compressed or raw.
2. For Fashion-MNIST, the Debian/Ubuntu package ``dataset-fashion-mnist``, which installs
   the four upstream ``.gz`` files in ``/usr/share/datasets/fashion-mnist/``. (Debian
   recompresses them, so the ``.gz`` bytes differ from upstream; the decompressed IDX
   payloads are identical.)
3. With ``download=True``, the official mirrors, into ``data_dir/<name>/``. The per-name
   subfolder matters: MNIST and Fashion-MNIST use the same file names.

Downloads are checked against SHA-256 digests of the upstream ``.gz`` files (see
``SOURCES``); files found locally are trusted, since users legitimately hold recompressed
or raw copies.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ._download import download_verified
from .idx import IDXFormatError, read_idx_pair

__all__ = [
    "SOURCES",
    "SPLITS",
    "ImageSource",
    "default_data_dir",
    "find_image_files",
    "load_digits",
    "load_images",
]

SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class ImageSource:
    """Where one IDX image data set comes from.

    Attributes:
        title: Display name for messages.
        mirrors: Base URLs, each ending in ``/``, tried in order.
        sha256: Hex SHA-256 of each upstream ``.gz`` file, keyed by its file name.
        homepage: Where a person can read about and fetch the files by hand.
        torchvision_dir: Folder name torchvision uses under its root (files in ``raw/``).
        system_dirs: Folders a system package installs the files into.
        apt_package: The Debian/Ubuntu package that provides them, if any.
        num_classes: Labels must lie in ``[0, num_classes)``.
    """

    title: str
    mirrors: tuple[str, ...]
    sha256: dict[str, str]
    homepage: str
    torchvision_dir: str
    system_dirs: tuple[str, ...] = ()
    apt_package: str | None = None
    num_classes: int = 10


# SHA-256 digests of the upstream .gz files. Sources, checked against each other:
# - Fashion-MNIST: torchvision's prototype datasets (pytorch/vision,
#   torchvision/prototype/datasets/_builtin/mnist.py) and several independent projects that
#   pin the same four values; they are the files whose MD5 sums the zalandoresearch README
#   publishes (train-images 8d4fb7e6c68d591d4c3dfef9ec88bf0d, ...). The GitHub copy under
#   data/fashion/ and the S3 copy are the same bytes.
# - MNIST: the same torchvision file (mirrors yann.lecun.com and ossci-datasets S3), matching
#   Bazel http_file pins and other projects for the yann.lecun.com, ossci-datasets and
#   CVDF (storage.googleapis.com/cvdf-datasets) copies, which are byte-identical.
# We could not download the files here (no network) to recompute them ourselves.
SOURCES: dict[str, ImageSource] = {
    "fashion-mnist": ImageSource(
        title="Fashion-MNIST",
        mirrors=(
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
            ),
            "train-labels-idx1-ubyte.gz": (
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
            ),
        },
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        torchvision_dir="FashionMNIST",
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        apt_package="dataset-fashion-mnist",
    ),
    "mnist": ImageSource(
        title="MNIST",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte.gz": (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
            ),
            "train-labels-idx1-ubyte.gz": (
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            ),
        },
        homepage="http://yann.lecun.com/exdb/mnist/",
        torchvision_dir="MNIST",
    ),
}


def default_data_dir() -> Path:
    """The folder used when no ``data_dir`` is given.

    Returns:
        ``$NEURALODE_DATA_DIR`` if set, else ``$XDG_CACHE_HOME/neuralode/datasets``, else
        ``~/.cache/neuralode/datasets``.
    """
    if env := os.environ.get("NEURALODE_DATA_DIR"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "neuralode" / "datasets"


def _check_choice(argument: str, value: str, choices: Mapping[str, object]) -> None:
    if value not in choices:
        raise ValueError(f"{argument} must be one of {sorted(choices)}, got {value!r}")


def _search_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    source = SOURCES[name]
    base = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    dirs = [base / name, base, base / source.torchvision_dir / "raw"]
    return dirs + [Path(d) for d in source.system_dirs]


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def find_image_files(
    name: str, split: str, data_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path] | None:
    """Find the image and label files of a split without reading them.

    Args:
        name: ``"fashion-mnist"`` or ``"mnist"``.
        split: ``"train"`` or ``"test"``.
        data_dir: Folder to search first; see the module docstring for the search order.

    Returns:
        ``(images_path, labels_path)`` from the first folder that holds both, else ``None``.
    """
    _check_choice("name", name, SOURCES)
    _check_choice("split", split, SPLITS)
    images_stem, labels_stem = SPLITS[split]
    for folder in _search_dirs(name, data_dir):
        images, labels = _find(folder, images_stem), _find(folder, labels_stem)
        if images is not None and labels is not None:
            return images, labels
    return None


def _how_to_get(name: str, split: str, data_dir: str | os.PathLike[str] | None) -> str:
    source = SOURCES[name]
    images_stem, labels_stem = SPLITS[split]
    searched = "\n".join(f"  {d}" for d in _search_dirs(name, data_dir))
    target = _search_dirs(name, data_dir)[0]
    ways = []
    if source.apt_package:
        where = f"; installs the files in {source.system_dirs[0]}/" if source.system_dirs else ""
        ways.append(f"  - sudo apt-get install {source.apt_package}   (Debian/Ubuntu{where})")
    ways.append(
        f"  - fetch the .gz files from {source.homepage} into a folder and pass "
        "data_dir=FOLDER (on the command line: --data-dir FOLDER)"
    )
    ways.append(
        f"  - pass download=True to download them into {target}/ from {source.mirrors[0]} "
        "(SHA-256 checked)"
    )
    return (
        f"{source.title} {split} split not found: looked for {images_stem}[.gz] and "
        f"{labels_stem}[.gz] in\n{searched}\nGet the files in one of these ways:\n"
        + "\n".join(ways)
    )


def _download(name: str, split: str, data_dir: str | os.PathLike[str] | None) -> tuple[Path, Path]:
    source = SOURCES[name]
    target = _search_dirs(name, data_dir)[0]
    paths = []
    for stem in SPLITS[split]:
        path = target / f"{stem}.gz"
        # One file of the pair may already be there from an interrupted earlier call; it was
        # verified before it was renamed into place, so it need not be fetched again.
        if not path.is_file():
            urls = [mirror + path.name for mirror in source.mirrors]
            download_verified(urls, path, source.sha256[path.name])
        paths.append(path)
    return paths[0], paths[1]


def load_images(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST or Fashion-MNIST.

    Args:
        name: ``"fashion-mnist"`` or ``"mnist"``.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        data_dir: Folder holding the standard IDX files (``train-images-idx3-ubyte.gz``,
            ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
            ``t10k-labels-idx1-ubyte.gz``; ``.gz`` or raw), directly or in a ``<name>/``
            subfolder. Defaults to :func:`default_data_dir`.
        download: If the files are found nowhere, download them (SHA-256 checked) into
            ``data_dir/<name>/``.

    Returns:
        ``(images, labels)``: uint8 ``(N, 28, 28)`` and int64 ``(N,)``. Use
        :func:`~neuralode.data.to_float` for network input.

    Raises:
        ValueError: For an unknown ``name`` or ``split``.
        FileNotFoundError: If the files are nowhere and ``download`` is false; the message
            says how to get them.
        DownloadError: If ``download`` is true and no mirror delivered the right bytes.
        IDXFormatError: If a file is corrupt or the labels are out of range.
    """
    found = find_image_files(name, split, data_dir)
    if found is None:
        if not download:
            raise FileNotFoundError(_how_to_get(name, split, data_dir))
        found = _download(name, split, data_dir)
    images, labels = read_idx_pair(*found)
    num_classes = SOURCES[name].num_classes
    # Labels come from uint8, so only the upper end can be wrong.
    if labels.numel() and int(labels.max()) >= num_classes:
        raise IDXFormatError(
            f"{found[1]}: labels must lie in [0, {num_classes}), found a {int(labels.max())}; "
            f"is this a {SOURCES[name].title} label file?"
        )
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
