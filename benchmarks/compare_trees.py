"""Before and after a change to neuralode, in the same run: a benchmark on two source trees.

Runs one of the benchmark scripts (``bench_forward.py``, ``bench_per_sample.py``,
``bench_gradients.py``...) alternately on two checkouts of neuralode -- ``before``,
``after``, ``after``, ``before``... -- each run a fresh process of that tree's own copy of
the script with its ``src`` first on the path, and reads neuralode's wall times from the
Markdown reports. Each table row's time is the median over the rounds; the report gives
``after / before`` per row and the median over the rows. The peers in every run are the
same code, so their columns show how much the machine drifted between rounds.

    git worktree add /tmp/before <commit>
    python benchmarks/compare_trees.py /tmp/before . bench_forward.py --rounds 3 -- --quick
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

NUMBER = re.compile(r"^\s*([0-9.]+(?:e[+-]?[0-9]+)?)")


def neuralode_times(report: str) -> dict[tuple[str, str], float]:
    """``{(section, case): neuralode's wall time}`` from the report's timing tables.

    A timing cell reads ``median (IQR)``. neuralode's is either in its own column (the
    case: the cells before the first library column) or in the cell after one that names
    it, ``neuralode`` or a variant such as ``neuralode compiled`` (the case: the cells up
    to that one). Tables of counts are left out.
    """
    times: dict[tuple[str, str], float] = {}
    section, header = "", None
    for line in report.splitlines():
        if line.startswith("#"):
            section, header = line.lstrip("# ").strip(), None
            continue
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set(line) <= set("|-: "):
            continue
        named = [i for i, c in enumerate(cells) if c == "neuralode" or c.startswith("neuralode ")]
        if "neuralode" in header:
            col, case = header.index("neuralode"), cells[: max(header.index("neuralode") - 1, 1)]
        elif named:
            col, case = named[0] + 1, cells[: named[0] + 1]
        else:
            continue
        match = NUMBER.match(cells[col]) if col < len(cells) else None
        if match and "(" in cells[col]:
            times[(section, " / ".join(case))] = float(match.group(1))
    return times


def run(tree: Path, script: str, extra: list[str], out: Path) -> dict[tuple[str, str], float]:
    """One run of the tree's own copy of ``script`` with its ``src`` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    path = tree / "benchmarks" / script
    subprocess.run([sys.executable, str(path), *extra, "--out", str(out)], env=env, check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    # Some scripts take --out as a folder and write their report into it.
    report = next(out.glob("*.md")) if out.is_dir() else out
    return neuralode_times(report.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="checkout of neuralode before the change")
    parser.add_argument("after", type=Path, help="checkout after the change")
    parser.add_argument("script", help="benchmark script in benchmarks/, e.g. bench_forward.py")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tree (interleaved)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    opts = parser.parse_args(argv[:cut])
    opts.extra = argv[cut + 1 :]  # the script's own arguments, after --
    runs: dict[str, list[dict[tuple[str, str], float]]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(opts.rounds):
            # ABBA: the second run of a pair tends to be slower (the machine warms up),
            # so the order alternates and neither tree always goes second.
            for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                tree = getattr(opts, name)
                report = Path(tmp) / f"{name}{r}.md"
                runs[name].append(run(tree.resolve(), opts.script, opts.extra, report))
                print(f"round {r + 1}/{opts.rounds}: {name} done", file=sys.stderr, flush=True)
    keys = [k for k in runs["before"][0] if all(k in t for t in runs["before"] + runs["after"])]
    print(f"# {opts.script} {' '.join(opts.extra)}: after / before, {opts.rounds} interleaved "
          "rounds (medians of neuralode's time)\n")  # fmt: skip
    print("| table | case | before | after | after / before |\n|---|---|---|---|---|")
    ratios = []
    for key in keys:
        before = statistics.median(t[key] for t in runs["before"])
        after = statistics.median(t[key] for t in runs["after"])
        ratios.append(after / before)
        print(f"| {key[0][:40]} | {key[1]} | {before:.4g} | {after:.4g} | {after / before:.3f} |")
    print(f"\nmedian after / before over {len(ratios)} rows: {statistics.median(ratios):.3f}; "
          f"range {min(ratios):.3f}-{max(ratios):.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
