"""Reader for IDX files, the format of MNIST and Fashion-MNIST, with the stdlib and torch.

An IDX file (LeCun, Cortes & Burges, http://yann.lecun.com/exdb/mnist/) is a 4-byte magic
number ``0x00 0x00 <type code> <ndim>``, then ``ndim`` big-endian uint32 sizes, then the
values in C order, big-endian. MNIST images are ``0x00000803`` (uint8, 3-D: count, rows,
columns) and labels ``0x00000801`` (uint8, 1-D).

Files may be gzip-compressed or raw. We tell them apart by the gzip magic bytes ``1f 8b``,
not by the name: the upstream and Debian copies are ``.gz``, torchvision keeps raw copies,
and users rename files. numpy is not needed: ``torch.frombuffer`` reads the bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import sys
import zlib
from contextlib import ExitStack
from typing import TypeAlias

import torch

__all__ = [
    "IDXChecksumError",
    "IDXFormatError",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_idx_pair",
]

_GZIP_MAGIC = b"\x1f\x8b"

# IDX type codes, from the format description on the MNIST page.
_DTYPES: dict[int, torch.dtype] = {
    0x08: torch.uint8,
    0x09: torch.int8,
    0x0B: torch.int16,
    0x0C: torch.int32,
    0x0D: torch.float32,
    0x0E: torch.float64,
}

# torch computes strides in int64: a shape whose product (zero sizes taken as 1) reaches
# 2**63 cannot be built even when it holds no elements. Checked up front for a clear error.
_MAX_EXTENT = 2**62

# Read in slices so that a corrupt header promising terabytes fails as "truncated" once the
# stream ends, instead of allocating the promised size up front.
_CHUNK = 1 << 24

StrPath: TypeAlias = "str | os.PathLike[str]"


class IDXFormatError(ValueError):
    """An IDX file is malformed, truncated, or not the kind of array the caller expected."""


class IDXChecksumError(IDXFormatError):
    """An IDX file's content does not have the SHA-256 it was pinned to.

    Attributes:
        path: The file.
        expected: The pinned hex digest.
        actual: The hex digest of the file's decompressed IDX content.
    """

    def __init__(
        self,
        path: StrPath,
        expected: str,
        actual: str,
        advice: str = "the file is damaged or is not the file it was pinned to; get it again",
    ) -> None:
        self.path, self.expected, self.actual = os.fspath(path), expected, actual
        super().__init__(
            f"{self.path}: SHA-256 of its IDX content is {actual}, expected {expected}; " + advice
        )


def _describe(code: int) -> str:
    dtype = _DTYPES.get(code)
    return f"0x{code:02x} ({str(dtype).removeprefix('torch.')})" if dtype else f"0x{code:02x}"


def _read_exact(
    stream: io.BufferedIOBase, n: int, path: StrPath, what: str, digest: hashlib._Hash
) -> bytearray:
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(min(_CHUNK, n - len(buf)))
        if not chunk:
            raise IDXFormatError(
                f"{os.fspath(path)}: truncated: the header promises {n} bytes of {what} but "
                f"the file ends after {len(buf)}; download or copy the file again"
            )
        buf += chunk
        digest.update(chunk)
    return buf


def _to_tensor(buf: bytearray, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if len(buf) == 0:
        # torch.frombuffer refuses empty buffers; an empty array is still a valid file.
        return torch.empty(shape, dtype=dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if itemsize == 1:
        return torch.frombuffer(buf, dtype=dtype).reshape(shape)
    # IDX is big-endian: reverse the bytes of each element on little-endian hosts.
    raw = torch.frombuffer(buf, dtype=torch.uint8).view(-1, itemsize)
    if sys.byteorder == "little":
        raw = raw.flip(-1)
    return raw.contiguous().view(dtype).reshape(shape)


def _parse(
    stream: io.BufferedIOBase,
    path: StrPath,
    want_dtype: torch.dtype | None,
    want_ndim: int | None,
    digest: hashlib._Hash,
) -> torch.Tensor:
    name = os.fspath(path)
    magic = _read_exact(stream, 4, path, "magic number", digest)
    zero, code, ndim = struct.unpack(">HBB", magic)
    if zero != 0:
        raise IDXFormatError(
            f"{name}: not an IDX file: magic number 0x{magic.hex()} should start with two zero "
            "bytes (MNIST images are 0x00000803, labels 0x00000801)"
        )
    if code not in _DTYPES:
        known = ", ".join(_describe(c) for c in _DTYPES)
        raise IDXFormatError(
            f"{name}: unknown IDX type code 0x{code:02x} in magic number 0x{magic.hex()}; "
            f"valid codes are {known}"
        )
    if ndim == 0:
        raise IDXFormatError(f"{name}: IDX magic number 0x{magic.hex()} declares 0 dimensions")
    # Check expectations before reading the data, so that a wrong file fails fast and with
    # the relevant message rather than, say, "truncated".
    if want_dtype is not None and _DTYPES[code] != want_dtype:
        want = next(c for c, d in _DTYPES.items() if d == want_dtype)
        raise IDXFormatError(
            f"{name}: expected IDX type code {_describe(want)}, got {_describe(code)} "
            f"(magic number 0x{magic.hex()})"
        )
    if want_ndim is not None and ndim != want_ndim:
        raise IDXFormatError(
            f"{name}: expected a {want_ndim}-dimensional IDX array, got {ndim} dimensions "
            f"(magic number 0x{magic.hex()})"
        )
    sizes = _read_exact(stream, 4 * ndim, path, "sizes", digest)
    shape = list(struct.unpack(f">{ndim}I", sizes))
    dtype = _DTYPES[code]
    numel, extent = 1, 1
    for size in shape:
        numel *= size
        extent *= max(size, 1)
    if extent >= _MAX_EXTENT:
        raise IDXFormatError(
            f"{name}: the header's shape {tuple(shape)} is too large for any tensor; the "
            "header is corrupt"
        )
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    data = _read_exact(stream, nbytes, path, f"data for shape {tuple(shape)}", digest)
    if stream.read(1):
        raise IDXFormatError(
            f"{name}: has bytes after the {nbytes} data bytes its header promises for shape "
            f"{tuple(shape)}; the header or the file is corrupt"
        )
    return _to_tensor(data, dtype, shape)


def read_idx(
    path: StrPath,
    *,
    dtype: torch.dtype | None = None,
    ndim: int | None = None,
    sha256: str | None = None,
) -> torch.Tensor:
    """Read an IDX file, gzip-compressed or raw, into a tensor.

    Args:
        path: The file. Compression is detected from its first two bytes.
        dtype: If given, the dtype the file must hold (e.g. ``torch.uint8``).
        ndim: If given, the number of dimensions the file must hold.
        sha256: If given, the hex SHA-256 the file's IDX content must have: of the raw
            file, or of the decompressed stream of a ``.gz`` file, so that any gzip
            compression of the same array passes. The digest is computed while the file is
            parsed: the bytes checked are the bytes returned, read once.

    Returns:
        A tensor of the file's dtype and shape, in native byte order.

    Raises:
        IDXChecksumError: If ``sha256`` is given and the content's digest differs.
        IDXFormatError: On a bad magic number, an unknown or unexpected type code, an
            unexpected number of dimensions, a shape too large for a tensor, a truncated
            file, trailing bytes, or a corrupt gzip stream. The message names the file.
        FileNotFoundError: If the file does not exist.
        TypeError: If ``path``, ``dtype``, ``ndim`` or ``sha256`` has the wrong type.
    """
    # An int would be taken by open() as a file descriptor: refuse it rather than read fd 3.
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    if dtype is not None and dtype not in _DTYPES.values():
        valid = ", ".join(str(d) for d in _DTYPES.values())
        raise TypeError(f"dtype must be one of the IDX types {valid}, got {dtype}")
    if ndim is not None and (isinstance(ndim, bool) or not isinstance(ndim, int) or ndim < 1):
        raise TypeError(f"ndim must be a positive int, got {ndim!r}")
    if sha256 is not None and not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a hex digest str, got {type(sha256).__name__}")
    name = os.fspath(path)
    digest = hashlib.sha256()
    try:
        with ExitStack() as stack:
            raw: io.BufferedIOBase = stack.enter_context(open(path, "rb"))
            head = raw.read(2)
            raw.seek(0)
            stream: io.BufferedIOBase = raw
            if head == _GZIP_MAGIC:
                stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            array = _parse(stream, path, dtype, ndim, digest)
    except EOFError as exc:
        # gzip's own truncation error: the compressed stream stops before its end marker.
        raise IDXFormatError(
            f"{name}: truncated gzip stream ({exc}); download or copy the file again"
        ) from exc
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise IDXFormatError(f"{name}: corrupt gzip stream ({exc})") from exc
    if sha256 is not None and digest.hexdigest() != sha256.lower():
        raise IDXChecksumError(path, sha256.lower(), digest.hexdigest())
    return array


def read_idx_images(path: StrPath, *, sha256: str | None = None) -> torch.Tensor:
    """Read an IDX image file (type uint8, 3-D).

    Args:
        path: The file, gzip-compressed or raw.
        sha256: If given, the SHA-256 its IDX content must have (see :func:`read_idx`).

    Returns:
        uint8 images of shape ``(N, rows, columns)``: ``(N, 28, 28)`` for MNIST.

    Raises:
        IDXFormatError: If the file is not a valid 3-D uint8 IDX file (an
            :class:`IDXChecksumError` if its digest differs from ``sha256``).
    """
    return read_idx(path, dtype=torch.uint8, ndim=3, sha256=sha256)


def read_idx_labels(path: StrPath, *, sha256: str | None = None) -> torch.Tensor:
    """Read an IDX label file (type uint8, 1-D).

    Args:
        path: The file, gzip-compressed or raw.
        sha256: If given, the SHA-256 its IDX content must have (see :func:`read_idx`).

    Returns:
        int64 labels of shape ``(N,)``: int64 because that is what ``cross_entropy`` and
        indexing want.

    Raises:
        IDXFormatError: If the file is not a valid 1-D uint8 IDX file (an
            :class:`IDXChecksumError` if its digest differs from ``sha256``).
    """
    return read_idx(path, dtype=torch.uint8, ndim=1, sha256=sha256).long()


def read_idx_pair(
    images_path: StrPath,
    labels_path: StrPath,
    *,
    sha256: tuple[str | None, str | None] = (None, None),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read matching IDX image and label files.

    Args:
        images_path: The image file.
        labels_path: The label file.
        sha256: The SHA-256 each file's IDX content must have (``None``: unchecked).

    Returns:
        ``(images, labels)``: uint8 ``(N, rows, columns)`` and int64 ``(N,)``.

    Raises:
        IDXFormatError: If either file is invalid or their counts differ (an
            :class:`IDXChecksumError` if a digest differs).
    """
    images = read_idx_images(images_path, sha256=sha256[0])
    labels = read_idx_labels(labels_path, sha256=sha256[1])
    if images.shape[0] != labels.shape[0]:
        raise IDXFormatError(
            f"{os.fspath(images_path)} holds {images.shape[0]} images but "
            f"{os.fspath(labels_path)} holds {labels.shape[0]} labels; the two files do not "
            "belong together"
        )
    return images, labels
