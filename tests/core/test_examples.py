"""Every example runs end to end on its smallest setting."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_spiral_quick(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    # A subprocess, as a user runs it: this also checks the script's imports and argparse.
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "spiral.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        # One thread: the model is tiny, and on a busy 2-core machine two OpenMP threads
        # made each iteration about 50x slower (they wait for each other at every op).
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "spiral.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(metrics["final_loss"])
    assert math.isfinite(metrics["trajectory_mae"])
    assert "iter" in result.stdout


def test_spiral_without_matplotlib_names_the_extra(tmp_path: Path) -> None:
    # sys.modules[name] = None makes `import name` raise ImportError, as if not installed.
    code = (
        "import runpy, sys; sys.modules['matplotlib'] = None; "
        # As `python examples/spiral.py` does: the script's folder first on sys.path.
        f"sys.path.insert(0, {str(EXAMPLES)!r}); "
        f"sys.argv = ['spiral.py', '--quick', '--out', {str(tmp_path)!r}]; "
        f"runpy.run_path({str(EXAMPLES / 'spiral.py')!r}, run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "pip install 'neuralode[plot]'" in result.stderr
    assert not (tmp_path / "metrics.json").exists()  # it failed before training


@pytest.mark.parametrize(
    ("script", "keys"),
    [
        ("bouncing_balls.py", ("gravity", "restitution_mae")),
        ("switching_lds.py", ("c", "d", "w", "beta")),
    ],
)
def test_event_examples_quick(tmp_path: Path, script: str, keys: tuple[str, ...]) -> None:
    pytest.importorskip("matplotlib")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / script.replace(".py", ".png")).stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(metrics["final_loss"])
    assert all(math.isfinite(metrics[k]) for k in keys)
