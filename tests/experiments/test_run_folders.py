"""Run folders are data, never code: planted pickles, damaged files, full disks, two writers.

Run folders are shared between machines (``reproduce --out``), so every file read back is
untrusted: a pickle must never run, and any damage must give one clear error that names
the file (a ``RunFolderError``, printed without a traceback), never a raw one.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("tyro")
pytest.importorskip("sklearn")

from cli_helpers import TINY_CLASSIFY  # noqa: E402
from test_reproduce import tiny  # noqa: E402, F401 (the fixture)

from neuralode.experiments import reproduce as reproduce_module  # noqa: E402
from neuralode.experiments._run import files, training  # noqa: E402
from neuralode.experiments._run.protocol import Context  # noqa: E402
from neuralode.experiments._run.runs import RunDir, RunFolderError  # noqa: E402
from neuralode.experiments.classify import evaluate as evaluate_classify  # noqa: E402
from neuralode.experiments.classify.evaluate import EvaluateClassifyConfig  # noqa: E402
from neuralode.experiments.classify.task import ClassifyConfig, ClassifyTask  # noqa: E402
from neuralode.experiments.cli import main  # noqa: E402
from neuralode.experiments.cnf import protocol as p5  # noqa: E402
from neuralode.experiments.latent import protocol as p4  # noqa: E402
from neuralode.experiments.memory import protocol as p2  # noqa: E402
from neuralode.experiments.registry import PLANNERS  # noqa: E402
from neuralode.experiments.reproduce import ReproduceConfig  # noqa: E402

TINY = [*TINY_CLASSIFY, "--model", "odenet", "--tol", "1e-1", "--epochs", "1"]
TINY_CONFIG = dict(
    dataset="digits", train_size=64, val_size=64, batch_size=32, eval_batch_size=128, width=8,
    progress=False, threads=1, model="odenet", tol=1e-1, epochs=1,
)  # fmt: skip
# A second process that holds a run folder's lock until its stdin closes.
LOCK_HOLDER = (
    "import sys; from neuralode.experiments._run.runs import RunDir; RunDir(sys.argv[1]).lock(); "
    "print('locked', flush=True); sys.stdin.read()"
)
SRC = str(Path(__file__).parents[2] / "src")
EVALUATE = ["--images", "20", "--tolerances", "1e-1", "--backward-batches", "1", "--no-progress"]


def _train(out: Path, *extra: str) -> int:
    return main(["train", "classify", *TINY, "--out", str(out), *extra])


def _evaluate(run: Path, *extra: str) -> int:
    return main(["evaluate", "classify", str(run), *EVALUATE, *extra])


def _reproduce(out: Path, *extra: str) -> int:
    return main(
        [
            "reproduce",
            "--out",
            str(out),
            "--no-progress",
            "--threads",
            "1",
            "--parallel",
            "1",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch ODE-Net run on the digits (trained once per module)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert _train(run) == 0
    return run


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    """A private copy of the finished run, to damage."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


class Planted:
    """Unpickling this creates ``marker``: the proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path, plain: bool = False) -> None:
    """A checkpoint that runs code when unpickled: torch.save's zip format, or a bare pickle."""
    state = {"model": Planted(marker), "epoch": 1}
    if plain:
        path.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, path)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed (reproduce reports a failed run on stdout)."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return " ".join((captured.out + captured.err).split())


def test_the_planted_pickle_runs_code_when_unpickled_unsafely(tmp_path):
    # The control: the files planted below would create the marker if unpickled.
    marker = tmp_path / "pwned"
    _plant(tmp_path / "checkpoint.pt", marker)
    torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("plain", [False, True], ids=["torch-zip", "bare-pickle"])
def test_planted_best_pt_does_not_run_on_evaluate(run, tmp_path, capsys, plain):
    marker = tmp_path / "pwned"
    _plant(run / "best.pt", marker, plain)
    assert _evaluate(run) == 1
    assert not marker.exists()
    err = _error(capsys)
    assert f"{run / 'best.pt'} holds objects other than tensors" in err
    assert "it was not loaded" in err


