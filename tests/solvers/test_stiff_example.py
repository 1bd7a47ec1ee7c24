"""examples/stiff_rober.py runs end to end on its smallest setting."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stiff_rober.py"


@pytest.mark.slow  # about 6 s: a subprocess importing torch and matplotlib, two solvers
def test_stiff_rober_quick(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "stiff_rober.png").stat().st_size > 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(metrics["final_loss"]) and len(metrics["rates"]) == 3
    # The explicit solver runs out of its budget long before the end of the data.
    assert metrics["explicit_dopri5"]["status"] == "MAX_STEPS"
    assert metrics["explicit_dopri5"]["reached_t"] < 1e3
    assert "iter   2" in result.stdout
