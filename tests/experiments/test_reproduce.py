"""`neuralode reproduce` end to end at a tiny scale: the report, reuse after a kill."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest

pytest.importorskip("tyro")
pytest.importorskip("sklearn")

from cli_helpers import record_runs  # noqa: E402

from neuralode.experiments import reproduce  # noqa: E402
from neuralode.experiments._run import failures, training  # noqa: E402
from neuralode.experiments._run.protocol import Context  # noqa: E402
from neuralode.experiments.classify import protocol as p1  # noqa: E402
from neuralode.experiments.cli import main  # noqa: E402
from neuralode.experiments.cnf import plots as cnf_plots  # noqa: E402
from neuralode.experiments.cnf import protocol as p5  # noqa: E402
from neuralode.experiments.latent import protocol as p4  # noqa: E402
from neuralode.experiments.memory import measurement as memory  # noqa: E402
from neuralode.experiments.memory import protocol as p2  # noqa: E402
from neuralode.experiments.memory.measurement import MemoryPoint  # noqa: E402
from neuralode.experiments.registry import PLANNERS  # noqa: E402
from neuralode.experiments.report_html import to_html  # noqa: E402


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
    return main(
        [
            "reproduce",
            "--out",
            str(out),
            "--no-progress",
            "--parallel",
            "1",
            "--threads",
            "1",
            *extra,
        ]
    )


def test_demo_pipeline_writes_every_section(tmp_path, tiny):
    assert _reproduce(tmp_path) == 0
    report = (tmp_path / "REPORT.md").read_text()
    for planner in PLANNERS.values():  # the paper's protocols; P6 only when named
        assert (f"## {planner.title}" in report) == planner.default
    assert not PLANNERS["p6"].default
    # The summary comes first, one row per claim of every protocol, each with a verdict.
    summary = report[report.index("## What this run shows") : report.index("## P1")]
    rows = [r for r in summary.splitlines() if re.match(r"\| P\d \|", r)]
    # (The tiny P1 plans no ResNet-6, so it has no claim to check.)
    assert {r[2:4] for r in rows} == {"P2", "P3", "P4", "P5"}
    assert all(
        re.search(r"\*\*(holds|does NOT hold)\*\*|reported|undecided|not run", r) for r in rows
    )
    assert "](p1/odenet-w8/figure3/figure3.png)" in summary
    _summary_verdicts_are_the_details_verdicts(report)
    page = (tmp_path / "REPORT.html").read_text()
    assert page.count('src="data:image/png;base64,') == report.count("![")
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
            raise failures.TrainingDiverged("the training loss became nan (injected)")
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
    assert "--runs names u9-cnf-m2" in err and "u1-cnf-m2" in err


def _summary_verdicts_are_the_details_verdicts(report: str) -> None:
    """Each claim's verdict in "What this run shows" is the one its section computes."""
    details = report[report.index("## P2") :]
    adjoint = re.findall(r"- Adjoint, rk4: .*\((flat within ±10%: matches|NOT flat)", details)
    assert adjoint and ("**holds**" in _row(report, "P2 | Adjoint")) == ("matches" in adjoint[0])
    backprop = re.search(r"- Backprop: .*: (matches|does NOT match)\.", details)
    assert backprop is not None
    assert ("**holds**" in _row(report, "P2 | Backprop")) == (backprop[1] == "matches")
    p4 = re.search(
        r"- Acceptance \(latent ODE below both RNNs at every n\): (met|NOT met)", details
    )
    assert p4 is not None
    assert ("**holds**" in _row(report, "P4")) == (p4[1] == "met")
    a = re.search(r"- \(a\) The CNF's KL .*: (matches|does NOT match)\.", details)
    assert a is not None and ("**holds**" in _row(report, "P5 | CNF with")) == (a[1] == "matches")


def _row(report: str, claim_start: str) -> str:
    return next(r for r in report.splitlines() if r.startswith(f"| {claim_start}"))


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A one-colour PNG (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))  # fmt: skip


REPORT = """# A report

Intro with **bold**, *italic*, `code_span` and a [link to the figure](p1/plots/red.png).

## What this run shows

| | claim | verdict | figure |
|---|---|---|---|
| P1 | the claim | **holds** | [figure](p1/plots/red.png) |

- a list item
  that wraps
- another item with a [local file](p1/summary.json)

![A red square](p1/plots/red.png)

![A figure that was not drawn](p1/plots/missing.png)

```
code block <b>
```
"""


