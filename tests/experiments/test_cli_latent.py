"""`neuralode train latent-ode` and P4 of `neuralode reproduce` end to end on tiny runs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("tyro")
pytest.importorskip("matplotlib")

from cli_helpers import assert_refused, assert_resume_is_exact, metrics_rows  # noqa: E402

from neuralode.experiments._run.distributed import World  # noqa: E402
from neuralode.experiments._run.protocol import Context  # noqa: E402
from neuralode.experiments.cli import main  # noqa: E402
from neuralode.experiments.latent import protocol as p4  # noqa: E402
from neuralode.experiments.latent.task import LatentConfig, LatentTask  # noqa: E402
from neuralode.experiments.reproduce import ReproduceConfig, reproduce  # noqa: E402

TINY = [
    "--spirals", "60", "--test-size", "20", "--val-size", "10", "--n-obs", "10",
    "--iters", "20", "--eval-every", "10", "--batch-size", "10", "--tol", "1e-3",
    "--no-progress", "--threads", "1",
]  # fmt: skip


def _train(out: Path, *extra: str) -> int:
    return main(["train", "latent-ode", *TINY, "--out", str(out), *extra])


@pytest.mark.parametrize("model", ["latent-ode", "rnn", "rnn-dt"])
def test_train_writes_the_run_layout(tmp_path, model):
    out = tmp_path / "run"
    assert _train(out, "--model", model) == 0
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "metrics.csv", "checkpoint.pt", "best.pt", "summary.json"} <= names
    rows = metrics_rows(out)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split_sizes"] == {"train": 30, "val": 10, "test": 20}
    assert summary["iters"] == 20 and summary["iters_per_epoch"] == 10
    # Extrapolating 100 points after a window the model barely learnt: finite, not small.
    assert 0.0 < summary["test_rmse_clean"] < 50 and 0.0 < summary["test_rmse"] < 50
    # By horizon too; the latent ODE also reconstructs the window (the RNNs cannot).
    assert all(0.0 < summary[f"test_rmse_clean_{k}"] < 50 for k in (10, 25, 50))
    assert ("test_window_rmse_clean" in summary) == (model == "latent-ode")
    assert summary["train_seconds"] > 0
    assert "extrapolation.png" in summary["plots"]
    for plot in summary["plots"]:
        assert (out / "plots" / plot).stat().st_size > 10_000
    ode = model == "latent-ode"
    assert (float(rows[0]["nfe_forward"]) > 0) == ode
    assert (summary["test_nfe_forward"] > 0) == ode
    assert ("train_kl" in rows[0]) == ode


def test_regularisers_train_the_latent_ode(tmp_path):
    out = tmp_path / "reg"
    assert _train(out, "--kinetic", "0.1", "--jacobian", "0.1", "--iters", "10") == 0
    row = metrics_rows(out)[-1]
    assert float(row["train_kinetic"]) > 0 and float(row["train_jacobian"]) > 0
    config = json.loads((out / "config.json").read_text())
    assert (config["kinetic"], config["jacobian"], config["steer"]) == (0.1, 0.1, 0.0)


def test_resume_after_a_kill_continues_exactly(tmp_path, monkeypatch):
    assert_resume_is_exact(_train, tmp_path, monkeypatch, ["--kl-warmup", "15"])


@pytest.mark.parametrize("clip", [None, 0.01])
def test_grad_clip_bounds_every_step_the_optimiser_takes(tmp_path, monkeypatch, clip):
    norms: list[float] = []
    adam_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads if g is not None]))))  # fmt: skip
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    flags = ["--grad-clip", str(clip)] if clip else ["--grad-clip", "None"]
    assert _train(tmp_path / "run", *flags) == 0
    assert len(norms) == 20
    if clip:
        assert max(norms) <= clip * (1 + 1e-5)
    else:  # the bound above is not met by accident: unclipped norms are far larger
        assert min(norms) > 100 * 0.01


def test_iterations_walk_through_reshuffles_and_warm_up_the_kl():
    config = LatentConfig(spirals=60, test_size=20, val_size=10, batch_size=7, kl_warmup=4)
    task = LatentTask(config)
    task.setup(World())
    per_pass = 30 // 7
    first = torch.cat([task._indices(k) for k in range(per_pass)])
    assert len(first) == len(set(first.tolist())) == 28  # a pass: no spiral twice
    second = torch.cat([task._indices(k) for k in range(per_pass, 2 * per_pass)])
    assert not torch.equal(first, second)  # a new shuffle each pass
    again = LatentTask(config)
    again.setup(World())
    assert torch.equal(again._indices(5), task._indices(5))  # from the seed alone
    assert [task.kl_weight(k) for k in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    # The test and validation spirals are disjoint from the training ones; the noise-free
    # copy of the test spirals lies under their observations.
    test, truth = task.splits["test"], task.splits["truth"]
    assert torch.equal(test.target_clean, truth.target_clean)
    on_grid = (truth.times[:, None, :] == test.times[:, :, None]).float().argmax(-1)
    clean_at_obs = torch.gather(truth.values, 1, on_grid[..., None].expand(-1, -1, 2))
    assert (test.values - clean_at_obs).std() == pytest.approx(0.3, rel=0.15)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--iters", "25"], "--iters 25 must be a multiple of --eval-every 10"),
        (["--n-obs", "150"], "--n-obs must lie in [1, 100], got 150"),
        (["--val-size", "40"], "--spirals 60 leaves no training spirals"),
        (["--batch-size", "40"], "--batch-size 40 is more than the 30 training spirals"),
        (["--noise", "0"], "--noise 0 needs --obs-std"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--grad-clip", "-1"], "--grad-clip must be > 0, got -1.0"),
        (["--seminorm"], "--seminorm needs --adjoint backsolve"),
        (["--steer", "0.1"], "--steer does not apply to train latent-ode"),
        (["--local-error", "1"], "--local-error applies to train classify's ODE block only"),
        (["--model", "rnn", "--kinetic", "1"], "--kinetic applies to --model latent-ode only"),
    ],
)
def test_bad_flags_name_the_flag(tmp_path, capsys, args, message):
    assert_refused(lambda: _train(tmp_path / "run", *args), capsys, message)


def test_p4_planner_writes_its_report_section(tmp_path, monkeypatch):
    tiny = p4.Scale(60, 20, 10, 10, 10, 10, (10,), (0.3,))
    monkeypatch.setitem(p4.SCALES, "demo", tiny)
    config = ReproduceConfig(
        preset="demo", only="p4", out=tmp_path, threads=1, parallel=1, progress=False
    )
    report = reproduce(config).read_text()
    assert "## P4 — Table 2" in report
    assert "### Noise 0.3" in report
    for model in ("latent ODE", "RNN", "RNN + Δt"):
        assert f"| {model} | 10 |" in report
    assert "Smaller than the protocol's 1000 spirals" in report
    assert report.count("- n = 10: latent ODE") == 1
    assert "Acceptance (latent ODE below both RNNs at every n" in report
    assert "](p4/latent-ode-n10-noise0.3/plots/extrapolation.png)" in report
    summary = json.loads((tmp_path / "p4" / "rnn-n10-noise0.3" / "summary.json").read_text())
    assert f"{summary['test_rmse_clean']:.4f}" in report
    # The table by horizon: the RNN's error over the first 10 points, no window for it.
    ode = json.loads((tmp_path / "p4" / "latent-ode-n10-noise0.3" / "summary.json").read_text())
    assert f"| RNN | 10 | {summary['test_rmse_clean_10']:.4f} |" in report
    assert f"{ode['test_window_rmse_clean']:.4f} |" in report
    walls = json.loads((tmp_path / "wall_times.json").read_text())
    assert len(walls) == 3
    # A second reproduce reuses every finished run.
    reproduce(config)
    assert json.loads((tmp_path / "wall_times.json").read_text()) == walls


def _found(table: dict[str, dict[int, float]]) -> dict[tuple[str, int], dict[str, float]]:
    return {(m, n): {"test_rmse_clean": v} for m, row in table.items() for n, v in row.items()}


def test_p4_verdicts_follow_the_numbers():
    paper = _found(p4.PAPER_TABLE2 | {"rnn-dt": {30: 0.30, 50: 0.25, 100: 0.17}})
    lines = p4.verdicts(paper, (30, 50, 100))
    assert lines[0].startswith("- n = 30: latent ODE 0.1642 vs the better RNN (RNN + Δt) 0.3000")
    assert "below both RNNs: yes" in lines[2]
    assert (
        lines[-2] == "- The gap is widest at n = 30 (paper: at n = 30, the sparsest data): matches."
    )
    assert lines[-1].endswith(": met.")
    worse = _found({"latent-ode": {30: 0.2, 50: 0.1}, "rnn": {30: 0.25, 50: 0.3}})
    lines = p4.verdicts(worse, (30, 50))
    widest = next(line for line in lines if "widest" in line)
    assert "widest at n = 50" in widest and "does NOT match" in widest
    assert "Runs missing (failed or not finished) at n = 30, 50" in lines[-2]
    assert lines[-1].endswith("NOT met.")
    losing = _found({"latent-ode": {30: 0.4}, "rnn": {30: 0.3}, "rnn-dt": {30: 0.5}})
    lines = p4.verdicts(losing, (30,))
    assert "below both RNNs: NO" in lines[0] and lines[-1].endswith("NOT met.")


def test_p4_restarts_train_every_model_alike_on_the_same_spirals(tmp_path):
    s = p4.Scale(60, 20, 10, 10, 10, 10, (10,), (0.3,), restarts=2)
    ctx = Context("demo", tmp_path, 5, None, False, "digits", "")
    for model in p4.MODELS:
        first, second = (p4._config(ctx, s, model, 10, 0.3, r) for r in range(2))
        # Another training seed (initialisation, batches, sampling), the same spirals.
        assert (first.seed, second.seed) == (5, 15) and first.data_seed == second.data_seed == 5
        assert dataclasses.replace(second, seed=5, out=first.out) == first
        assert second.out == tmp_path / "p4" / f"{model}-n10-noise0.3-restart1"


def _fake_p4_run(folder: Path, val: float, test: float) -> None:
    folder.mkdir(parents=True)
    summary = {"test_rmse_clean": test, "test_rmse": test, "test_nfe_forward": 30,
               "train_seconds": 1.0, "best_val_rmse": val, "parameters": 100, "best_epoch": 1,
               "iters_per_epoch": 1, "history": [{"nfe_forward": 30}]}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))


def test_p4_keeps_the_restart_with_the_lowest_validation_rmse_never_the_test(tmp_path, monkeypatch):
    s = p4.Scale(60, 20, 10, 10, 10, 10, (30,), (0.3,), restarts=3)
    monkeypatch.setitem(p4.SCALES, "demo", s)
    ctx = Context("demo", tmp_path, 0, None, False, "digits", "")
    # (validation, test) per restart: the lowest validation RMSE has the worst test RMSE.
    runs = {"latent-ode": [(2.0, 0.5), (1.0, 3.0), (1.5, 0.1)],
            "rnn": [(2.5, 2.5), (2.4, 2.6)],  # restart 2 did not finish
            "rnn-dt": [(1.9, 1.9), (1.9, 1.0), (1.8, 2.0)]}  # fmt: skip
    for model, pairs in runs.items():
        for r, (val, test) in enumerate(pairs):
            _fake_p4_run(ctx.folder("p4", p4.run_name(model, 30, 0.3, r)), val, test)
    found = p4._summaries(ctx, s, 0.3)
    assert {m: found[(m, 30)]["restart"] for m in p4.MODELS} == {
        "latent-ode": 1, "rnn": 1, "rnn-dt": 2}  # fmt: skip
    assert found[("latent-ode", 30)]["test_rmse_clean"] == 3.0
    (claim,) = p4.TableTwo().claims(ctx)
    assert claim.ours == "n = 30: 3.0000 vs 2.0000 (RNN + Δt)" and claim.holds is False
    walls = {f"p4/{p4.run_name('latent-ode', 30, 0.3, r)}": 10.0 + r for r in range(3)}
    section = p4.TableTwo().section(ctx, walls)
    assert "| latent ODE | 30 | 3.0000 |" in section
    assert "| 33 |" in section  # the latent ODE's wall time: all three restarts
    assert "0: 2.000, **1: 1.000**, 2: 1.500" in section
    assert "Every model is trained 3 times on the same spirals (training seeds 0, 10, 20" in section


def test_p4_select_breaks_ties_by_the_earlier_restart_and_never_keeps_nan():
    def runs(*scores):
        return {r: {"best_val_rmse": v} for r, v in enumerate(scores)}

    assert p4.select(runs(1.0, 0.5, 0.5)) == 1
    assert p4.select(runs(float("nan"), 2.0)) == 1
    assert p4.select({3: {"best_val_rmse": 1.0}}) == 3


def test_p4_demo_trains_every_model_from_several_seeds():
    """The demo's verdict rests on more than one training per model (docs/protocols.md)."""
    s = p4.SCALES["demo"]
    assert s.restarts == 3 and (s.n_obs, s.noises) == ((30,), (0.3,))
    ctx = Context("demo", Path("out"), 7, None, False, "digits", "")
    names = sorted(job.name for job in p4.TableTwo().jobs(ctx))
    assert names == sorted(p4.run_name(m, 30, 0.3, r) for m in p4.MODELS for r in range(3))
    assert [p4.restart_seed(7, r) for r in range(3)] == [7, 17, 27]
    assert p4.restart_seed(2**63 - 1, 1) == 9  # wraps into torch's seed range
