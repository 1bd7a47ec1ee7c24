"""Every value a user can type gives a result or a clear error: divergence, interruption,
out-of-range and non-finite flags, dataset-dependent defaults, and a fuzz over every flag."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest
import torch

pytest.importorskip("tyro")
pytest.importorskip("sklearn")

from cli_helpers import TINY_CLASSIFY, assert_refused, metrics_rows, train_classify, weights  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from neuralode.experiments._run.runs import RunDir  # noqa: E402
from neuralode.experiments.classify import task as classify  # noqa: E402
from neuralode.experiments.classify.evaluate import EvaluateClassifyConfig  # noqa: E402
from neuralode.experiments.classify.task import ClassifyConfig, load_splits  # noqa: E402
from neuralode.experiments.cli import _commands, main  # noqa: E402
from neuralode.experiments.cnf.task import CNFConfig  # noqa: E402
from neuralode.experiments.latent.task import LatentConfig  # noqa: E402
from neuralode.experiments.reproduce import ReproduceConfig  # noqa: E402

TINY = TINY_CLASSIFY
_train = train_classify


def _finite(state: dict[str, torch.Tensor]) -> bool:
    return all(bool(v.isfinite().all()) for v in state.values())


CONFIGS = {"classify": ClassifyConfig, "latent-ode": LatentConfig, "cnf": CNFConfig}
# Tiny sizes so that each choice builds and takes one step in well under a second.
SMALL = {
    "classify": ["--dataset", "digits", "--width", "8", "--batch-size", "16"],
    "latent-ode": ["--spirals", "40", "--test-size", "10", "--val-size", "10", "--iters", "1",
                   "--eval-every", "1", "--batch-size", "8", "--tol", "1e-2"],
    "cnf": ["--width", "2", "--hidden", "4", "--iters", "1", "--batch-size", "8",
            "--tol", "1e-2"],
}  # fmt: skip
# ... and quick models and budgets, for runs that should be refused before they start.
QUICK = {
    "classify": ["--model", "mlp", "--epochs", "1", "--train-size", "32", "--val-size", "32",
                 "--no-progress", "--threads", "1"],
    "latent-ode": ["--model", "rnn", "--no-progress", "--threads", "1"],
    "cnf": ["--model", "nf", "--val-size", "20", "--test-size", "20", "--no-progress",
            "--threads", "1"],
}  # fmt: skip


# --- divergence: non-finite weights or validation metrics stop the run ------------------


def _blow_up_at_step(monkeypatch: pytest.MonkeyPatch, at: int) -> None:
    """Make the ``at``-th optimiser step of a classify run throw the weights to ±inf, as a
    step at a huge learning rate does, while the loss that preceded it was finite."""
    setup = classify.ClassifyTask.setup

    def setup_then_poison(self, world):
        setup(self, world)
        step, calls = self.optimizer.step, {"n": 0}

        def overflowing_step(*args, **kwargs):
            out = step(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == at:
                with torch.no_grad():
                    for p in self.model.parameters():
                        p.mul_(1e38).mul_(1e38)
            return out

        self.optimizer.step = overflowing_step

    monkeypatch.setattr(classify.ClassifyTask, "setup", setup_then_poison)


@pytest.mark.filterwarnings("ignore:Seems like .optimizer.step... has been overridden")
def test_weights_that_overflow_stop_the_run_and_keep_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    _blow_up_at_step(monkeypatch, at=4)  # the last step of epoch 2 (2 steps per epoch)
    assert _train(out, "--model", "mlp", "--epochs", "2") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "inf after the optimiser step at epoch 2, step 2 of 2" in err
    assert "the weight 1.weight became" in err and "last checkpoint: the end of epoch 1" in err
    assert RunDir(out).load_checkpoint()["epoch"] == 1
    assert _finite(weights(out)) and _finite(weights(out, "best.pt"))
    assert not (out / "summary.json").exists()  # no result is reported
    assert len(metrics_rows(out)) == 1


def test_a_non_finite_validation_metric_stops_the_run(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    evaluate, calls = classify.ClassifyTask.evaluate, {"val": 0}

    def nan_on_second_validation(self, model, split, world):
        metrics = evaluate(self, model, split, world)
        calls[split] = calls.get(split, 0) + 1
        if split == "val" and calls["val"] == 2:
            metrics["loss"] = math.nan
        return metrics

    monkeypatch.setattr(classify.ClassifyTask, "evaluate", nan_on_second_validation)
    assert _train(out, "--model", "mlp", "--epochs", "2") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "the validation loss became nan in the validation after epoch 2" in err
    assert RunDir(out).load_checkpoint()["epoch"] == 1
    assert not (out / "summary.json").exists()


# --- Ctrl-C, --out '', and resuming a finished run ---------------------------------------


def test_ctrl_c_says_where_and_how_to_continue(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    loss, calls = classify.ClassifyTask.loss, {"n": 0}

    def interrupted(self, model, batch):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2, step 1
            raise KeyboardInterrupt
        return loss(self, model, batch)

    with monkeypatch.context() as patch:
        patch.setattr(classify.ClassifyTask, "loss", interrupted)
        assert _train(out, "--model", "mlp", "--epochs", "2") == 130
    err = capsys.readouterr().err
    assert "interrupted at epoch 2 step 1 of 2; continue with --resume" in err
    assert "Traceback" not in err
    assert RunDir(out).load_checkpoint()["epoch"] == 1  # the last checkpoint is intact
    assert _train(out, "--model", "mlp", "--epochs", "2", "--resume") == 0
    assert len(metrics_rows(out)) == 2


@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_an_empty_out_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "classify", *TINY, "--model", "mlp", "--epochs", "1", "--out", ""]
    if command == "reproduce":
        argv = ["reproduce", "--preset", "demo", "--only", "p2", "--out", ""]
    assert_refused(lambda: main(argv), capsys, "--out '' or . names the current folder")
    assert list(tmp_path.iterdir()) == []


def test_resuming_a_finished_run_rewrites_a_stale_metrics_csv(tmp_path, monkeypatch):
    out = tmp_path / "run"
    write = RunDir.write_metrics

    def killed_before_the_last_row(self, rows):
        if len(rows) == 2:  # after epoch 2's checkpoint, before its metrics row
            raise KeyboardInterrupt
        write(self, rows)

    with monkeypatch.context() as patch:
        patch.setattr(RunDir, "write_metrics", killed_before_the_last_row)
        assert _train(out, "--model", "mlp", "--epochs", "2") == 130
    assert RunDir(out).load_checkpoint()["epoch"] == 2 and len(metrics_rows(out)) == 1
    assert _train(out, "--model", "mlp", "--epochs", "2", "--resume") == 0
    rows = metrics_rows(out)
    history = json.loads((out / "summary.json").read_text())["history"]
    assert [r["epoch"] for r in rows] == ["1", "2"] and len(history) == 2
    assert [float(r["val_loss"]) for r in rows] == [h["val_loss"] for h in history]


# --- flag values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command, args, message",
    [
        ("classify", ["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        ("classify", ["--lr", "1e308"], "--lr must be in (0, 10], got 1e+308"),
        ("classify", ["--tol", "nan"], "--tol must be a finite number > 0, got nan"),
        ("classify", ["--tol", "inf"], "--tol must be a finite number > 0, got inf"),
        ("classify", ["--rk-step", "nan"], "--rk-step must be a finite number > 0"),
        ("classify", ["--rk-step", "2"], "--rk-step must be in (0, 1], got 2.0"),
        ("classify", ["--width", "48"], "--width must be at most 32 or a multiple of 32"),
        ("classify", ["--width", str(2**70)], "--width must be in (0, 2.14748e+09]"),
        ("classify", ["--blocks", "100000"], "--blocks must be in (0, 1000]"),
        ("classify", ["--threads", str(2**40)], "--threads must be in (0, 1024]"),
        ("classify", ["--seed", str(2**70)], "--seed must be an integer in [0, 2**63 - 1]"),
        ("classify", ["--seed", "-1"], "--seed must be an integer in [0, 2**63 - 1]"),
        ("classify", ["--max-steps", str(2**70)], "--max-steps must be in (0, 2.14748e+09]"),
        ("latent-ode", ["--noise", "nan"], "--noise must be a finite number ≥ 0, got nan"),
        ("latent-ode", ["--noise", "1e30"], "--noise must be in [0, 1000], got 1e+30"),
        ("latent-ode", ["--obs-std", "inf"], "--obs-std must be a finite number > 0"),
        ("latent-ode", ["--grad-clip", "nan"], "--grad-clip must be a finite number > 0"),
        ("latent-ode", ["--data-seed", str(2**64)], "--data-seed must be an integer in"),
        ("latent-ode", ["--dynamics-hidden", str(2**40)], "--dynamics-hidden and"),
        ("cnf", ["--t1", "inf"], "--t1 must be a finite number > 0, got inf"),
        ("cnf", ["--base-std", "nan"], "--base-std must be a finite number > 0"),
        ("cnf", ["--width", "1000000"], "--width must be in (0, 10000]"),
        ("cnf", ["--test-size", str(2**40)], "--test-size must be in (0, 2.14748e+09]"),
    ],
)
def test_bad_values_are_refused_naming_the_flag_before_a_folder_exists(
    tmp_path, capsys, command, args, message
):
    out = tmp_path / "run"
    # Tiny sizes first (the flag under test overrides them), so that code which let the
    # value through would train for seconds, not hours.
    argv = ["train", command, *SMALL[command], *QUICK[command], "--out", str(out), *args]
    assert_refused(lambda: main(argv), capsys, message)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    run = lambda: _train(out, "--model", "mlp", "--device", "cuda")  # noqa: E731
    assert_refused(run, capsys, "--device cuda: CUDA is not available here")
    assert not out.exists()


def test_a_model_too_large_for_memory_is_a_clear_error(tmp_path, capsys):
    # 2**25 channels: the first convolution alone would need 2**50 × 9 floats (36 PB), more
    # than any address space, so the allocation fails at once everywhere.
    out = tmp_path / "run"
    assert _train(out, "--model", "odenet", "--width", str(2**25)) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "not enough memory at building the data and the model" in err
    assert f"lower the sizes (--width {2**25}, --blocks 6, --batch-size 32" in err
    assert not out.exists()


def test_train_and_test_images_of_different_sizes_are_a_clear_error(tmp_path, monkeypatch, capsys):
    def fake_images(name, split, data_dir, download, **options):
        side = 28 if split == "train" else 32
        n = 200 if split == "train" else 50
        return torch.zeros(n, side, side, dtype=torch.uint8), torch.arange(n) % 10

    monkeypatch.setattr(classify, "load_images", fake_images)
    argv = ["train", "classify", "--dataset", "mnist", "--train-size", "64", "--val-size", "64",
            "--model", "mlp", "--no-progress", "--out", str(tmp_path / "run")]  # fmt: skip
    assert_refused(lambda: main(argv), capsys, "the training images found are 28×28 but the test")
    assert not (tmp_path / "run").exists()


# --- defaults work for every offered choice ----------------------------------------------


def test_digits_trains_with_the_default_sizes(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "classify", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
            "--no-progress", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split_sizes"] == {"train": 1138, "val": 300, "test": 359}
    # An explicit size is honoured, so too large a one is still refused.
    assert ClassifyConfig(dataset="digits", val_size=5_000).val_size == 5_000
    assert ClassifyConfig().train_size == 20_000 and ClassifyConfig().val_size == 5_000


def test_image_size_resizes_every_split_and_is_checked(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "classify", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
            "--image-size", "14", "--zero-init", "--no-progress", "--threads", "1",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parameters"] == 14 * 14 * 300 + 300 + 300 * 10 + 10  # MLP on 196 pixels
    splits = load_splits(ClassifyConfig(dataset="digits", image_size=14))
    assert {tuple(x.shape[1:]) for x, _ in splits.values()} == {(1, 14, 14)}
    argv = ["train", "classify", "--dataset", "digits", "--image-size", "8", "--no-progress",
            "--out", str(tmp_path / "small")]  # fmt: skip
    assert_refused(lambda: main(argv), capsys, "--image-size must lie in [10, 256], got 8")


def _choices() -> list[tuple[str, str, str]]:
    """(command, flag, choice) for every choice of every Literal-typed flag."""
    cases = []
    for command, config in CONFIGS.items():
        hints = typing.get_type_hints(config)
        for field in dataclasses.fields(config):
            if typing.get_origin(hints[field.name]) is typing.Literal:
                flag = "--" + field.name.replace("_", "-")
                cases += [(command, flag, str(c)) for c in typing.get_args(hints[field.name])]
    return cases


@pytest.mark.parametrize("command, flag, choice", _choices())
def test_every_choice_builds_and_steps_with_the_defaults(command, flag, choice, capsys):
    """Each choice with every other flag at its default (sizes aside) either takes a training
    step or is refused with a clear message (data that is not installed, no CUDA)."""
    from neuralode.experiments._run.distributed import World
    from neuralode.experiments._run.training import prepare_task
    from neuralode.experiments.cli import TRAINERS

    tyro = pytest.importorskip("tyro")
    args = [*SMALL[command], flag, choice, "--no-progress", "--threads", "1"]
    try:
        config = tyro.cli(_commands(), args=["train", command, *args])
        world = World.from_environment(config.device)
        task = TRAINERS[type(config)][0](config)
        prepare_task(task, world, config)
    except (FileNotFoundError, ValueError) as exc:
        message = str(exc)
        assert ("--data-dir" in message and choice in ("mnist", "fashion-mnist")) or (
            "--device cuda" in message and not torch.cuda.is_available()
        ), message
        return
    batch = next(iter(task.train_batches(0, world)))
    loss, _ = task.loss(task.model, batch)
    loss.backward()
    assert math.isfinite(float(loss.detach()))


# --- fuzz: every flag of every subcommand -----------------------------------------------

VALUES = ["nan", "inf", "-inf", "0", "-1", "-0.5", "1e308", "-1e308", str(2**70), str(-(2**70)),
          "1e-320", "abc", "", "None", "0x10", "1_0", "3", "0.5"]  # fmt: skip
SUBCOMMANDS = {
    ("train", "classify"): ClassifyConfig,
    ("train", "latent-ode"): LatentConfig,
    ("train", "cnf"): CNFConfig,
    ("evaluate", "classify"): EvaluateClassifyConfig,
    ("reproduce",): ReproduceConfig,
}
FUZZ = {"cases": 0, "accepted": 0, "refused": 0}


def _flags(config: type) -> list[str]:
    """Flags that take a value (bools are switches; run_dir is positional)."""
    hints = typing.get_type_hints(config)
    return [
        "--" + f.name.replace("_", "-")
        for f in dataclasses.fields(config)
        if hints[f.name] is not bool and f.name != "run_dir"
    ]


@st.composite
def _command_lines(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    words = draw(st.sampled_from(sorted(SUBCOMMANDS)))
    config = SUBCOMMANDS[words]
    flags = draw(st.lists(st.sampled_from(_flags(config)), min_size=1, max_size=3, unique=True))
    argv = list(words)
    if config is EvaluateClassifyConfig:
        argv.append("some-run")
    for flag in flags:
        argv += [flag, draw(st.sampled_from(VALUES))]
    return argv, flags


def _parse_or_refuse(argv: list[str], flags: list[str], capsys) -> None:
    """Parse and validate ``argv`` (no training): a config, or our clear refusal."""
    tyro = pytest.importorskip("tyro")
    FUZZ["cases"] += 1
    try:
        config = tyro.cli(_commands(), args=argv, prog="neuralode")
    except SystemExit as exc:  # tyro prints our ValueError (or its own parse error)
        FUZZ["refused"] += 1
        text = " ".join(capsys.readouterr().err.replace("│", " ").split())
        assert exc.code == 2, (argv, text)
        assert any(f in text for f in flags), (argv, text)
        assert "Traceback" not in text, (argv, text)
        return
    FUZZ["accepted"] += 1
    capsys.readouterr()
    # Accepted means usable: no value that would fail later under another name.
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        for number in value if isinstance(value, tuple) else (value,):
            if isinstance(number, float):
                assert math.isfinite(number), (argv, field.name, number)
            elif isinstance(number, int):  # bools too: harmless
                assert abs(number) < 2**63, (argv, field.name, number)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=_command_lines())
def test_fuzz_every_flag_gives_a_config_or_a_clear_error(case, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # tyro's boxes would wrap long flag names
    _parse_or_refuse(*case, capsys)


@pytest.mark.slow
@settings(max_examples=5_000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(case=_command_lines())
def test_fuzz_every_flag_many_cases(case, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    _parse_or_refuse(*case, capsys)


@pytest.mark.slow
def test_fuzz_every_single_flag_and_value(capsys, monkeypatch):
    """The exhaustive single-flag grid: every value in every flag of every subcommand."""
    monkeypatch.setenv("COLUMNS", "400")
    for words, config in SUBCOMMANDS.items():
        prefix = [*words, "some-run"] if config is EvaluateClassifyConfig else list(words)
        for flag in _flags(config):
            for value in VALUES:
                _parse_or_refuse([*prefix, flag, value], [flag], capsys)
    print(f"fuzz so far: {FUZZ}")


def test_the_solver_choices_are_the_adaptive_methods_of_compat():
    """--solver's names are spelled out (for mypy and --help): METHODS' adaptive ones, all."""
    from neuralode.compat import METHODS
    from neuralode.experiments._run.solving import AdaptiveMethod

    adaptive = {name for name, solver in METHODS.items() if solver().adaptive}
    assert set(typing.get_args(AdaptiveMethod)) == adaptive