def _page(tmp_path) -> str:
    (tmp_path / "p1" / "plots").mkdir(parents=True)
    (tmp_path / "p1" / "plots" / "red.png").write_bytes(_png(240, 160, (220, 20, 20)))
    return to_html(REPORT, tmp_path)


def test_html_report_embeds_figures_and_refers_to_nothing_outside(tmp_path):
    page = _page(tmp_path)
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources, "the page has an image and links"
    outside = [s for s in sources if not s.startswith(("data:", "#"))]
    assert not outside, f"the page loads or links outside itself: {outside}"
    assert page.count('src="data:image/png;base64,') == 1  # the figure, embedded once
    anchor = re.search(r'<img id="([\w-]+)"', page)
    assert anchor is not None and page.count(f'href="#{anchor[1]}"') == 2  # links → the figure
    assert "<table>" in page and "<th>claim</th>" in page and "<strong>holds</strong>" in page
    assert "<li>a list item that wraps</li>" in page and "<em>italic</em>" in page
    assert "<code>code_span</code>" in page and "code block &lt;b&gt;" in page
    assert "figure not available" in page and "<code>p1/summary.json</code>" in page
    assert '<h2 id="what-this-run-shows">' in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (make browser)")
def test_html_report_renders_in_a_headless_browser(tmp_path):
    """Chromium opens the page offline and draws the text, the table and the figure."""
    image = pytest.importorskip("PIL.Image")
    page = tmp_path / "REPORT.html"
    page.write_text(_page(tmp_path))
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1000,900", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = image.open(shot).convert("RGB")
    colours = pixels.getcolors(maxcolors=1 << 20) or []
    ink = sum(n for n, c in colours if sum(c) < 600) / (pixels.width * pixels.height)
    assert 0.005 < ink < 0.9, f"the page looks blank or solid ({ink:.1%} non-white)"
    red = sum(n for n, (r, g, b) in colours if r > 180 and g < 60 and b < 60)
    assert red > 0.5 * 240 * 160, "the embedded figure was not drawn"


def test_parallel_runs_wait_for_what_they_need(tmp_path, tiny, monkeypatch):
    """Two runs at a time; P3's sweep starts only once P1's ODE-Net has finished."""
    events, lock, active = [], threading.Lock(), [0, 0]  # active now, most at once

    def track(name, work):
        def run(*args, **kwargs):
            with lock:
                active[0] += 1
                active[1] = max(active)
                events.append(("start", name))
            try:
                time.sleep(0.2)  # long enough for the other slot to fill
                return work(*args, **kwargs)
            finally:
                with lock:
                    active[0] -= 1
                    events.append(("end", name))

        return run

    real_train, real_sweep = p1.run_training, p1.evaluate_classify
    monkeypatch.setattr(p1, "run_training", lambda c, t: track(c.out.name, real_train)(c, t))
    monkeypatch.setattr(p1, "evaluate_classify", track("sweep", real_sweep))
    # Threads instead of processes, so that the tiny sizes patched here apply.
    monkeypatch.setattr(
        reproduce, "worker_pool", lambda n, threads: concurrent.futures.ThreadPoolExecutor(n)
    )
    assert _reproduce(tmp_path, "--only", "p1,p3", "--parallel", "2") == 0
    assert events.index(("start", "sweep")) > events.index(("end", "odenet-w8"))
    assert active[1] == 2
    assert sorted(n for e, n in events if e == "start") == ["mlp-w8", "odenet-w8", "resnet1-w8",
                                                            "sweep"]  # fmt: skip


def test_parallel_run_failure_skips_what_needs_it(tmp_path, tiny, monkeypatch, capsys):
    real = training.run_training

    def flaky(config, task):
        if config.out.name == "odenet-w8":
            raise failures.TrainingDiverged("the training loss became nan (injected)")
        return real(config, task)

    monkeypatch.setattr(p1, "run_training", flaky)
    monkeypatch.setattr(
        reproduce, "worker_pool", lambda n, threads: concurrent.futures.ThreadPoolExecutor(n)
    )
    assert _reproduce(tmp_path, "--only", "p1,p3", "--parallel", "2") == 1
    report = (tmp_path / "REPORT.md").read_text()
    assert "- `p1/odenet-w8`: TrainingDiverged" in report
    assert "- `p3/sweep`: not run, because p1/odenet-w8 failed" in report
    assert "| mlp | 8 |" in report


