"""P6 of `neuralode reproduce` (beyond the paper) at a tiny size, and its verdicts."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("tyro")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from cli_helpers import record_runs  # noqa: E402

from neuralode.experiments import reproduce  # noqa: E402
from neuralode.experiments._run import training  # noqa: E402
from neuralode.experiments.classify import protocol as p1  # noqa: E402
from neuralode.experiments.cli import main  # noqa: E402
from neuralode.experiments.cnf import protocol as p5  # noqa: E402
from neuralode.experiments.fast_dynamics import protocol as p6  # noqa: E402
from neuralode.experiments.fast_dynamics.verdicts import judge  # noqa: E402


@pytest.fixture
def tiny(monkeypatch):
    """P6 in seconds: P1's ODE-Net at width 8 on 64 digits, the CNF for 2 iterations."""
    monkeypatch.setattr(p1, "DIGITS_SCALE", p1.Scale(64, 64, 1, {8: ("odenet",)}))
    monkeypatch.setattr(p6, "WIDTH", 8)
    monkeypatch.setattr(reproduce, "choose_images", lambda config: ("digits", "the digits"))
    tiny_p5 = p5.Scale(("U1",), (2,), ("moons",), {"cnf": 2, "nf": 2}, {"cnf": 2, "nf": 2}, 20, 40)
    monkeypatch.setitem(p5.SCALES, "demo", tiny_p5)
    # Each run's own figures are tested with its command; P6 draws its own from the summaries.
    monkeypatch.setattr(training, "_draw", lambda task, run, history: [])


def test_p6_trains_every_variant_and_writes_its_section(tmp_path, tiny, monkeypatch):
    odenets, flows = record_runs(monkeypatch, p1), record_runs(monkeypatch, p5)
    argv = ["reproduce", "--only", "p6", "--out", str(tmp_path), "--no-progress",
            "--parallel", "1", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    assert odenets == [p6.odenet_name(v) for v in p6.ODENET_VARIANTS]
    assert flows == [p6.cnf_name("moons", v) for v in p6.CNF_VARIANTS]
    report = (tmp_path / "REPORT.md").read_text()
    section = report[report.index(f"## {p6.FastDynamics.title}") :]
    for variant in p6.ODENET_VARIANTS:
        assert f"| {p6.LABELS[variant]} |" in section
    assert "**CNF by maximum likelihood on moons (P5 b)**" in section
    # Every regularised row has a verdict; the summary has one claim per regulariser.
    rows = [r for r in section.splitlines() if r.startswith("| ") and "RNODE" in r]
    assert rows and all(re.search(r"\*\*(holds|does NOT hold)\*\*", r) for r in rows)
    summary = report[report.index("## What this run shows") : report.index("## P6")]
    claims = [r for r in summary.splitlines() if r.startswith("| P6 |")]
    assert len(claims) == len(p6.ODENET_VARIANTS) - 1 + len(p6.CNF_VARIANTS) - 1
    for name in ("nfe_odenet.png", "nfe_cnf.png"):
        assert (tmp_path / "p6" / name).stat().st_size > 10_000
        assert f"](p6/{name})" in section
        assert f"](p6/{name})" in summary  # the claims link their figure
    config = (tmp_path / "p6" / "odenet-anode" / "config.json").read_text()
    assert '"augment_dim": 8' in config


def _classify(accuracy, nfe, seconds):
    return {"test_accuracy": accuracy, "test_nfe_forward": nfe, "train_seconds": seconds,
            "history": [{"epoch": 1, "nfe_forward": nfe, "nfe_backward": 2 * nfe}]}  # fmt: skip


def test_p6_verdict_needs_every_target():
    base = _classify(0.900, 40.0, 100.0)
    assert judge(_classify(0.898, 20.0, 90.0), base, "accuracy").holds
    misses = judge(_classify(0.890, 24.0, 120.0), base, "accuracy").misses
    assert misses == ("test NFE 0.60× > 0.5×", "1.00 points lost > 0.3",
                      "training 1.20× the time")  # fmt: skip
    row = {"nfe_forward": 1.0, "nfe_backward": 1.0}
    cnf = {"test_nll": 1.00, "test_nll_stderr": 0.01, "test_nfe_forward": 100.0,
           "train_seconds": 10.0, "history": [row]}  # fmt: skip
    worse = {**cnf, "test_nll": 1.03, "test_nfe_forward": 40.0, "train_seconds": 9.0}
    assert judge(worse, cnf, "nll").misses == ("0.030 nats worse > 0.02",)
    assert judge({**worse, "test_nll": 1.01}, cnf, "nll").holds
