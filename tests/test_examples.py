"""Every example runs end to end on its smallest setting."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_spiral_quick(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    # A subprocess, as a user runs it: this also checks the script's imports and argparse.
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "spiral.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "spiral.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(metrics["final_loss"])
    assert math.isfinite(metrics["trajectory_mae"])
    assert "iter" in result.stdout
