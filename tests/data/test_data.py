"""Image data: IDX reader, dataset lookup and download, splits, augmentation.

Everything runs on tiny synthetic IDX files in tmp_path: no network, no Debian package
(one test additionally checks the real Fashion-MNIST files when the package is installed).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import re
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from neuralode.data import (
    DownloadError,
    IDXFormatError,
    load_digits,
    load_images,
    random_crop,
    read_idx,
    read_idx_images,
    read_idx_labels,
    read_idx_pair,
    stratified_subset,
    to_float,
    train_val_split,
)
from neuralode.data import images as images_module
from neuralode.data.splits import _apportion

CODES = {
    torch.uint8: (0x08, "B"),
    torch.int8: (0x09, "b"),
    torch.int16: (0x0B, "h"),
    torch.int32: (0x0C, "i"),
    torch.float32: (0x0D, "f"),
    torch.float64: (0x0E, "d"),
}


def idx_bytes(t: torch.Tensor, *, code: int | None = None, ndim: int | None = None) -> bytes:
    """Serialise ``t`` as IDX (big-endian), optionally lying about the type code or ndim."""
    true_code, fmt = CODES[t.dtype]
    header = struct.pack(">HBB", 0, true_code if code is None else code, ndim or t.dim())
    sizes = struct.pack(f">{t.dim()}I", *t.shape)
    data = struct.pack(f">{t.numel()}{fmt}", *t.flatten().tolist())
    return header + sizes + data


def write(path: Path, payload: bytes, *, gz: bool) -> Path:
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


def synthetic(n: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    return images, labels


def write_split(folder: Path, split: str, *, gz: bool = True, n: int = 20, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = synthetic(n, seed)
    stem_images, stem_labels = images_module.SPLITS[split]
    suffix = ".gz" if gz else ""
    write(folder / f"{stem_images}{suffix}", idx_bytes(images), gz=gz)
    write(folder / f"{stem_labels}{suffix}", idx_bytes(labels.to(torch.uint8)), gz=gz)
    return images, labels


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No default cache dir in $HOME and no system package dirs: lookups see tmp_path only."""
    monkeypatch.setenv("NEURALODE_DATA_DIR", str(tmp_path / "default"))
    for name, source in images_module.SOURCES.items():
        monkeypatch.setitem(
            images_module.SOURCES, name, dataclasses.replace(source, system_dirs=())
        )
    return tmp_path


# IDX reader


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_roundtrip_images_and_labels(tmp_path, gz):
    images, labels = synthetic()
    ip = write(tmp_path / "img", idx_bytes(images), gz=gz)
    lp = write(tmp_path / "lab", idx_bytes(labels.to(torch.uint8)), gz=gz)
    got_images, got_labels = read_idx_pair(ip, lp)
    assert got_images.dtype == torch.uint8 and got_images.shape == (20, 28, 28)
    assert got_labels.dtype == torch.int64 and got_labels.shape == (20,)
    assert torch.equal(got_images, images) and torch.equal(got_labels, labels)


def test_idx_compression_is_detected_from_content_not_name(tmp_path):
    labels = torch.tensor([3, 1, 4], dtype=torch.uint8)
    raw_named_gz = write(tmp_path / "labels.gz", idx_bytes(labels), gz=False)
    gz_named_raw = write(tmp_path / "labels", idx_bytes(labels), gz=True)
    assert torch.equal(read_idx_labels(raw_named_gz), labels.long())
    assert torch.equal(read_idx_labels(gz_named_raw), labels.long())


@pytest.mark.parametrize("dtype", list(CODES), ids=str)
def test_idx_all_types_big_endian(tmp_path, dtype):
    values = [[0, 1, 2], [200, 7, 5]] if dtype == torch.uint8 else [[0, 1, -2], [100, -7, 99]]
    t = torch.tensor(values, dtype=dtype)
    if dtype.is_floating_point:
        t = t + 0.25  # exercises the mantissa bytes too
    got = read_idx(write(tmp_path / "a.idx", idx_bytes(t), gz=True))
    assert got.dtype == dtype and torch.equal(got, t)


