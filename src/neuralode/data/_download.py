"""Atomic, checksum-verified downloads with urllib (no requests, no torchvision)."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DownloadError", "download_verified"]

_log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(OSError):
    """No mirror delivered a file with the expected SHA-256."""


def _fetch_one(url: str, dest: Path, sha256: str, timeout: float) -> None:
    # The temp file sits in the destination folder so that os.replace is a same-filesystem
    # rename: readers see either no file or the whole verified file, never a partial one.
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != sha256.lower():
            raise DownloadError(f"SHA-256 mismatch: expected {sha256}, got {got}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def download_verified(
    urls: Sequence[str], dest: str | os.PathLike[str], sha256: str, *, timeout: float = 60.0
) -> Path:
    """Download a file from the first mirror that delivers the expected bytes.

    The file is written to a temporary file beside ``dest``, its SHA-256 is checked, and
    only then is it renamed to ``dest``; on any failure nothing is left behind.

    Args:
        urls: Mirrors, tried in order (any scheme urllib opens, ``file://`` included).
        dest: Where the file goes; missing parent folders are created.
        sha256: Expected hex digest of the file.
        timeout: Seconds to wait on each connection.

    Returns:
        ``dest`` as a ``Path``.

    Raises:
        DownloadError: If no mirror delivered the expected bytes (the message lists what
            went wrong with each), or the destination folder cannot be created.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"cannot create the folder {dest.parent} for {dest.name} ({exc.strerror}); "
            "download into a folder you can write to (data_dir=FOLDER, on the command line "
            "--data-dir FOLDER)"
        ) from exc
    failures = []
    for url in urls:
        _log.info("downloading %s to %s", url, dest)
        try:
            _fetch_one(url, dest, sha256, timeout)
        except OSError as exc:  # urllib's URLError and HTTPError are OSErrors too
            failures.append(f"  {url}: {exc}")
            continue
        return dest
    raise DownloadError(
        f"could not download {dest.name} (expected SHA-256 {sha256}):\n" + "\n".join(failures)
    )