def test_planted_checkpoint_does_not_run_on_resume(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    _plant(run / "checkpoint.pt", marker)
    assert _train(run, "--resume") == 1
    assert not marker.exists()
    assert f"{run / 'checkpoint.pt'} holds objects other than tensors" in _error(capsys)


def test_planted_best_pt_does_not_run_at_the_end_of_a_resumed_run(run, tmp_path, capsys):
    # The checkpoint is at the last epoch: --resume goes straight to reloading best.pt.
    marker = tmp_path / "pwned"
    _plant(run / "best.pt", marker)
    assert _train(run, "--resume") == 1
    assert not marker.exists()
    assert f"{run / 'best.pt'} holds objects other than tensors" in _error(capsys)


@pytest.mark.usefixtures("tiny")
def test_planted_pickles_do_not_run_in_a_shared_reproduce_folder(tmp_path, capsys):
    shared, marker = tmp_path / "shared", tmp_path / "pwned"
    assert _reproduce(shared, "--only", "p1", "--runs", "odenet-w8") == 0
    folder = shared / "p1" / "odenet-w8"
    # best.pt, read by P3's sweep on a finished run.
    _plant(folder / "best.pt", marker)
    assert _reproduce(shared, "--only", "p3") == 1
    assert f"{folder / 'best.pt'} holds objects other than tensors" in _error(capsys)
    # checkpoint.pt, read when an unfinished run is resumed.
    (folder / "summary.json").unlink()
    _plant(folder / "checkpoint.pt", marker, plain=True)
    assert _reproduce(shared, "--only", "p1", "--runs", "odenet-w8") == 1
    assert f"{folder / 'checkpoint.pt'} holds objects other than tensors" in _error(capsys)
    assert not marker.exists()


def _other_model(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["model"] = {"weight": torch.zeros(3, 3)}
    torch.save(state, path)


def _text_lr(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["optimizer"]["param_groups"][0]["lr"] = "fast"
    torch.save(state, path)


def _wrong_adam_state(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    for entry in state["optimizer"]["state"].values():
        entry["exp_avg"] = torch.zeros(2)
    torch.save(state, path)


def _history_gap(path: Path) -> None:
    state = torch.load(path, weights_only=True)
    state["history"] = [{**state["history"][0], "epoch": 5}]
    torch.save(state, path)


DAMAGES = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage": lambda p: p.write_bytes(b"not a checkpoint"),
    "directory": lambda p: (p.unlink(), p.mkdir()),
    "fifo": lambda p: (p.unlink(), os.mkfifo(p)),  # would block torch.load forever
    "list": lambda p: torch.save([1, 2], p),
    "other-model": _other_model,
}
RESUME_ONLY = {
    "text-lr": _text_lr,
    "adam-state-shape": _wrong_adam_state,
    "history-gap": _history_gap,
    "missing-keys": lambda p: torch.save({"model": {}}, p),
}


@pytest.mark.parametrize("damage", [*DAMAGES, *RESUME_ONLY])
def test_damaged_checkpoint_on_resume_names_the_file(run, capsys, damage):
    DAMAGES.get(damage, RESUME_ONLY.get(damage))(run / "checkpoint.pt")  # type: ignore[misc]
    (run / "summary.json").unlink()
    assert _train(run, "--resume") == 1
    err = _error(capsys)
    assert f"neuralode: error: {run / 'checkpoint.pt'}" in err
    assert "--resume" in err or "another --out" in err


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_best_pt_on_evaluate_names_the_file(run, capsys, damage):
    DAMAGES[damage](run / "best.pt")
    assert _evaluate(run) == 1
    assert f"neuralode: error: {run / 'best.pt'}" in _error(capsys)


_DROP = object()  # a key to delete


def _edit_config(run: Path, **changes: object) -> None:
    saved = json.loads((run / "config.json").read_text())
    saved.update(changes)
    for key in [k for k, v in changes.items() if v is _DROP]:
        del saved[key]
    (run / "config.json").write_text(json.dumps(saved))


CONFIGS = {
    "corrupt": "{not json",
    "list": "[1, 2, 3]",
    "empty": "",
    "wrong-type": {"width": "eight"},
    "bad-value": {"width": -3},
    "bad-choice": {"model": "transformer"},
    "missing-key": {"width": _DROP},
}
CONFIG_MESSAGES = {
    "corrupt": "is not readable JSON",
    "list": "the top level should be a JSON object, got [1, 2, 3]",
    "empty": "is not readable JSON",
    "wrong-type": "['width'] should be an integer, got 'eight'",
    "bad-value": "holds settings no run can have: --width must be > 0, got -3",
    "bad-choice": "['model'] should be one of 'odenet', 'resnet', 'rknet', 'mlp'",
    "missing-key": "the top level has no 'width' entry",
}


def _damage_config(run: Path, content: str) -> None:
    change = CONFIGS[content]
    if isinstance(change, str):
        (run / "config.json").write_text(change)
    else:
        _edit_config(run, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize("content", list(CONFIGS))
def test_damaged_config_on_evaluate_names_the_file(run, capsys, content):
    _damage_config(run, content)
    assert _evaluate(run) == 1
    err = _error(capsys)
    assert f"neuralode: error: {run / 'config.json'}" in err
    assert CONFIG_MESSAGES[content] in err


def test_a_wrong_config_value_says_what_the_field_takes(run, capsys):
    _edit_config(run, train_size="all")
    assert _evaluate(run) == 1
    err = _error(capsys)
    assert "['train_size'] should be an integer or null, got 'all'" in err
    assert "train the run again" in err


def test_resume_of_a_finished_run_rewrites_metrics_csv(run):
    original = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text("epoch\n99\n")
    assert _train(run, "--resume") == 0
    assert (run / "metrics.csv").read_text() == original


@pytest.mark.parametrize("content", ["corrupt", "list", "empty"])
def test_damaged_config_on_resume_names_the_file(run, capsys, content):
    (run / "config.json").write_text(CONFIGS[content])
    assert _train(run, "--resume") == 1
    assert f"neuralode: error: {run / 'config.json'}" in _error(capsys)


def test_evaluate_takes_no_path_from_config_json(run, monkeypatch):
    _edit_config(run, data_dir="/etc")
    seen = []
    load = evaluate_classify.load_splits

    def spy(config):
        seen.append(config.data_dir)
        return load(config)

    monkeypatch.setattr(evaluate_classify, "load_splits", spy)
    assert _evaluate(run) == 0
    assert seen == [None]


@pytest.mark.parametrize(
    "content", ["", "{", "[]", '{"history": []}', '{"history": [1]}', '{"history": "x"}']
)
def test_damaged_summary_on_evaluate_names_the_file(run, capsys, content):
    (run / "summary.json").write_text(content)
    assert _evaluate(run) == 1
    err = _error(capsys)
    assert f"neuralode: error: {run / 'summary.json'}" in err
    assert "continue the run with --resume" in err


def test_evaluate_on_a_folder_that_is_not_a_run_says_so(tmp_path, capsys):
    assert _evaluate(tmp_path) == 1
    assert f"{tmp_path} is not a run folder (no config.json)" in _error(capsys)
    assert _evaluate(tmp_path / "nowhere") == 1
    assert "does not exist" in _error(capsys)


def test_evaluate_on_an_unfinished_run_says_resume(run, capsys):
    (run / "summary.json").unlink()
    assert _evaluate(run) == 1
    assert "the run has not finished; continue it with --resume" in _error(capsys)


@pytest.mark.parametrize(
    "content",
    ["", "[]", '{"history": []}', '{"history": [{}]}', '{"parameters": 0}', "{"],
)
@pytest.mark.usefixtures("tiny")
def test_report_only_with_a_malformed_summary_names_the_file(tmp_path, capsys, content):
    shared = tmp_path / "shared"
    folder = shared / "p1" / "odenet-w8"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(content)
    assert _reproduce(shared, "--only", "p1", "--report-only") == 1
    assert f"neuralode: error: {folder / 'summary.json'}" in _error(capsys)


@pytest.mark.usefixtures("tiny")
def test_report_only_with_a_malformed_wall_times_names_the_file(tmp_path, capsys):
    (tmp_path / "wall_times.json").write_text('{"p1/x": "slow"}')
    assert _reproduce(tmp_path, "--only", "p1", "--report-only") == 1
    assert f"{tmp_path / 'wall_times.json'}: the top level should be an object of numbers" in (
        _error(capsys)
    )


@pytest.mark.parametrize(
    ("code", "advice"),
    [(errno.EROFS, "make the folder writable"), (errno.ENOSPC, "free some space")],
)
def test_a_failed_write_is_clear_and_keeps_the_checkpoint(
    tmp_path, monkeypatch, capsys, code, advice
):
    run = tmp_path / "run"
    fsync, report = os.fsync, training._report_epoch
    broken = []

    def failing(fd):
        if broken:
            raise OSError(code, os.strerror(code))
        fsync(fd)

    def report_then_break(row, epochs):  # after epoch 1's checkpoint: the disk fails
        report(row, epochs)
        broken.append(True)

    monkeypatch.setattr(os, "fsync", failing)  # the temporary file exists by then
    monkeypatch.setattr(training, "_report_epoch", report_then_break)
    assert _train(run, "--epochs", "2") == 1
    err = _error(capsys)
    assert f"cannot write {run}" in err and os.strerror(code) in err
    assert advice in err and "the last checkpoint is intact" in err
    assert RunDir(run).load_checkpoint()["epoch"] == 1
    assert not [p.name for p in run.rglob(".*.tmp*")]
    broken.clear()
    monkeypatch.setattr(training, "_report_epoch", report)
    assert _train(run, "--epochs", "2", "--resume") == 0  # once the disk is fixed


def test_a_read_only_folder_for_a_new_run_is_clear(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert _train(tmp_path / "run") == 1
    assert "Read-only file system" in _error(capsys)


def test_stale_temporary_files_are_removed_on_the_next_run(run):
    stale = [run / ".checkpoint.pt.tmp99999", run / "plots" / ".learning_curves.png.tmp1"]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = run / "notes.tmp1"  # not our pattern: left alone
    keep.write_text("mine")
    assert _train(run, "--resume") == 0
    assert not any(p.exists() for p in stale) and keep.exists()


def test_atomic_write_removes_its_temporary_file_on_interrupt(tmp_path, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        files.atomic_write_text(tmp_path / "a.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_second_process_in_the_same_run_folder_is_refused(run, capsys):
    with open(run / ".lock", "w") as holder:  # another process's lock
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        assert _train(run, "--resume") == 1
        err = _error(capsys)
        assert f"run folder {run} is in use by another process (pid 4242)" in err
        assert "wait for it to finish, or use another --out" in err
    assert _train(run, "--resume") == 0  # free again once the holder is gone


def test_a_run_folder_locked_by_another_process_names_its_pid(run):
    env = {**os.environ, "PYTHONPATH": SRC}
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(
            RunFolderError, match=f"in use by another process \\(pid {holder.pid}\\)"
        ):
            RunDir(run).prepare(ClassifyConfig(out=run, resume=True, **TINY_CONFIG), resume=True)
    finally:
        holder.communicate("", timeout=60)  # its stdin closes: it exits, the OS frees the lock
    free = RunDir(run)
    free.lock()
    free.release()


def test_a_new_run_racing_for_the_same_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _train(out) == 1
    assert "is in use by another process (pid unknown)" in _error(capsys)
    assert not (out / "config.json").exists()


def test_the_lock_holds_within_one_process_until_released(run):
    first = RunDir(run)
    first.lock()
    with pytest.raises(RunFolderError, match="in use by another process"):
        RunDir(run).lock()
    first.release()
    second = RunDir(run)
    second.lock()
    second.release()


@pytest.mark.parametrize("folder", ["plots", "figure3"])
def test_a_planted_folder_symlink_is_not_written_through(run, tmp_path, capsys, folder):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(run / folder, ignore_errors=True)
    (run / folder).symlink_to(elsewhere, target_is_directory=True)
    command = _evaluate if folder == "figure3" else lambda r: _train(r, "--resume")
    assert command(run) == 1
    assert list(elsewhere.iterdir()) == []
    assert f"{run / folder} is a symbolic link (to {elsewhere})" in _error(capsys)


def test_a_planted_lock_symlink_is_not_followed(run, tmp_path, capsys):
    target = tmp_path / "precious"
    target.write_text("keep me")
    (run / ".lock").unlink()
    (run / ".lock").symlink_to(target)
    assert _train(run, "--resume") == 1
    assert target.read_text() == "keep me"
    assert f"cannot write {run / '.lock'}" in _error(capsys)


def _containers(inner: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    _containers,
    max_leaves=8,
)
TENSORS = st.builds(
    lambda shape, dtype: torch.zeros(shape, dtype=dtype),
    st.lists(st.integers(0, 3), max_size=3),
    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.bool]),
)
PLAIN = st.recursive(JSON | TENSORS, _containers, max_leaves=8)
CASES = {"count": 0, "refused": 0}  # how many cases ran, how many gave our error


def _slots(value: object, out: list[tuple[object, object]]) -> list[tuple[object, object]]:
    """Every (container, key) inside ``value``, to replace or delete one at random."""
    if isinstance(value, dict):
        for key, item in value.items():
            out.append((value, key))
            _slots(item, out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.append((value, i))
            _slots(item, out)
    return out


def _mutate(data: st.DataObject, value: object, leaves: st.SearchStrategy[object]) -> object:
    slots = _slots(value, [])
    if not slots:
        return data.draw(leaves)
    container, key = data.draw(st.sampled_from(slots))
    if data.draw(st.booleans()):
        container[key] = data.draw(leaves)  # type: ignore[index]
    elif isinstance(container, dict):
        del container[key]
    else:
        container.clear()  # type: ignore[attr-defined]
    return value


def _damage(data: st.DataObject, path: Path) -> None:
    """Damage ``path`` at random: its bytes, or its content as JSON or as a checkpoint."""
    original = path.read_bytes()
    how = data.draw(st.sampled_from(["bytes", "truncate", "flip", "replace", "mutate", "dir"]))
    checkpoint = path.suffix == ".pt"
    if how == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=64)))
    elif how == "truncate":
        path.write_bytes(original[: data.draw(st.integers(0, max(len(original) - 1, 0)))])
    elif how == "flip":
        at = data.draw(st.integers(0, len(original) - 1))
        path.write_bytes(original[:at] + bytes([original[at] ^ 0xFF]) + original[at + 1 :])
    elif how == "dir":
        path.unlink()
        path.mkdir()
    elif checkpoint:
        value = data.draw(PLAIN) if how == "replace" else torch.load(path, weights_only=True)
        torch.save(value if how == "replace" else _mutate(data, value, PLAIN), path)
    else:
        value = data.draw(JSON) if how == "replace" else json.loads(original)
        path.write_text(json.dumps(value if how == "replace" else _mutate(data, value, JSON)))


def _only_our_errors(call: Callable[[], object]) -> None:
    CASES["count"] += 1
    try:
        call()
    except RunFolderError as exc:
        assert str(exc).startswith(("/", "cannot write", "run folder")), exc
        CASES["refused"] += 1
    except ValueError as exc:  # a resumed run whose config.json was changed: flags named
        assert "was started with different settings" in str(exc), exc
        CASES["refused"] += 1


@pytest.fixture(scope="module")
def evaluated(finished: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished run with its figure3/results.json (P3's sweep output)."""
    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(finished, run)
    assert _evaluate(run) == 0
    return run


def _fuzz_resume(finished: Path, tmp_path: Path, data: st.DataObject) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "summary.json").unlink()
    _damage(data, run / data.draw(st.sampled_from(["config.json", "checkpoint.pt", "best.pt"])))
    args = ClassifyConfig(out=run, resume=True, **TINY_CONFIG)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "_draw", lambda task, run, history: [])  # figures: not read
        _only_our_errors(lambda: training.run_training(args, ClassifyTask(args)))


def _fuzz_evaluate(finished: Path, tmp_path: Path, data: st.DataObject) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    _damage(data, run / data.draw(st.sampled_from(["config.json", "summary.json", "best.pt"])))
    config = EvaluateClassifyConfig(run_dir=run, tolerances="1e-1", images=20,
                                    backward_batches=1, progress=False)  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate_classify, "plot_figure3", lambda results, out: [])
        _only_our_errors(lambda: evaluate_classify.evaluate_classify(config))


def _example(spec: object) -> object:
    """A valid value of a reader's spec (its numbers all 2)."""
    if isinstance(spec, dict):
        return {key: _example(sub) for key, sub in spec.items()}
    if isinstance(spec, list):
        return [_example(spec[0]), _example(spec[0])]
    return {"a string": "cnf", "a JSON object": {}, "an object of numbers": {"p1/x": 2.0}}.get(
        spec.name,
        2,  # type: ignore[attr-defined]
    )


def _report_files(out: Path, evaluated: Path) -> dict[Path, object]:
    """Every file ``reproduce --report-only`` reads (tiny scales), each with valid content."""
    ctx = Context("demo", out, 0, None, False, "digits", "the digits")
    found: dict[Path, object] = {out / "wall_times.json": {"p1/odenet-w8": 2.0}}
    for model in ("odenet", "resnet1", "mlp"):
        found[ctx.folder("p1", f"{model}-w8") / "summary.json"] = json.loads(
            (evaluated / "summary.json").read_text()
        )
    found[ctx.folder("p1", "odenet-w8") / "figure3" / "results.json"] = json.loads(
        (evaluated / "figure3" / "results.json").read_text()
    )
    for point in p2.points("demo"):
        name = f"{point.method}-{point.label.replace(' ', '-')}.json"
        found[ctx.folder("p2") / name] = _example(p2.RESULT)
    s = p4.SCALES["demo"]
    for model in p4.MODELS:
        for n in s.n_obs:
            for restart in range(s.restarts):
                name = p4.run_name(model, n, s.noises[0], restart)
                found[ctx.folder("p4", name) / "summary.json"] = _example(p4.SUMMARY)
    for job in PLANNERS["p5"].jobs(ctx):
        key = "nll" if job.name.startswith("moons") else "kl"
        found[ctx.folder("p5", job.name) / "summary.json"] = _example(p5.summary_spec(key))
    return found


def _fuzz_report(evaluated: Path, tmp_path: Path, data: st.DataObject) -> None:
    out = tmp_path
    found = _report_files(out, evaluated)
    for path, value in found.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    _damage(data, data.draw(st.sampled_from(sorted(found))))
    config = ReproduceConfig(out=out, report_only=True, progress=False)
    _only_our_errors(lambda: reproduce_module.reproduce(config))


READERS = {"resume": _fuzz_resume, "evaluate": _fuzz_evaluate, "report": _fuzz_report}


def _fuzz(reader: str, examples: int) -> Callable[..., None]:
    @settings(max_examples=examples, deadline=None, derandomize=examples < 50,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(data=st.data())
    def run(finished: Path, evaluated: Path, tmp_path: Path, data: st.DataObject) -> None:
        case = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per case, removed after
        try:
            READERS[reader](evaluated if reader == "report" else finished, case, data)
        finally:
            shutil.rmtree(case)

    return run


@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize("reader", list(READERS))
def test_fuzz_damaged_run_folders_give_only_our_errors(finished, evaluated, tmp_path, reader):
    # A few cases each (a resume that survives its damage trains and tests: ~1 s).
    _fuzz(reader, {"resume": 3, "evaluate": 8, "report": 15}[reader])(finished, evaluated, tmp_path)


@pytest.mark.slow
@pytest.mark.usefixtures("tiny")
@pytest.mark.parametrize("reader", list(READERS))
def test_fuzz_damaged_run_folders_give_only_our_errors_many(finished, evaluated, tmp_path, reader):
    _fuzz(reader, 1000)(finished, evaluated, tmp_path)
    print(f"run-folder fuzz: {CASES['count']} cases so far, {CASES['refused']} refused clearly")


def test_resume_of_a_run_started_before_a_setting_existed(tmp_path):
    # A config.json written before a field was added lacks it: the run used its default.
    import dataclasses
    import json

    from neuralode.experiments._run.runs import RunDir

    @dataclasses.dataclass
    class Old:
        lr: float = 0.1

    @dataclasses.dataclass
    class New:
        lr: float = 0.1
        verify_data: bool = True

    run = RunDir(tmp_path / "run")
    run.prepare(Old(), resume=False)
    run.release()
    assert "verify_data" not in json.loads((tmp_path / "run" / "config.json").read_text())
    run = RunDir(tmp_path / "run")
    run.prepare(New(), resume=True)  # the default: same settings
    run.release()
    with pytest.raises(ValueError, match="--verify-data was True, now False"):
        RunDir(tmp_path / "run").prepare(New(verify_data=False), resume=True)