def test_idx_empty_array(tmp_path):
    got = read_idx_images(write(tmp_path / "e", idx_bytes(torch.empty(0, 28, 28).byte()), gz=False))
    assert got.shape == (0, 28, 28)


def _check_error(path: Path, fn, match: str) -> None:
    with pytest.raises(IDXFormatError, match=match) as info:
        fn(path)
    assert str(path) in str(info.value), "the message must name the file"


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_idx_bad_magic(tmp_path, gz):
    payload = b"\x1f\x00" + idx_bytes(synthetic()[0])[2:]  # not gzip, not IDX
    _check_error(write(tmp_path / "f", payload, gz=gz), read_idx_images, "not an IDX file")


def test_idx_unknown_type_code(tmp_path):
    path = write(tmp_path / "f", idx_bytes(synthetic()[0], code=0x0A), gz=True)
    _check_error(path, read_idx, "unknown IDX type code 0x0a")


def test_idx_wrong_type_code(tmp_path):
    path = write(tmp_path / "f", idx_bytes(torch.zeros(2, 28, 28, dtype=torch.int32)), gz=True)
    _check_error(path, read_idx_images, r"expected IDX type code 0x08 \(uint8\), got 0x0c")


def test_idx_wrong_number_of_dimensions(tmp_path):
    labels = write(tmp_path / "labels", idx_bytes(torch.zeros(5, dtype=torch.uint8)), gz=False)
    _check_error(labels, read_idx_images, "expected a 3-dimensional IDX array, got 1")
    images = write(tmp_path / "images", idx_bytes(synthetic()[0]), gz=True)
    _check_error(images, read_idx_labels, "expected a 1-dimensional IDX array, got 3")


@pytest.mark.parametrize("cut", [3, 10, 100], ids=["in-magic", "in-sizes", "in-data"])
def test_idx_truncated_raw(tmp_path, cut):
    payload = idx_bytes(synthetic()[0])
    _check_error(
        write(tmp_path / "f", payload[:-cut] if cut == 100 else payload[:cut], gz=False),
        read_idx_images,
        "truncated",
    )


def test_idx_truncated_payload_inside_valid_gzip(tmp_path):
    payload = idx_bytes(synthetic()[0])[:-1]  # header promises one byte more
    _check_error(write(tmp_path / "f", payload, gz=True), read_idx_images, "truncated")


def test_idx_truncated_gzip_stream(tmp_path):
    path = tmp_path / "f.gz"
    path.write_bytes(gzip.compress(idx_bytes(synthetic()[0]))[:-100])
    _check_error(path, read_idx_images, "truncated")


def test_idx_trailing_bytes(tmp_path):
    path = write(tmp_path / "f", idx_bytes(synthetic()[0]) + b"\x00", gz=True)
    _check_error(path, read_idx_images, "bytes after")


def test_idx_count_mismatch(tmp_path):
    ip = write(tmp_path / "img", idx_bytes(synthetic(20)[0]), gz=True)
    lp = write(tmp_path / "lab", idx_bytes(torch.zeros(19, dtype=torch.uint8)), gz=True)
    with pytest.raises(IDXFormatError, match="20 images but .* 19 labels") as info:
        read_idx_pair(ip, lp)
    assert str(ip) in str(info.value) and str(lp) in str(info.value)


# Dataset lookup


@pytest.mark.parametrize("subfolder", ["", "fashion-mnist", "FashionMNIST/raw"])
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_images_from_data_dir(isolated, subfolder, gz):
    images, labels = write_split(isolated / "data" / subfolder, "test", gz=gz)
    got_images, got_labels = load_images(
        "fashion-mnist", "test", data_dir=isolated / "data", verify=False
    )
    assert torch.equal(got_images, images) and torch.equal(got_labels, labels)


