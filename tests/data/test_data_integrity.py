"""Data that is not what it claims to be fails loudly: paths, pins, malformed files, sizes.

No network and no MNIST: the synthetic IDX files come from test_data's helpers, and the
tests on real Fashion-MNIST files skip when the Debian package is not installed.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import re
import shutil
import struct
import warnings
from pathlib import Path

import pytest
import test_data  # the helpers and the `isolated` fixture of the IDX tests
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_data import idx_bytes, write, write_split

from neuralode.data import (
    DownloadError,
    IDXChecksumError,
    IDXFormatError,
    IrregularSeries,
    default_data_dir,
    find_image_files,
    from_arrays,
    load_images,
    make_circles,
    make_moons,
    make_spirals,
    random_crop,
    read_idx,
    read_idx_images,
    read_idx_labels,
    read_idx_pair,
    sample_toy,
    stratified_subset,
    to_float,
    train_val_split,
)
from neuralode.data import images as images_module

isolated = test_data.isolated

REPO = Path(__file__).resolve().parents[2]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_debian_fashion = pytest.mark.skipif(
    not all((DEBIAN_FASHION / f"{s}.gz").is_file() for s in images_module.SPLITS["test"]),
    reason="needs the Debian package dataset-fashion-mnist",
)


def _with_system_copy(monkeypatch, folder: Path) -> None:
    """Pretend Fashion-MNIST's system package installed its files in ``folder``."""
    source = images_module.SOURCES["fashion-mnist"]
    replaced = dataclasses.replace(source, system_dirs=(str(folder),))
    monkeypatch.setitem(images_module.SOURCES, "fashion-mnist", replaced)


# 1. A folder the user names is the only one searched.


@pytest.mark.parametrize("exists", [False, True], ids=["missing", "empty"])
def test_named_data_dir_without_the_files_is_an_error_not_the_system_copy(
    isolated, monkeypatch, exists
):
    system = isolated / "system-fashion-mnist"
    write_split(system, "train")
    _with_system_copy(monkeypatch, system)
    typo = isolated / "fashoin-mnist"
    if exists:
        typo.mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_images("fashion-mnist", "train", data_dir=typo, verify=False)
    message = str(info.value)
    for needle in (
        str(typo),
        "does not exist" if not exists else "is empty",
        "check its spelling",
        "train-images-idx3-ubyte[.gz]",
        "train-labels-idx1-ubyte[.gz]",
        f"installed in {system}",
        f"--data-dir {system}",
    ):
        assert needle in message, f"{needle!r} missing from:\n{message}"
    assert "apt-get" not in message, "no advice to install what is installed"


def test_named_data_dir_with_other_files_lists_them(isolated):
    folder = isolated / "mine"
    folder.mkdir()
    (folder / "train-images.idx3-ubyte").write_bytes(b"")  # the other common spelling
    with pytest.raises(FileNotFoundError, match=r"holds 1 entries \(train-images.idx3-ubyte\)"):
        load_images("mnist", "train", data_dir=folder)


def test_data_dir_from_environment_is_named_too(isolated, monkeypatch):
    system = isolated / "system-fashion-mnist"
    write_split(system, "test")
    _with_system_copy(monkeypatch, system)
    monkeypatch.setenv("NEURALODE_DATA_DIR", str(isolated / "typo"))
    with pytest.raises(FileNotFoundError) as info:
        load_images("fashion-mnist", "test", verify=False)
    message = str(info.value)
    assert "$NEURALODE_DATA_DIR" in message and "unset $NEURALODE_DATA_DIR" in message
    assert str(isolated / "typo") in message and str(system) in message


