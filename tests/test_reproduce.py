"""`neuralode reproduce` end to end at a tiny scale: the report, reuse after a kill."""

from __future__ import annotations

import pytest

pytest.importorskip("tyro")
pytest.importorskip("sklearn")

from cli_helpers import record_runs  # noqa: E402
from neuralode.experiments import cnf_plots, memory, reproduce, training  # noqa: E402
from neuralode.experiments.cli import main  # noqa: E402
from neuralode.experiments.memory import MemoryPoint  # noqa: E402
from neuralode.experiments.protocols import PLANNERS  # noqa: E402
from neuralode.experiments.protocols import classification as p1  # noqa: E402
from neuralode.experiments.protocols import flows as p5  # noqa: E402
from neuralode.experiments.protocols import latent as p4  # noqa: E402
from neuralode.experiments.protocols import memory as p2  # noqa: E402


@pytest.fixture
def tiny(monkeypatch):
    """Every protocol at a size that runs in seconds, on the digits."""
    monkeypatch.setattr(p1, "DIGITS_SCALE", p1.Scale(64, 64, 1, {8: ("odenet", "resnet1", "mlp")}))
    monkeypatch.setitem(p1.SWEEPS, "demo", ("1e-1,1e-3", 20, 1))
    monkeypatch.setattr(reproduce, "choose_images", lambda config: ("digits", "the digits"))
    small = [MemoryPoint(m, "rk4", n, width=8, batch=4) for n in (2.0, 8.0) for m in p2.METHODS]
    monkeypatch.setattr(p2, "points", lambda preset: small)
    # In-process measurement: the fresh-process path is tested once in test_memory.py.
    monkeypatch.setattr(p2, "measure", memory.measure_here)
    monkeypatch.setitem(p4.SCALES, "demo", p4.Scale(60, 20, 10, 10, 10, 10, (10,), (0.3,)))
    tiny_p5 = p5.Scale(("U1",), (2,), ("moons",), {"cnf": 2, "nf": 2}, {"cnf": 2, "nf": 2}, 20, 40)
    monkeypatch.setitem(p5.SCALES, "demo", tiny_p5)
    for name, value in (("SAMPLES", 500), ("GRID", 16), ("SNAPSHOT_GRID", 8)):
        monkeypatch.setattr(cnf_plots, name, value)


def _reproduce(out, *extra):
    return main(["reproduce", "--out", str(out), "--no-progress", "--threads", "1", *extra])


def test_demo_pipeline_writes_every_section(tmp_path, tiny):
    assert _reproduce(tmp_path) == 0
    report = (tmp_path / "REPORT.md").read_text()
    for planner in PLANNERS.values():
        assert f"## {planner.title}" in report
    assert "| odenet | 8 |" in report and "| mlp | 8 |" in report
    assert "NFE-B / NFE-F is" in report  # the Figure 3 verdicts were computed
    assert "| rk4 n=8 |" in report and "MB per function evaluation" in report
    for link in ("p1/odenet-w8/plots/learning_curves.png", "p1/odenet-w8/figure3/figure3.png"):
        assert f"]({link})" in report
        assert (tmp_path / link).is_file()


def test_rerun_after_a_kill_reuses_finished_runs(tmp_path, tiny, monkeypatch):
    started = []
    real = training.run_training

    def counting(config, task):
        started.append(config.out.name)
        if config.out.name == "mlp-w8" and started.count("mlp-w8") == 1:
            raise KeyboardInterrupt  # killed during the last P1 run
        return real(config, task)

    monkeypatch.setattr(p1, "run_training", counting)
    assert _reproduce(tmp_path, "--only", "p1,p3") == 130  # Ctrl-C's status, no traceback
    assert started == ["odenet-w8", "resnet1-w8", "mlp-w8"]
    assert not (tmp_path / "REPORT.md").exists()

    assert _reproduce(tmp_path, "--only", "p1,p3") == 0
    # Finished runs were reused; only the interrupted one ran again.
    assert started == ["odenet-w8", "resnet1-w8", "mlp-w8", "mlp-w8"]
    assert _reproduce(tmp_path, "--only", "p3") == 0
    assert started.count("odenet-w8") == 1  # P3's training run is P1's, already finished


def test_a_failed_run_is_reported_and_retried(tmp_path, tiny, monkeypatch, capsys):
    real = training.run_training

    def flaky(config, task):
        if config.out.name == "resnet1-w8":
            raise training.TrainingDiverged("the training loss became nan (injected)")
        return real(config, task)

    monkeypatch.setattr(p1, "run_training", flaky)
    assert _reproduce(tmp_path, "--only", "p1") == 1
    assert "1 run(s) failed (p1/resnet1-w8)" in capsys.readouterr().err
    report = (tmp_path / "REPORT.md").read_text()
    assert "- `p1/resnet1-w8`: TrainingDiverged: the training loss became nan" in report
    assert "| odenet | 8 |" in report and "| mlp | 8 |" in report  # the others finished
    monkeypatch.setattr(p1, "run_training", real)
    assert _reproduce(tmp_path, "--only", "p1") == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "| resnet1 | 8 |" in report and "Runs that failed" not in report


def test_only_names_unknown_protocols(capsys):
    try:
        status = main(["reproduce", "--only", "p1,p9"])
    except SystemExit as exc:
        status = exc.code
    assert status != 0
    assert "--only must list protocols from" in capsys.readouterr().err


def test_runs_split_a_preset_and_report_only_runs_nothing(tmp_path, tiny, monkeypatch):
    started = record_runs(monkeypatch, p5)
    assert _reproduce(tmp_path, "--only", "p5", "--runs", "u1-nf-k2,moons-nf") == 0
    assert started == ["u1-nf-k2", "moons-nf"]
    report = (tmp_path / "REPORT.md").read_text()
    assert "| U1 | " in report and "–" in report  # the CNF's cells are not run yet
    assert _reproduce(tmp_path, "--only", "p5", "--report-only") == 0
    assert started == ["u1-nf-k2", "moons-nf"]
    assert _reproduce(tmp_path, "--only", "p5", "--runs", "u1-cnf-m2") == 0
    assert started[-1] == "u1-cnf-m2"
    wall_times = (tmp_path / "wall_times.json").read_text()
    assert "p5/u1-nf-k2" in wall_times and "p5/u1-cnf-m2" in wall_times


def test_runs_names_unknown_runs(capsys):
    try:
        status = main(["reproduce", "--only", "p5", "--runs", "u9-cnf-m2", "--out", "/nonexistent"])
    except SystemExit as exc:
        status = exc.code
    assert status != 0
    err = capsys.readouterr().err
    assert "--runs names u9-cnf-m2" in err and "u1-cnf-m8" in err