def test_load_images_prefers_the_named_subfolder(isolated):
    # MNIST and Fashion-MNIST share file names; <data_dir>/<name>/ must win over <data_dir>/.
    write_split(isolated / "data", "train", seed=1)
    images, _ = write_split(isolated / "data" / "mnist", "train", seed=2)
    got = load_images("mnist", "train", data_dir=isolated / "data", verify=False)[0]
    assert torch.equal(got, images)


def test_load_images_default_dir_from_environment(isolated):
    images, _ = write_split(isolated / "default" / "mnist", "train")
    assert torch.equal(load_images("mnist", "train", verify=False)[0], images)


def test_load_images_falls_back_to_system_package_dir(isolated, monkeypatch):
    # Only when no folder is named: neither data_dir nor $NEURALODE_DATA_DIR.
    monkeypatch.delenv("NEURALODE_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "empty-cache"))
    system = isolated / "usr-share-datasets-fashion-mnist"
    images, _ = write_split(system, "train")
    source = images_module.SOURCES["fashion-mnist"]
    monkeypatch.setitem(
        images_module.SOURCES,
        "fashion-mnist",
        dataclasses.replace(source, system_dirs=(str(system),)),
    )
    got, _ = load_images("fashion-mnist", "train", verify=False)
    assert torch.equal(got, images)


def test_load_images_not_found_says_how_to_get_the_files(isolated):
    with pytest.raises(FileNotFoundError) as info:
        load_images("fashion-mnist", "train", data_dir=isolated / "nowhere")
    message = str(info.value)
    for needle in (
        "apt-get install dataset-fashion-mnist",
        "--data-dir",
        "download=True",
        "train-images-idx3-ubyte",
        str(isolated / "nowhere"),
    ):
        assert needle in message
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        load_images("mnist", "test", data_dir=isolated / "nowhere")
    assert "apt-get" not in str(info.value)


def test_load_images_one_file_missing_is_not_found(isolated):
    write_split(isolated / "data", "train")
    (isolated / "data" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError):
        load_images("mnist", "train", data_dir=isolated / "data")


def test_load_images_rejects_bad_arguments(isolated):
    with pytest.raises(ValueError, match="name must be one of"):
        load_images("cifar10", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_images("mnist", "validation")


def test_load_images_rejects_out_of_range_labels(isolated):
    folder = isolated / "data"
    write_split(folder, "test")
    write(
        folder / "t10k-labels-idx1-ubyte.gz",
        idx_bytes(torch.full((20,), 10, dtype=torch.uint8)),
        gz=True,
    )
    with pytest.raises(IDXFormatError, match=r"labels must lie in \[0, 10\)"):
        load_images("mnist", "test", data_dir=folder, verify=False)


# Download (file:// mirrors; no network)


def _mirror(tmp_path: Path, split: str = "train") -> tuple[Path, dict[str, str]]:
    mirror = tmp_path / "mirror"
    write_split(mirror, split)
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in mirror.iterdir()}
    return mirror, sums


def _use_source(monkeypatch, name, mirrors, sums):
    # The mirror's files are synthetic: pin their content too, so loads verify them.
    source = images_module.SOURCES[name]
    mirror = Path(mirrors[-1].removeprefix("file://"))
    content = {
        p.name.removesuffix(".gz"): hashlib.sha256(gzip.decompress(p.read_bytes())).hexdigest()
        for p in mirror.glob("*.gz")
    }
    pins = {**source.content_sha256, **content}
    sums = {**source.sha256, **sums}
    replaced = dataclasses.replace(source, mirrors=mirrors, sha256=sums, content_sha256=pins)
    monkeypatch.setitem(images_module.SOURCES, name, replaced)


def test_download_with_correct_checksum(isolated, monkeypatch):
    mirror, sums = _mirror(isolated)
    missing = (isolated / "no-such-mirror").as_uri() + "/"
    _use_source(monkeypatch, "mnist", (missing, mirror.as_uri() + "/"), sums)
    images, labels = load_images("mnist", "train", data_dir=isolated / "data", download=True)
    assert torch.equal(images, synthetic()[0]) and torch.equal(labels, synthetic()[1])
    assert sorted(p.name for p in (isolated / "data" / "mnist").iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    # A second call finds the files and does not download again.
    _use_source(monkeypatch, "mnist", (missing,), sums)
    assert torch.equal(load_images("mnist", "train", data_dir=isolated / "data")[0], images)


def test_download_with_wrong_checksum_leaves_nothing(isolated, monkeypatch):
    mirror, sums = _mirror(isolated)
    sums["train-images-idx3-ubyte.gz"] = "0" * 64
    _use_source(monkeypatch, "fashion-mnist", (mirror.as_uri() + "/",), sums)
    with pytest.raises(DownloadError, match="SHA-256 mismatch: expected 0000") as info:
        load_images("fashion-mnist", "train", data_dir=isolated / "data", download=True)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    target = isolated / "data" / "fashion-mnist"
    assert not any(target.iterdir()), "no partial or unverified file may remain"


def test_download_without_network_explains_every_mirror(isolated, monkeypatch):
    urls = tuple((isolated / f"gone{i}").as_uri() + "/" for i in range(2))
    _use_source(monkeypatch, "mnist", urls, images_module.SOURCES["mnist"].sha256)
    with pytest.raises(DownloadError) as info:
        load_images("mnist", "test", data_dir=isolated / "data", download=True)
    message = str(info.value)
    assert all(url in message for url in urls) and "t10k-images-idx3-ubyte.gz" in message
    assert not (isolated / "data" / "mnist").exists() or not any(
        (isolated / "data" / "mnist").iterdir()
    )


def test_canonical_sources_are_well_formed():
    for source in images_module.SOURCES.values():
        stems = {s for pair in images_module.SPLITS.values() for s in pair}
        assert set(source.sha256) == {f"{s}.gz" for s in stems}
        assert set(source.content_sha256) == stems
        digests = [*source.sha256.values(), *source.content_sha256.values()]
        assert all(re.fullmatch("[0-9a-f]{64}", h) for h in digests)
        assert all(m.endswith("/") for m in source.mirrors)


# Splits


@given(st.lists(st.integers(1, 50), min_size=1, max_size=12), st.data())
def test_apportion_is_exact_and_proportional(counts, data):
    size = data.draw(st.integers(0, sum(counts)))
    take = _apportion(counts, size)
    assert sum(take) == size
    for n, k in zip(counts, take, strict=True):
        assert 0 <= k <= n and abs(k - size * n / sum(counts)) < 1


def test_stratified_subset_counts_and_determinism():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100)]
    idx = stratified_subset(labels, 10, seed=3)
    assert torch.equal(torch.bincount(labels[idx]), torch.tensor([5, 3, 2]))
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.unique())  # sorted, distinct
    assert torch.equal(idx, stratified_subset(labels, 10, seed=3))
    assert not torch.equal(idx, stratified_subset(labels, 10, seed=4))
    # Leftover seats go to the largest remainders: shares 3.5, 3.5, 3 -> 4, 3, 3.
    labels = torch.tensor([0] * 7 + [1] * 7 + [2] * 6)
    assert torch.bincount(labels[stratified_subset(labels, 10, seed=0)]).tolist() == [4, 3, 3]