@needs_debian_fashion
def test_mistyped_data_dir_does_not_load_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.delenv("NEURALODE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=re.escape(f"installed in {DEBIAN_FASHION}")):
        load_images("fashion-mnist", "test", data_dir=tmp_path / "fashoin")


def test_find_image_files_refuses_a_named_folder_without_the_files(isolated):
    # A caller that picks other data when the files are "not installed" (reproduce falls
    # back to the 8x8 digits) must not take a mistyped folder for "not installed".
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_image_files("fashion-mnist", "train", isolated / "typo")
    pytest.importorskip("sklearn")
    from neuralode.experiments.reproduce import ReproduceConfig, choose_images

    with pytest.raises(FileNotFoundError, match=re.escape(str(isolated / "typo"))):
        choose_images(ReproduceConfig(data_dir=isolated / "typo"))


def test_find_image_files_without_a_named_folder_may_find_nothing(isolated, monkeypatch):
    monkeypatch.delenv("NEURALODE_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "cache"))
    assert find_image_files("mnist", "train") is None


def test_download_into_a_folder_that_cannot_be_created(isolated):
    blocker = isolated / "file"
    blocker.write_bytes(b"")
    with pytest.raises(DownloadError, match="cannot create the folder .*--data-dir FOLDER"):
        load_images("mnist", "test", data_dir=blocker / "sub", download=True)


def test_bad_source_and_choice_values(isolated):
    source = images_module.SOURCES["mnist"]
    pins = dict(source.content_sha256)
    del pins["t10k-images-idx3-ubyte"]
    with pytest.raises(ValueError, match="content_sha256 has no digest for"):
        dataclasses.replace(source, content_sha256=pins)
    with pytest.raises(ValueError, match="name must be one of"):
        load_images(["mnist"], "test")  # type: ignore[arg-type]


def test_data_dir_must_be_a_nonempty_path(isolated):
    with pytest.raises(ValueError, match="data_dir is an empty path"):
        load_images("mnist", "test", data_dir="")
    with pytest.raises(TypeError, match="data_dir must be a folder path.*got int 3"):
        load_images("mnist", "test", data_dir=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="verify must be True or False"):
        load_images("mnist", "test", verify="no")  # type: ignore[arg-type]


# 2. One name for the data folder's environment variable: code, --help and docs agree.


def test_environment_variable_has_one_name(monkeypatch, tmp_path):
    monkeypatch.setenv("NEURALODE_DATA_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("NEURALODE_DATA", str(tmp_path / "b"))
    assert default_data_dir() == tmp_path / "a"
    # The old name, once documented by --help, still works but says it is deprecated.
    monkeypatch.delenv("NEURALODE_DATA_DIR")
    with pytest.warns(FutureWarning, match=r"\$NEURALODE_DATA is deprecated.*NEURALODE_DATA_DIR"):
        assert default_data_dir() == tmp_path / "b"
    monkeypatch.delenv("NEURALODE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert default_data_dir() == tmp_path / "xdg" / "neuralode" / "datasets"


def test_help_and_docs_name_the_variable_the_code_reads(capsys, monkeypatch):
    pytest.importorskip("tyro")
    from neuralode.experiments.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # no line breaks inside the names
    with pytest.raises(SystemExit):
        main(["train", "classify", "--help"])
    help_text = capsys.readouterr().out
    assert images_module.DATA_DIR_ENV == "NEURALODE_DATA_DIR"
    assert "$NEURALODE_DATA_DIR" in help_text and "--no-verify-data" in help_text
    assert "$NEURALODE_DATA_DIR" in (REPO / "docs" / "cli.md").read_text()
    # The old name may appear only where it is read for compatibility.
    files = [*REPO.glob("*.md"), *(REPO / "docs").rglob("*.md"), *(REPO / "src").rglob("*.py")]
    stale = [
        str(p.relative_to(REPO))
        for p in files
        if p != Path(images_module.__file__) and re.search(r"NEURALODE_DATA(?!_DIR)", p.read_text())
    ]
    assert not stale, f"these files name $NEURALODE_DATA, which is not read: {stale}"


# 3. Every file is checked against the pinned digest of the official file's content.


def _copy_test_split(folder: Path, *, gz: bool) -> tuple[Path, Path]:
    """The Debian package's test split in ``folder``: recompressed by Debian, or raw."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem in images_module.SPLITS["test"]:
        source = DEBIAN_FASHION / f"{stem}.gz"
        if gz:
            paths.append(Path(shutil.copy(source, folder / source.name)))
        else:
            paths.append(write(folder / stem, gzip.decompress(source.read_bytes()), gz=False))
    return paths[0], paths[1]


@needs_debian_fashion
@pytest.mark.parametrize("gz", [True, False], ids=["debian-gz", "raw"])
def test_faithful_copies_of_the_official_files_pass(tmp_path, gz):
    _copy_test_split(tmp_path, gz=gz)
    images, labels = load_images("fashion-mnist", "test", data_dir=tmp_path)
    assert images.shape == (10000, 28, 28) and torch.bincount(labels).tolist() == [1000] * 10


@needs_debian_fashion
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_labels_file_changed_by_one_byte_is_refused(tmp_path, gz):
    _, labels_path = _copy_test_split(tmp_path, gz=gz)
    payload = bytearray(
        gzip.decompress(labels_path.read_bytes()) if gz else labels_path.read_bytes()
    )
    payload[8] = (payload[8] + 1) % 10  # the first label, shifted by one class
    write(labels_path, bytes(payload), gz=gz)
    pinned = images_module.SOURCES["fashion-mnist"].content_sha256["t10k-labels-idx1-ubyte"]
    with pytest.raises(IDXChecksumError) as info:
        load_images("fashion-mnist", "test", data_dir=tmp_path)
    error, message = info.value, str(info.value)
    assert error.path == str(labels_path) and error.expected == pinned
    assert error.actual == hashlib.sha256(payload).hexdigest()
    for needle in (str(labels_path), pinned, error.actual, "verify=False", "--no-verify-data"):
        assert needle in message
    # On purpose, the same file loads, and the change is visible.
    _, labels = load_images("fashion-mnist", "test", data_dir=tmp_path, verify=False)
    assert int(labels[0]) == payload[8]


def test_synthetic_files_fail_verification_and_load_without_it(isolated):
    images, labels = write_split(isolated / "data", "test")
    with pytest.raises(IDXChecksumError, match="t10k-images-idx3-ubyte.gz: SHA-256") as info:
        load_images("mnist", "test", data_dir=isolated / "data")
    assert (
        info.value.expected
        == images_module.SOURCES["mnist"].content_sha256["t10k-images-idx3-ubyte"]
    )
    got_images, got_labels = load_images("mnist", "test", data_dir=isolated / "data", verify=False)
    assert torch.equal(got_images, images) and torch.equal(got_labels, labels)


def test_a_damaged_system_copy_says_reinstall(isolated, monkeypatch):
    monkeypatch.delenv("NEURALODE_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "cache"))
    system = isolated / "system-fashion-mnist"
    write_split(system, "test")
    _with_system_copy(monkeypatch, system)
    with pytest.raises(IDXChecksumError, match="apt-get install --reinstall dataset-fashion"):
        load_images("fashion-mnist", "test")


def test_a_file_already_in_the_download_folder_is_verified(isolated, monkeypatch):
    # An earlier (interrupted or tampered) download left files in the target folder; the
    # mirrors are unreachable, so nothing is fetched: the local files must be checked.
    write_split(isolated / "data" / "mnist", "train")
    gone = ((isolated / "gone").as_uri() + "/",)
    source = images_module.SOURCES["mnist"]
    monkeypatch.setitem(images_module.SOURCES, "mnist", dataclasses.replace(source, mirrors=gone))
    with pytest.raises(IDXChecksumError, match="download=True"):
        load_images("mnist", "train", data_dir=isolated / "data", download=True)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_read_idx_checks_the_content_digest(tmp_path, gz):
    payload = idx_bytes(torch.tensor([1, 2, 3], dtype=torch.uint8))
    path = write(tmp_path / "labels", payload, gz=gz)
    digest = hashlib.sha256(payload).hexdigest()
    assert read_idx_labels(path, sha256=digest.upper()).tolist() == [1, 2, 3]
    with pytest.raises(IDXChecksumError, match=f"expected {'0' * 64}") as info:
        read_idx_labels(path, sha256="0" * 64)
    assert info.value.actual == digest and str(path) in str(info.value)
    with pytest.raises(TypeError, match="sha256 must be a hex digest str"):
        read_idx(path, sha256=b"00")  # type: ignore[arg-type]


def test_cli_names_the_flag_for_own_data(isolated, capsys):
    pytest.importorskip("tyro")
    from neuralode.experiments.classify.task import ClassifyConfig, load_splits
    from neuralode.experiments.cli import main

    for split in ("train", "test"):
        write_split(isolated / "data", split, n=40)
    argv = ["train", "classify", "--dataset", "mnist", "--data-dir", str(isolated / "data")]
    assert main([*argv, "--out", str(isolated / "run")]) == 1
    assert "--no-verify-data" in capsys.readouterr().err
    config = ClassifyConfig(
        dataset="mnist",
        data_dir=isolated / "data",
        verify_data=False,
        train_size=None,
        val_size=10,
        out=isolated / "run2",
    )
    splits = load_splits(config)
    assert [len(splits[k][1]) for k in ("train", "val", "test")] == [30, 10, 40]


# 4. Malformed files: one typed error that names the file, never a numpy/struct/torch error.


def test_shape_too_large_for_a_tensor_is_a_format_error(tmp_path):
    # Zero images of an absurd size: no data to read, but torch cannot build the shape.
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 0, 2**32 - 1, 2**32 - 1)
    path = write(tmp_path / "f", header, gz=False)
    with pytest.raises(IDXFormatError, match="too large for any tensor") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_rejects_bad_arguments(tmp_path):
    path = write(tmp_path / "f", idx_bytes(torch.zeros(2, dtype=torch.uint8)), gz=False)
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        read_idx(0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ndim must be a positive int, got '1'"):
        read_idx(path, ndim="1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("images", "labels", "match"),
    [
        (torch.zeros(0, 28, 28), torch.zeros(0), "holds no images"),
        (torch.zeros(3, 0, 28), torch.zeros(3), "images are 0x28 pixels"),
        (torch.zeros(3, 28, 28), torch.zeros(2), "holds 3 images but .* holds 2 labels"),
        (torch.zeros(2, 28, 28), torch.tensor([0, 200]), r"labels must lie in \[0, 10\)"),
    ],
    ids=["no-images", "zero-rows", "count-mismatch", "label-range"],
)
def test_load_images_refuses_unusable_own_data(isolated, images, labels, match):
    folder = isolated / "data"
    folder.mkdir()
    write(folder / "t10k-images-idx3-ubyte.gz", idx_bytes(images.to(torch.uint8)), gz=True)
    write(folder / "t10k-labels-idx1-ubyte", idx_bytes(labels.to(torch.uint8)), gz=False)
    with pytest.raises(IDXFormatError, match=match) as info:
        load_images("mnist", "test", data_dir=folder, verify=False)
    assert str(folder) in str(info.value)


BASE = {
    "images": idx_bytes(torch.arange(60, dtype=torch.uint8).reshape(3, 4, 5)),
    "labels": idx_bytes(torch.tensor([0, 9, 4], dtype=torch.uint8)),
}
# Positions mostly in the 16-byte header, where corruption changes the meaning of the rest.
_position = st.one_of(st.integers(0, 20), st.integers(0, 200))
_edit = st.one_of(
    st.tuples(st.just("set"), _position, st.integers(0, 255)),
    st.tuples(st.just("insert"), _position, st.integers(0, 255)),
    st.tuples(st.just("delete"), _position, st.just(0)),
    st.tuples(st.just("cut"), _position, st.just(0)),
)


def _corrupt(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    b = bytearray(data)
    for op, position, value in edits:
        if op == "insert":
            b.insert(position % (len(b) + 1), value)
        elif op == "cut":
            del b[position % (len(b) + 1) :]
        elif b and op == "set":
            b[position % len(b)] = value
        elif b and op == "delete":
            del b[position % len(b)]
    return bytes(b)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _fuzz_one(folder: Path, kind: str, gz: str, edits: list[tuple[str, int, int]]) -> None:
    base = BASE[kind]
    if gz == "none":
        data = _corrupt(base, edits)
    elif gz == "payload":  # a valid gzip stream of a corrupt IDX file
        data = gzip.compress(_corrupt(base, edits), mtime=0)
    else:  # a corrupt gzip stream
        data = _corrupt(gzip.compress(base, mtime=0), edits)
    path = folder / kind
    path.write_bytes(data)
    pinned = hashlib.sha256(base).hexdigest()
    readers = {
        "read_idx": lambda: read_idx(path),
        "expected": lambda: (read_idx_images if kind == "images" else read_idx_labels)(path),
        "pinned": lambda: read_idx(path, sha256=pinned),
    }
    for name, reader in readers.items():
        try:
            out = reader()
        except IDXFormatError as error:
            assert str(path) in str(error), f"{name}: the message must name the file"
            continue
        assert isinstance(out, torch.Tensor)
        if name == "pinned":  # verified means the same content, never a silent change
            assert torch.equal(out, read_idx(write(folder / "base", base, gz=False)))
    good_labels = write(folder / "good-labels", BASE["labels"], gz=False)
    if kind == "images":
        try:
            read_idx_pair(path, good_labels)
        except IDXFormatError as error:
            assert str(path) in str(error)


_fuzz_args = {
    "kind": st.sampled_from(sorted(BASE)),
    "gz": st.sampled_from(["none", "payload", "stream"]),
    "edits": st.lists(_edit, min_size=1, max_size=4),
}
_fuzz_settings = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture],
}


@settings(max_examples=300, **_fuzz_settings)
@given(**_fuzz_args)
def test_fuzz_corrupt_idx_files_give_only_our_typed_error(fuzz_dir, kind, gz, edits):
    _fuzz_one(fuzz_dir, kind, gz, edits)


@pytest.mark.slow
@settings(max_examples=20_000, **_fuzz_settings)
@given(**_fuzz_args)
def test_fuzz_corrupt_idx_files_many(fuzz_dir, kind, gz, edits):
    _fuzz_one(fuzz_dir, kind, gz, edits)


# 5. Sizes and counts of the other data entry points: a ValueError/TypeError naming them.


@pytest.mark.parametrize("fn", [make_circles, make_moons], ids=["circles", "moons"])
@pytest.mark.parametrize("n", [-1, 0, 2.5, True])
def test_toy_makers_reject_bad_counts(fn, n):
    with pytest.raises((ValueError, TypeError), match=f"n must be a positive integer.*got {n!r}"):
        fn(n)


@pytest.mark.parametrize("argument", ["noise", "factor"])
@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "0.1"])
def test_circles_reject_bad_noise_and_factor(argument, value):
    with pytest.raises((ValueError, TypeError), match=f"{argument} must be"):
        make_circles(10, **{argument: value})


def test_sample_toy_rejects_bad_dtype_and_generator():
    with pytest.raises(
        TypeError, match="dtype must be a floating dtype such as torch.float32, got 'float32'"
    ):
        sample_toy("moons", 5, dtype="float32")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        sample_toy("moons", 5, generator=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_std": "a"}, "noise_std must be a finite number >= 0, got 'a'"),
        ({"noise_std": math.inf}, "noise_std must be a finite number >= 0, got inf"),
        ({"t_end": 0.0}, "t_end must be a finite number > 0, got 0.0"),
        ({"t_end": math.nan}, "t_end must be a finite number > 0, got nan"),
        ({"seed": "x"}, "seed must be an int, got str"),
        ({"seed": 1.5}, "seed must be an int, got float"),
        (
            {"dtype": torch.int64},
            "dtype must be a floating dtype such as torch.float32, got torch.int64",
        ),
    ],
)
def test_make_spirals_rejects_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=re.escape(match)):
        make_spirals(**{"n_spirals": 4, "n_observed": 10, "seed": 0, **kwargs})


@pytest.mark.parametrize("val_size", [-1, 11])
def test_train_val_split_names_val_size(val_size):
    with pytest.raises(ValueError, match=rf"val_size must lie in \[0, 10\].*got {val_size}"):
        train_val_split(torch.arange(10) % 2, val_size, seed=0)


def test_splits_reject_bad_labels_and_seed():
    with pytest.raises(TypeError, match="labels must be a torch.Tensor, got list"):
        stratified_subset([0, 1], 1, seed=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an int, got str"):
        stratified_subset(torch.arange(4), 2, seed="a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="seed must be an int, got float"):
        train_val_split(torch.arange(4), 2, seed=0.5)  # type: ignore[arg-type]


def test_transforms_reject_non_tensors():
    with pytest.raises(TypeError, match="images must be a torch.Tensor, got list"):
        to_float([1, 2])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="images must be a torch.Tensor, got list"):
        random_crop([1, 2])  # type: ignore[arg-type]


def test_irregular_series_entry_points_name_their_arguments():
    with pytest.raises(ValueError, match=r"values must have at least one point per series"):
        from_arrays(torch.zeros(2, 0), torch.zeros(2, 0, 1))
    series = make_spirals(4, 10, seed=0)
    with pytest.raises(TypeError, match="seed must be an int, got str"):
        series.split(1, seed="a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        list(series.batches(2.0))  # type: ignore[arg-type]
    assert isinstance(series[[0, 3]], IrregularSeries)
    with pytest.raises(TypeError, match="dtype must be a floating dtype.*got torch.int64"):
        series.to(dtype=torch.int64)
    with pytest.raises(TypeError, match="dtype must be a floating dtype.*got torch.int32"):
        from_arrays(torch.arange(3.0), torch.zeros(2, 3, 1), dtype=torch.int32)
