"""`neuralode train cnf` and protocol P5 end to end at tiny sizes (seconds)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from unittest import mock

import pytest
import torch

pytest.importorskip("tyro")

from cli_helpers import (  # noqa: E402
    assert_refused,
    assert_resume_is_exact,
    metrics_rows,
    record_runs,
)

from neuralode.experiments._run.protocol import Context  # noqa: E402
from neuralode.experiments.cli import main  # noqa: E402
from neuralode.experiments.cnf import plots as cnf_plots  # noqa: E402
from neuralode.experiments.cnf import protocol as flows  # noqa: E402

TINY = ["--iters", "4", "--iters-per-epoch", "2", "--batch-size", "32", "--val-size", "40",
        "--test-size", "60", "--eval-batch-size", "30", "--tol", "1e-3", "--no-progress",
        "--threads", "1"]  # fmt: skip


@pytest.fixture(autouse=True)
def small_plots(monkeypatch):
    """Coarse figures: drawing, not resolution, is under test here."""
    monkeypatch.setattr(cnf_plots, "SAMPLES", 2_000)
    monkeypatch.setattr(cnf_plots, "GRID", 24)
    monkeypatch.setattr(cnf_plots, "SNAPSHOT_GRID", 12)
    monkeypatch.setattr(cnf_plots, "SNAPSHOT_SAMPLES", 200)


def _train(out: Path, *extra: str) -> int:
    return main(["train", "cnf", *TINY, "--out", str(out), *extra])


@pytest.mark.parametrize(
    "args",
    [
        ["--task", "density", "--target", "U2", "--model", "cnf", "--width", "2"],
        ["--task", "density", "--target", "U1", "--model", "nf", "--width", "2"],
        [
            "--task",
            "ml",
            "--dataset",
            "moons",
            "--model",
            "cnf",
            "--width",
            "4",
            "--t1",
            "1",
            "--adjoint",
            "backsolve",
        ],
        ["--task", "ml", "--dataset", "circles", "--model", "nf", "--width", "4"],
    ],
    ids=["density-cnf", "density-nf", "ml-cnf-backsolve", "ml-nf"],
)
def test_train_writes_the_run_layout(tmp_path, args, capsys):
    out = tmp_path / "run"
    assert _train(out, *args) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.csv", "checkpoint.pt", "best.pt", "summary.json"} <= names
    rows = metrics_rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    summary = json.loads((out / "summary.json").read_text())
    density, cnf = "density" in args, "cnf" in args
    score = "kl" if density else "nll"
    assert f"val_{score}" in rows[0] and summary["best_epoch"] in (1, 2)
    assert summary[f"test_{score}_stderr"] > 0
    if density:
        # The true KL: log Z from quadrature is added, so it is ≥ 0 up to Monte Carlo error.
        assert summary["test_kl"] > -3 * summary["test_kl_stderr"]
        assert summary["test_log_z"] == pytest.approx(summary["log_z"])
    assert (float(rows[0]["nfe_forward"]) > 0) == cnf
    # Direct backprop by default replays no field; the backsolve adjoint solves backwards.
    assert (float(rows[0]["nfe_backward"]) > 0) == ("backsolve" in args)
    assert (summary["test_nfe_forward"] > 0) == cnf
    assert {"fit.png", "flow.png", "learning_curves.png"} <= set(summary["plots"])
    for plot in summary["plots"]:
        assert (out / "plots" / plot).stat().st_size > 5_000
    assert f"test {score.upper()}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["--task", "density", "--model", "cnf", "--width", "2", "--schedule", "cosine"],
        ["--task", "ml", "--model", "cnf", "--width", "2", "--t1", "1", "--trace", "hutchinson"],
    ],
    ids=["density", "ml-hutchinson"],
)
def test_resume_after_a_kill_continues_exactly(tmp_path, monkeypatch, args):
    rows = assert_resume_is_exact(_train, tmp_path, monkeypatch, [*args, "--iters", "6"])
    assert len(rows) == 3
    lrs = [float(r["lr"]) for r in rows]  # the cosine's state survives the kill
    assert lrs == sorted(lrs, reverse=True) and (lrs[0] > lrs[-1]) == ("cosine" in args)


def test_every_epoch_draws_new_training_samples(tmp_path):
    """Fresh data each iteration, and different draws in different epochs."""
    from neuralode.experiments._run.distributed import World
    from neuralode.experiments.cnf.task import CNFConfig, CNFTask

    task = CNFTask(CNFConfig(task="ml", model="nf", width=2, iters=4, iters_per_epoch=2,
                             batch_size=8, out=tmp_path))  # fmt: skip
    task.setup(World())
    first = [x for x, _ in task.train_batches(0, World())]
    again = [x for x, _ in task.train_batches(0, World())]
    later = [x for x, _ in task.train_batches(1, World())]
    assert len(first) == 2 and not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], later[0])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--iters", "10", "--iters-per-epoch", "3"], "--iters 10 must be a multiple of"),
        (["--model", "nf", "--trace", "hutchinson"], "--trace applies to --model cnf only"),
        (["--model", "nf", "--t1", "2"], "--t1 applies to --model cnf only"),
        (["--val-size", "1"], "--val-size must be ≥ 2"),
        (["--width", "0"], "--width must be > 0"),
        (["--base-std", "-1"], "--base-std must be > 0"),
        (["--device", "cuda"], "--device"),  # cpu is the only choice offered
        (["--target", "U9"], "--target"),
        (["--seminorm", "--adjoint", "direct"], "--seminorm needs --adjoint backsolve"),
        (
            ["--model", "nf", "--kinetic", "1", "--steer", "0.1"],
            "--kinetic and --steer apply to --model cnf only",
        ),
        (["--task", "ml", "--t1", "1", "--steer", "1"], "--steer must lie in [0, 1)"),
        (["--jacobian", "-1"], "--jacobian must be ≥ 0, got -1.0"),
        (["--local-error", "1"], "--local-error applies to train classify's ODE block only"),
    ],  # fmt: skip
)
def test_bad_flags_name_the_flag(tmp_path, capsys, args, message):
    assert_refused(lambda: _train(tmp_path / "run", *args), capsys, message)


@pytest.mark.parametrize("task", ["ml", "density"])
def test_regularisers_and_steer_train_the_cnf(tmp_path, task):
    out = tmp_path / "reg"
    args = ["--task", task, "--model", "cnf", "--width", "2", "--t1", "1", "--kinetic", "0.1",
            "--jacobian", "0.1", "--steer", "0.5", "--trace", "hutchinson"]  # fmt: skip
    assert _train(out, *args) == 0
    rows = metrics_rows(out)
    for name in ("train_kinetic", "train_jacobian"):
        assert float(rows[-1][name]) > 0
    config = json.loads((out / "config.json").read_text())
    assert (config["kinetic"], config["jacobian"], config["steer"]) == (0.1, 0.1, 0.5)
    assert json.loads((out / "summary.json").read_text())["test_nfe_forward"] > 0


def test_the_cnf_penalties_enter_the_loss(monkeypatch):
    """The loss is the objective plus weight × penalty per sample; "loss" stays the objective."""
    from neuralode.experiments._run.distributed import World
    from neuralode.experiments.cnf.task import CNFConfig, CNFTask

    task = CNFTask(CNFConfig(task="ml", model="cnf", width=2, t1=1.0, iters=2, iters_per_epoch=2,
                             batch_size=8, kinetic=0.5, tol=1e-3))  # fmt: skip
    task.setup(World())
    batch = next(iter(task.train_batches(0, World())))
    loss, sums = task.loss(task.model, batch)
    expected = sums["nll"] / 8 + 0.5 * sums["kinetic"] / 8
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)
    assert sums["kinetic"] > 0 and sums["loss"] == sums["nll"]


def test_nan_loss_stops_with_the_epoch_and_step(tmp_path, monkeypatch, capsys):
    from neuralode.experiments.cnf import task as cnf

    forward = cnf.FlowObjective.forward
    calls = {"n": 0}

    def poisoned(self, batch, noise):
        log_q, energy = forward(self, batch, noise)
        calls["n"] += 1
        return (log_q * float("nan") if calls["n"] == 3 else log_q), energy

    monkeypatch.setattr(cnf.FlowObjective, "forward", poisoned)
    assert _train(tmp_path / "run", "--model", "nf", "--width", "2") == 1
    assert "loss became nan at epoch 2, step 1 of 2" in capsys.readouterr().err


TINY_P5 = flows.Scale(("U1",), (2,), ("moons",), {"cnf": 2, "nf": 4}, {"cnf": 2, "nf": 2},
                      val_size=20, test_size=40, density_lr=3e-3)  # fmt: skip


def test_p5_writes_its_report_section(tmp_path, monkeypatch):
    monkeypatch.setitem(flows.SCALES, "demo", TINY_P5)
    started = record_runs(monkeypatch, flows)
    argv = [
        "reproduce",
        "--only",
        "p5",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--threads",
        "1",
        "--parallel",
        "1",
    ]
    assert main(argv) == 0
    assert started == ["u1-nf-k2", "u1-cnf-m2", "moons-cnf", "moons-nf"]
    report = (tmp_path / "REPORT.md").read_text()
    assert f"## {flows.FlowComparison.title}" in report
    assert "**Demo preset**" in report
    kl_row = next(line for line in report.splitlines() if line.startswith("| U1 |"))
    assert kl_row.count("±") == 2  # NF K = 2 and CNF M = 2
    assert (
        next(line for line in report.splitlines() if line.startswith("| moons |")).count("±") == 2
    )
    assert "cells (acceptance: most cells" in report
    assert "(acceptance: lower, also at equal iterations):" in report
    for link in ("p5/u1-cnf-m2/plots/fit.png", "p5/moons-cnf/plots/flow.png",
                 "p5/moons-nf/plots/flow.png"):  # fmt: skip
        assert f"]({link})" in report and (tmp_path / link).is_file()
    assert "constant lr 0.003." in report
    for run, lr in (("u1-cnf-m2", 3e-3), ("u1-nf-k2", 3e-3), ("moons-nf", flows.ML["lr"])):
        assert json.loads((tmp_path / "p5" / run / "config.json").read_text())["lr"] == lr
    summary = json.loads((tmp_path / "p5" / "u1-nf-k2" / "summary.json").read_text())
    assert (
        summary["iters"] == 4 and summary["epochs"] == 4
    )  # iters // 10 rounds down to 1 per epoch
    # A second run reuses every finished job.
    assert main(argv) == 0
    assert len(started) == 4


def _summary(iters: int, scores: list[float], key: str = "kl") -> dict:
    history = [{"epoch": i + 1, f"val_{key}": v} for i, v in enumerate(scores)]
    return {"iters": iters, "epochs": len(scores), "history": history}


def test_equal_budget_reads_the_nf_at_the_cnf_iterations():
    cnf = _summary(1000, [0.9, 0.4, 0.6, 0.5])  # epochs of 250 iterations
    nf = _summary(5000, [0.7, 0.35, 0.1, 0.05, 0.01])  # epochs of 1000: only the first counts
    assert flows.equal_budget(cnf, nf, "kl") == (0.4, 0.7)
    nf_late = _summary(5000, [0.7, 0.1])  # its first epoch ends at 2500 > 1000
    assert flows.equal_budget(cnf, nf_late, "kl") is None
    # The verdict counts the cells at equal iterations apart from the final test KLs.
    runs = {
        flows.density_name("U1", "cnf", 2): {**cnf, "test_kl": 0.5},
        flows.density_name("U1", "nf", 2): {**nf, "test_kl": 0.02},
    }
    scale = flows.Scale(("U1",), (2,), (), {"cnf": 1000, "nf": 5000}, {})
    lines = flows.density_verdicts(scale, runs)
    assert "in 0 of 1 cells" in lines[0] and "does NOT match" in lines[0]
    assert "At equal iterations" in lines[2] and "in 1 of 1 cells (acceptance" in lines[2]


def test_ml_verdict_needs_the_cnf_lower_at_the_end_and_at_equal_iterations():
    cnf = {**_summary(500, [1.2, 1.0], "nll"), "test_nll": 0.9}
    nf_behind = {**_summary(1500, [1.5, 1.3, 1.1, 0.8, 0.7, 0.6], "nll"), "test_nll": 1.0}
    assert flows.ml_holds(cnf, nf_behind)  # at 500 iterations: 1.0 vs 1.3; at the end 0.9 vs 1.0
    nf_ahead_early = {**_summary(1500, [0.95, 0.9, 1.1, 1.2, 1.2, 1.2], "nll"), "test_nll": 1.0}
    assert not flows.ml_holds(cnf, nf_ahead_early)  # lower at the end, not at equal iterations
    assert not flows.ml_holds(cnf, {**nf_behind, "test_nll": 0.85})


def test_p5_claims_judge_equal_iterations_and_every_dataset(tmp_path):
    scale = flows.Scale(("U1",), (2,), ("circles", "moons"), {"cnf": 1000, "nf": 5000},
                        {"cnf": 500, "nf": 1500})  # fmt: skip
    cnf = {**_summary(1000, [0.9, 0.4, 0.6, 0.5]), "test_kl": 0.3, "train_seconds": 40.0}
    nf = {**_summary(5000, [0.7, 0.35, 0.1, 0.05, 0.01]), "test_kl": 0.2, "train_seconds": 50.0}
    ml_cnf = {**_summary(500, [1.2, 1.0], "nll"), "test_nll": 0.9, "train_seconds": 60.0,
              "iters": 500}  # fmt: skip
    ml_nf = {**_summary(1500, [1.5, 1.3, 1.1, 0.8, 0.7, 0.6], "nll"), "test_nll": 1.0,
             "train_seconds": 70.0}  # fmt: skip
    runs = {
        flows.density_name("U1", "cnf", 2): cnf,
        flows.density_name("U1", "nf", 2): nf,
        flows.ml_name("circles", "cnf"): ml_cnf,
        flows.ml_name("circles", "nf"): ml_nf,
    }
    planner = flows.FlowComparison()
    ctx = Context("demo", tmp_path, 0, None, False, "digits", "")
    with (mock.patch.dict(flows.SCALES, {"demo": scale}),
          mock.patch.object(flows.FlowComparison, "_runs", lambda self, ctx: runs)):  # fmt: skip
        claims = planner.claims(ctx)
    final, even, circles, moons = claims
    assert final.holds is False and "training 40 s vs 50 s" in final.ours
    assert even.holds is True and "at equal iterations (1,000)" in even.claim
    assert "U1 at 2: 0.400 vs 0.700" in even.ours
    assert circles.holds is True and "two circles" in circles.claim
    assert moons.holds is None and moons.ours == "not run"
    # Where the budgets cannot settle it, the comparison at its own budgets is only reported.
    unjudged = dataclasses.replace(scale, judge_budgets=False)
    with (mock.patch.dict(flows.SCALES, {"demo": unjudged}),
          mock.patch.object(flows.FlowComparison, "_runs", lambda self, ctx: runs)):  # fmt: skip
        final, even, *_ = planner.claims(ctx)
        lines = flows.density_verdicts(unjudged, runs)
    assert final.holds is None and final.note == flows.NOT_JUDGED_BUDGETS
    assert even.holds is True
    assert "not judged at this budget" in lines[0]


def test_the_most_cells_verdict_waits_for_the_cells_not_run():
    # Of 3 planned cells: one CNF win decides nothing, two decide "matches"; two NF wins
    # decide "does NOT match" whatever the third cell gives.
    scale = flows.Scale(("U1", "U2", "U3"), (2,), (), {"cnf": 1000, "nf": 5000}, {})

    def verdict(*cells: tuple[str, float, float]) -> str:
        runs = {}
        for target, cnf_kl, nf_kl in cells:
            runs[flows.density_name(target, "cnf", 2)] = {
                **_summary(1000, [1.0]),
                "test_kl": cnf_kl,
            }
            runs[flows.density_name(target, "nf", 2)] = {**_summary(5000, [1.0]), "test_kl": nf_kl}
        return flows.density_verdicts(scale, runs)[0]

    one = verdict(("U1", 0.1, 0.2))
    assert "1 of 1 cells run (3 planned)" in one and "undecided, 2 of 3 cells not run yet" in one
    assert verdict(("U1", 0.1, 0.2), ("U2", 0.1, 0.2)).endswith("matches.")
    lost = verdict(("U1", 0.3, 0.2), ("U3", 0.3, 0.2))
    assert "does NOT match" in lost and "The NF is lower for U1 at 2" in lost
    assert "(acceptance: most cells, after Fig. 4): matches." in verdict(
        ("U1", 0.1, 0.2), ("U2", 0.1, 0.2), ("U3", 0.3, 0.2)
    )