@pytest.mark.slow
def test_parallel_runs_in_worker_processes(tmp_path):
    """The real pool: two spawned single-threaded workers, their output in OUT/logs."""
    names = "direct rk4 n=4,backsolve rk4 n=4"
    assert main(["reproduce", "--out", str(tmp_path), "--no-progress", "--only", "p2",
                 "--parallel", "2", "--runs", names]) == 0  # fmt: skip
    for name in names.split(","):
        assert (tmp_path / "p2" / f"{name.replace(' ', '-')}.json").is_file()
    assert len(list((tmp_path / "logs").glob("p2-*rk4-n-4.log"))) == 2
    assert (tmp_path / "REPORT.html").is_file()


def _write_p4(ctx, table):
    for model, row in table.items():
        for n, rmse in row.items():
            folder = ctx.folder("p4", p4.run_name(model, n, 0.3))
            folder.mkdir(parents=True)
            summary = {"test_rmse_clean": rmse, "test_rmse": rmse, "test_nfe_forward": 30,
                       "train_seconds": 1.0, "best_val_rmse": rmse, "parameters": 100,
                       "best_epoch": 1, "iters_per_epoch": 1,
                       "history": [{"nfe_forward": 30}]}  # fmt: skip
            (folder / "summary.json").write_text(json.dumps(summary))


@pytest.mark.parametrize(
    ("table", "holds"),
    [
        ({"latent-ode": {30: 0.16, 50: 0.15}, "rnn": {30: 0.39, 50: 0.32}}, True),
        ({"latent-ode": {30: 0.2, 50: 0.1}, "rnn": {30: 0.25, 50: 0.3}}, False),  # widest at 50
        ({"latent-ode": {30: 0.4, 50: 0.1}, "rnn-dt": {30: 0.3, 50: 0.3}}, False),  # loses at 30
    ],
)
def test_p4_claim_is_the_sections_acceptance(tmp_path, monkeypatch, table, holds):
    monkeypatch.setitem(p4.SCALES, "demo", p4.Scale(60, 20, 10, 10, 10, 10, (30, 50), (0.3,)))
    ctx = Context("demo", tmp_path, 0, None, False, "digits", "")
    _write_p4(ctx, table)
    (claim,) = p4.TableTwo().claims(ctx)
    acceptance = p4.verdicts(p4._summaries(ctx, p4.SCALES["demo"], 0.3), (30, 50))[-1]
    assert claim.holds is holds and acceptance.endswith("NOT met." if not holds else ": met.")
    assert claim.ours.startswith("n = 30: ") and "n = 30: 0.1642 vs 0.3937" in claim.paper


def test_p5_findings_wait_like_the_section(tmp_path):
    """With cells missing that could still change the answer, neither decides."""
    scale = p5.Scale(("U1", "U2"), (8,), (), {"cnf": 10, "nf": 10}, {"cnf": 10, "nf": 10})

    def run(kl):
        return {"test_kl": kl, "iters": 10, "epochs": 1, "history": [{"epoch": 1, "val_kl": kl}]}

    runs = {p5.density_name("U1", "cnf", 8): run(0.1), p5.density_name("U1", "nf", 8): run(0.2)}
    assert p5.density_findings(scale, runs).holds is None
    assert "undecided, 1 of 2 cells not run yet" in p5.density_verdicts(scale, runs)[0]


def test_p1_claim_needs_the_gap_and_the_parameter_share():
    def run(error, parameters):
        history = [{"epoch": 1, "nfe_forward": 26.0, "nfe_backward": 26.0}]
        return {"test_accuracy": 1 - error / 100, "parameters": parameters, "history": history}

    close = {("odenet", 32): run(12.0, 52_938), ("resnet6", 32): run(11.2, 145_034)}
    assert p1.compare(close, 32).holds
    far = close | {("odenet", 32): run(12.3, 52_938)}
    assert not p1.compare(far, 32).holds  # 1.1 points above
    big = close | {("odenet", 32): run(11.0, 60_000)}
    assert not p1.compare(big, 32).holds  # 41% of the parameters
    assert "does NOT match" in p1.verdicts(big)[0] and p1.compare(close, 64) is None


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    # SIGKILL (or SIGTERM) reaches only the parent; its workers must not go on training.
    script = (
        "import os, sys, time\n"
        "from neuralode.experiments.reproduce import worker_pool\n"
        "pool = worker_pool(1, 1)\n"
        "print(pool.submit(os.getpid).result(), flush=True)\n"
        "pool.submit(time.sleep, 120)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail(f"worker {worker} still running 20 s after its parent was killed")
