"""`neuralode train classify` / `evaluate classify` end to end on tiny digits runs (seconds)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("tyro")
pytest.importorskip("sklearn")

from cli_helpers import (
    TINY_CLASSIFY,
    assert_refused,
    assert_resume_is_exact,
    metrics_rows,
    train_classify,
    weights,
)  # noqa: E402

from neuralode.experiments._run import training  # noqa: E402
from neuralode.experiments._run.runs import RunDir  # noqa: E402
from neuralode.experiments.classify import task as classify  # noqa: E402
from neuralode.experiments.cli import main  # noqa: E402

TINY = TINY_CLASSIFY
_train = train_classify


@pytest.mark.parametrize(
    "model",
    [
        ["--model", "odenet", "--tol", "1e-2"],
        ["--model", "resnet", "--blocks", "1"],
        ["--model", "rknet"],
        ["--model", "mlp"],
    ],  # fmt: skip
    ids=["odenet", "resnet1", "rknet", "mlp"],
)
def test_train_writes_the_run_layout(tmp_path, model):
    out = tmp_path / "run"
    assert _train(out, "--epochs", "2", *model) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.csv", "checkpoint.pt", "best.pt", "summary.json"} <= names
    rows = metrics_rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["split_sizes"] == {"train": 64, "val": 64, "test": 359}
    # No buffers in these models (group norm), so the state dict is the parameters.
    assert summary["parameters"] == sum(v.numel() for v in weights(out, "best.pt").values())
    for plot in summary["plots"]:
        assert (out / "plots" / plot).stat().st_size > 10_000
    ode = model[1] in ("odenet", "rknet")
    assert (summary["test_nfe_forward"] > 0) == ode
    assert (float(rows[0]["nfe_forward"]) > 0) == ode
    # Backprop through RK4 solves nothing backwards; the adjoint does.
    assert (float(rows[0]["nfe_backward"]) > 0) == (model[1] == "odenet")


def test_resume_after_a_kill_continues_exactly(tmp_path, monkeypatch):
    args = ["--model", "odenet", "--tol", "1e-2", "--epochs", "3"]
    assert len(assert_resume_is_exact(_train, tmp_path, monkeypatch, args)) == 3


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path, monkeypatch):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ["--model", "mlp", "--epochs", "2"]
    assert _train(straight, *args) == 0

    def die(self, state, name="checkpoint.pt"):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(RunDir, "save_checkpoint", die)
        assert _train(killed, *args) == 130
    assert sorted(p.name for p in killed.iterdir()) == [".lock", "config.json"]
    assert _train(killed, *args) == 1  # not silently overwritten without --resume ...
    assert _train(killed, *args, "--resume") == 0  # ... but resumable, from scratch
    a, b = weights(straight), weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_checkpoint(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    loss = classify.ClassifyTask.loss
    calls = {"n": 0}

    def poisoned(self, model, batch):
        value, metrics = loss(self, model, batch)
        calls["n"] += 1
        return (value * float("nan") if calls["n"] == 3 else value), metrics

    monkeypatch.setattr(classify.ClassifyTask, "loss", poisoned)
    assert _train(out, "--model", "mlp", "--epochs", "3") == 1
    err = capsys.readouterr().err
    assert "loss became nan at epoch 2, step 1 of 2" in err
    assert "last checkpoint: the end of epoch 1" in err
    assert RunDir(out).load_checkpoint()["epoch"] == 1


def test_solver_failure_in_training_says_where(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--model", "odenet", "--epochs", "1", "--max-steps", "1") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "the ODE solver failed at epoch 1, training step 1 of 2" in err
    assert "step budget" in err or "max_steps" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train-size", "100000"], "--train-size 100000 is more than the"),
        (["--val-size", "5000"], "--val-size 5000 leaves no training images"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
        (["--seminorm", "--adjoint", "direct"], "--seminorm needs --adjoint backsolve"),
        (["--resume"], "--resume needs --out"),
    ],
)
def test_bad_flags_name_the_flag(tmp_path, capsys, args, message):
    argv = ["train", "classify", *TINY, *args]
    if "--resume" not in args:
        argv += ["--out", str(tmp_path / "run")]
    assert_refused(lambda: main(argv), capsys, message)


def test_existing_run_and_mismatched_resume_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--model", "mlp", "--epochs", "1") == 0
    assert _train(out, "--model", "mlp", "--epochs", "1") == 1
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert _train(out, "--model", "mlp", "--epochs", "1", "--resume", "--width", "16") == 1
    assert "--width was 8, now 16" in capsys.readouterr().err
    # Resuming a finished run only re-tests the best checkpoint.
    assert _train(out, "--model", "mlp", "--epochs", "1", "--resume") == 0


def test_evaluate_classify_sweeps_tolerances(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "--model", "odenet", "--tol", "1e-2", "--epochs", "1") == 0
    argv = ["evaluate", "classify", str(out), "--tolerances", "1e-1,1e-3,1e-5", "--images",
            "40", "--batch-size", "20", "--backward-batches", "1", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((out / "figure3" / "results.json").read_text())
    rows = results["rows"]
    assert [r["tol"] for r in rows] == [1e-1, 1e-3, 1e-5]
    nfe = [r["nfe_forward"] for r in rows]
    err = [r["error_rms"] for r in rows]
    assert nfe == sorted(nfe) and nfe[0] < nfe[-1]  # tighter tolerance, more work ...
    assert err[-1] < err[0] / 10  # ... and a smaller error against the reference
    assert all(r["nfe_backward_seminorm"] <= r["nfe_backward"] for r in rows)
    assert (out / "figure3" / "figure3.png").stat().st_size > 10_000
    assert main(["evaluate", "classify", str(tmp_path / "missing")]) == 1


def test_evaluate_refuses_a_non_ode_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--model", "mlp", "--epochs", "1") == 0
    assert main(["evaluate", "classify", str(out)]) == 1
    assert "needs an ODE-Net run" in capsys.readouterr().err


def test_cli_help_runs_as_a_console_script(capsys):
    done = subprocess.run(
        [sys.executable, "-m", "neuralode", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: neuralode" in done.stdout and "reproduce" in done.stdout
    for argv in (["train", "classify", "--help"], ["evaluate", "classify", "--help"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert f"usage: neuralode {argv[0]} classify" in capsys.readouterr().out


DDP_WORKER = Path(__file__).with_name("ddp_worker.py")


def _torchrun(procs: int, out: Path, model: str) -> dict[str, dict[str, torch.Tensor]]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={procs}", str(DDP_WORKER), str(out), model]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return {
        p.stem: torch.load(p, weights_only=True)
        for p in out.glob("*.pt")
        if p.stem.startswith(("rank", "grad", "init"))
    }


def test_torchrun_ranks_agree_and_match_one_process(tmp_path):
    """DDP over gloo: both ranks hold the same weights after training, and with fixed steps
    (RK-Net) the averaged gradient of a global batch split over two ranks equals the
    one-process gradient of the whole batch."""
    two, one = _torchrun(2, tmp_path / "rk2", "rknet"), _torchrun(1, tmp_path / "rk1", "rknet")
    for key, value in two["rank0"].items():
        assert torch.equal(value, two["rank1"][key]), key
    scale = max(float(g.abs().max()) for g in one["grad0"].values())
    for key, grad in one["grad0"].items():
        torch.testing.assert_close(two["grad0"][key], grad, rtol=1e-4, atol=1e-6 * scale)
        torch.testing.assert_close(two["grad1"][key], grad, rtol=1e-4, atol=1e-6 * scale)
    assert not all(torch.equal(two["rank0"][k], two["init"][k]) for k in two["init"])
    # The adjoint's parameter gradients come out of an autograd.Function: DDP must still
    # average them (ranks see different images, so unsynchronised weights would differ).
    ode = _torchrun(2, tmp_path / "ode2", "odenet")
    for key, value in ode["rank0"].items():
        assert torch.equal(value, ode["rank1"][key]), key


def test_epoch_generators_differ_by_epoch_and_stream():
    a = torch.randperm(50, generator=training.epoch_generator(0, 0))
    assert torch.equal(a, torch.randperm(50, generator=training.epoch_generator(0, 0)))
    assert not torch.equal(a, torch.randperm(50, generator=training.epoch_generator(0, 1)))
    assert not torch.equal(a, torch.randperm(50, generator=training.epoch_generator(0, 0, 1)))


def test_kinetic_and_jacobian_regularise_the_ode_block(tmp_path):
    out = tmp_path / "reg"
    status = train_classify(out, "--model", "odenet", "--epochs", "1", "--kinetic", "0.01",
                            "--jacobian", "0.01", "--local-error", "0.1",
                            "--adjoint", "direct")  # fmt: skip
    assert status == 0
    rows = metrics_rows(out)
    for name in ("train_kinetic", "train_jacobian", "train_local_error"):
        value = float(rows[-1][name])
        assert math.isfinite(value) and value > 0
    config = json.loads((out / "config.json").read_text())
    assert config["kinetic"] == 0.01 and config["jacobian"] == 0.01


def test_regularisers_need_the_ode_net(tmp_path, capsys):
    assert_refused(
        lambda: train_classify(tmp_path / "r", "--model", "resnet", "--kinetic", "0.1"),
        capsys,
        "--kinetic applies to the ODE block of --model odenet only, got --model resnet",
    )
    assert_refused(
        lambda: train_classify(
            tmp_path / "r", "--model", "rknet", "--augment-dim", "2", "--steer", "0.1"
        ),  # fmt: skip
        capsys,
        "--augment-dim and --steer apply to the ODE block of --model odenet only, got --model "
        "rknet",
    )


def test_augment_dim_and_steer_train_the_ode_net(tmp_path):
    out = tmp_path / "anode"
    status = train_classify(out, "--model", "odenet", "--epochs", "1", "--augment-dim", "3",
                            "--steer", "0.5", "--tol", "1e-2")  # fmt: skip
    assert status == 0
    config = json.loads((out / "config.json").read_text())
    assert config["augment_dim"] == 3 and config["steer"] == 0.5
    state = weights(out)
    assert state["1.func.conv1.conv.weight"].shape[1] == 8 + 3 + 1  # ODE function: C + K + t
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_nfe_forward"] > 0


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--augment-dim", "-1"], "--augment-dim must be an integer ≥ 0 (0: off), got -1"),
        (["--steer", "1"], "--steer must lie in [0, 1)"),
        (["--steer", "-0.1"], "--steer must be ≥ 0, got -0.1"),
    ],  # fmt: skip
)
def test_augment_dim_and_steer_refusals_name_the_flag(tmp_path, capsys, flags, message):
    assert_refused(lambda: train_classify(tmp_path / "r", *flags), capsys, message)


def test_resume_is_exact_with_steer(tmp_path, monkeypatch):
    # STEER's end times come from the global generator, which every epoch re-seeds.
    args = ["--model", "odenet", "--tol", "1e-2", "--epochs", "2", "--steer", "0.5"]
    assert len(assert_resume_is_exact(_train, tmp_path, monkeypatch, args)) == 2