def test_stratified_subset_balanced_and_arbitrary_label_values():
    labels = torch.tensor([-1, 7, 42]).repeat(40)
    idx = stratified_subset(labels, 31, seed=0)
    counts = torch.unique(labels[idx], return_counts=True)[1]
    assert counts.sum() == 31 and counts.max() - counts.min() <= 1
    assert stratified_subset(labels, 120, seed=5).tolist() == list(range(120))


def test_stratified_subset_rejects_bad_input():
    with pytest.raises(ValueError, match="size must lie in"):
        stratified_subset(torch.zeros(5, dtype=torch.long), 6, seed=0)
    with pytest.raises(TypeError, match="integer tensor"):
        stratified_subset(torch.zeros(5), 2, seed=0)
    with pytest.raises(ValueError, match="1-D"):
        stratified_subset(torch.zeros(5, 2, dtype=torch.long), 2, seed=0)


@pytest.mark.parametrize("val_size", [25, 0.25])
def test_train_val_split_disjoint_and_stratified(val_size):
    labels = torch.arange(100) % 4
    train, val = train_val_split(labels, val_size, seed=0)
    assert len(val) == 25 and len(train) == 75
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(100))
    assert torch.bincount(labels[val]).tolist() == [7, 6, 6, 6]
    again = train_val_split(labels, val_size, seed=0)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)


