"""The image data sets we know: file names, mirrors and pinned SHA-256 digests."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SOURCES", "SPLITS", "ImageSource"]

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
        sha256: Hex SHA-256 of each upstream ``.gz`` file, keyed by its file name: checks
            downloads.
        content_sha256: Hex SHA-256 of each file's IDX content (the decompressed file),
            keyed by the name without ``.gz``: checks every file that is loaded.
        homepage: Where a person can read about and fetch the files by hand.
        torchvision_dir: Folder name torchvision uses under its root (files in ``raw/``).
        system_dirs: Folders a system package installs the files into.
        apt_package: The Debian/Ubuntu package that provides them, if any.
        num_classes: Labels must lie in ``[0, num_classes)``.
    """

    title: str
    mirrors: tuple[str, ...]
    sha256: dict[str, str]
    content_sha256: dict[str, str]
    homepage: str
    torchvision_dir: str
    system_dirs: tuple[str, ...] = ()
    apt_package: str | None = None
    num_classes: int = 10

    def __post_init__(self) -> None:
        # A missing pin would surface as a KeyError deep in load_images; say it here.
        stems = {stem for pair in SPLITS.values() for stem in pair}
        for field, want in (("sha256", {f"{s}.gz" for s in stems}), ("content_sha256", stems)):
            missing = sorted(want - set(getattr(self, field)))
            if missing:
                raise ValueError(f"ImageSource {self.title!r}: {field} has no digest for {missing}")


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
# Digests of the decompressed IDX content: Fashion-MNIST's we computed from the Debian
# package's files, whose payloads it keeps unchanged, and they equal the values several
# independent projects pin for the upstream files; MNIST's are the values that many
# independent projects pin for the decompressed yann.lecun.com / CVDF files (the same
# projects pin the .gz digests above next to them).
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
        content_sha256={
            "train-images-idx3-ubyte": (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
            ),
            "train-labels-idx1-ubyte": (
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
            ),
            "t10k-images-idx3-ubyte": (
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
            ),
            "t10k-labels-idx1-ubyte": (
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
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
        content_sha256={
            "train-images-idx3-ubyte": (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
            ),
            "train-labels-idx1-ubyte": (
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
            ),
            "t10k-images-idx3-ubyte": (
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
            ),
            "t10k-labels-idx1-ubyte": (
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
            ),
        },
        homepage="http://yann.lecun.com/exdb/mnist/",
        torchvision_dir="MNIST",
    ),
}
