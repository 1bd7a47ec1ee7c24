"""Helpers shared by the tests of the training commands (test_cli_*.py)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch

from neuralode.experiments._run.runs import RunDir

# A `train classify` run that takes about a second: the 8x8 digits, a narrow model.
TINY_CLASSIFY = [
    "--dataset", "digits", "--train-size", "64", "--val-size", "64", "--batch-size", "32",
    "--eval-batch-size", "128", "--width", "8", "--no-progress", "--threads", "1",
]  # fmt: skip


def train_classify(out: Path, *extra: str) -> int:
    """``neuralode train classify`` on :data:`TINY_CLASSIFY` into ``out``; the exit status."""
    from neuralode.experiments.cli import main  # needs tyro: imported by the tests that skip

    return main(["train", "classify", *TINY_CLASSIFY, "--out", str(out), *extra])


def assert_refused(
    run: Callable[[], int], capsys: pytest.CaptureFixture[str], message: str
) -> None:
    """``run()`` (a CLI call) fails and prints ``message`` (whitespace-normalised)."""
    try:
        status = run()
    except SystemExit as exc:  # tyro reports constructor errors itself, with exit code 2
        status = exc.code
    assert status != 0
    captured = capsys.readouterr()
    assert message in " ".join((captured.out + captured.err).split())


def record_runs(monkeypatch: pytest.MonkeyPatch, protocol: object) -> list[str]:
    """Record the run names a protocol module trains (its ``run_training``, still run)."""
    started: list[str] = []
    real = protocol.run_training  # type: ignore[attr-defined]

    def recording(config: object, task: object) -> object:
        started.append(config.out.name)  # type: ignore[attr-defined]
        return real(config, task)

    monkeypatch.setattr(protocol, "run_training", recording)
    return started


def metrics_rows(run: Path) -> list[dict[str, str]]:
    """A run's metrics.csv, one dict per epoch."""
    with open(run / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def weights(run: Path, name: str = "checkpoint.pt") -> dict[str, torch.Tensor]:
    """The model weights saved in a run's checkpoint."""
    return RunDir(run).load_checkpoint(name)["model"]


def assert_resume_is_exact(
    train: Callable[..., int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: Sequence[str]
) -> list[dict[str, str]]:
    """Kill a run right after its first checkpoint, resume it, and compare it with a run
    that was never interrupted: same weights, same metrics (wall times aside).

    Returns the metrics rows of the uninterrupted run.
    """
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert train(straight, *args) == 0
    save = RunDir.save_checkpoint

    def save_then_die(self, state, name="checkpoint.pt"):
        save(self, state, name)
        if name == "checkpoint.pt" and state["epoch"] == 1:
            raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    with monkeypatch.context() as patch:
        patch.setattr(RunDir, "save_checkpoint", save_then_die)
        assert train(killed, *args) == 130  # Ctrl-C's exit status, no traceback
    assert RunDir(killed).load_checkpoint()["epoch"] == 1
    assert train(killed, *args, "--resume") == 0

    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def timeless(run: Path) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in metrics_rows(run)]

    assert timeless(straight) == timeless(killed)
    return metrics_rows(straight)