def test_train_val_split_rejects_bad_fraction():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        train_val_split(torch.zeros(10, dtype=torch.long), 1.5, seed=0)


# Transforms


def test_to_float():
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    x = to_float(images)
    assert x.shape == (1, 1, 2, 2) and x.dtype == torch.float32
    assert torch.allclose(x.flatten(), torch.tensor([0.0, 1.0, 0.2, 0.4]))
    assert to_float(images.unsqueeze(1)).shape == (1, 1, 2, 2)
    with pytest.raises(TypeError, match="uint8"):
        to_float(x)


def _is_crop_of_padded(out: torch.Tensor, img: torch.Tensor, p: int) -> tuple[int, int] | None:
    padded = torch.nn.functional.pad(img, (p, p, p, p))
    h, w = img.shape[-2:]
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            if torch.equal(padded[..., dy : dy + h, dx : dx + w], out):
                return dy, dx
    return None


@pytest.mark.parametrize("shape", [(16, 28, 28), (16, 3, 10, 12)])
def test_random_crop_is_a_shifted_crop(shape):
    images = torch.randint(1, 256, shape, dtype=torch.uint8)  # no zeros: shifts are visible
    out = random_crop(images, padding=4, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    offsets = [_is_crop_of_padded(o, i, 4) for o, i in zip(out, images, strict=True)]
    assert all(o is not None for o in offsets), "each output is a crop of its padded image"
    assert sum(o != (4, 4) for o in offsets) >= 12, "content actually moves"
    assert len(set(offsets)) > 4, "offsets differ between images"


def test_random_crop_deterministic_with_generator_and_float_grad():
    x = torch.rand(8, 1, 28, 28, requires_grad=True)
    a = random_crop(x, generator=torch.Generator().manual_seed(7))
    b = random_crop(x, generator=torch.Generator().manual_seed(7))
    c = random_crop(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_random_crop_without_padding_is_identity():
    x = torch.rand(4, 1, 5, 5)
    assert torch.equal(random_crop(x, padding=0), x)
    with pytest.raises(ValueError, match="padding"):
        random_crop(x, padding=-1)


# 8x8 digits and the real Fashion-MNIST files


def test_load_digits():
    pytest.importorskip("sklearn")
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert images.min() == 0 and images.max() == 1
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))


def test_load_digits_without_sklearn_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name.startswith("sklearn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    with pytest.raises(ImportError, match=r"pip install 'neuralode\[data\]'"):
        load_digits()


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs the Debian package dataset-fashion-mnist",
)
def test_real_fashion_mnist_from_debian_package(monkeypatch, tmp_path):
    monkeypatch.delenv("NEURALODE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    images, labels = load_images("fashion-mnist", "train")
    assert images.shape == (60000, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [6000] * 10
    # Debian recompresses the .gz files, but the IDX payload must be upstream's: the SHA-256
    # of the decompressed upstream train-images-idx3-ubyte is pinned by several projects.
    with gzip.open(DEBIAN_FASHION / "train-images-idx3-ubyte.gz") as f:
        payload_sha256 = hashlib.sha256(f.read()).hexdigest()
    assert payload_sha256 == "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
