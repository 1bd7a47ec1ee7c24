"""Run a copy of torchdiffeq's own tests/ folder against neuralode.compat (and torchdiffeq).

    python benchmarks/run_torchdiffeq_tests.py PATH/TO/torchdiffeq/tests [--only shim]

Each ``*_tests.py`` file runs in a fresh process, once with the shim package
``benchmarks/compat_shim/torchdiffeq`` (neuralode.compat under torchdiffeq's name) first on
the path and once with the installed torchdiffeq. Every subtest (``self.subTest(...)``)
counts as one case; a test method without subtests counts as one. The script prints the
cases passed/failed per file for both, then the shim's pass rate on the cases torchdiffeq
itself passes, and lists the shim's failures among those. torchdiffeq's files are not part
of this repository: get them from its repository (``tests/`` at a release tag).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "benchmarks" / "compat_shim"


class _Counting(unittest.TestResult):
    """Records one outcome per subtest (or per test method without subtests)."""

    def __init__(self) -> None:
        super().__init__()
        self.cases: dict[str, str] = {}
        self._with_subtests: set[str] = set()

    def addSubTest(self, test, subtest, err):  # noqa: N802 (unittest's name)
        self._with_subtests.add(test.id())
        outcome = "pass" if err is None else f"fail: {self._message(err)}"
        key = f"{test.id()} {subtest._subDescription()}"
        # The same parameters can repeat (e.g. shape left over from a loop): keep them apart.
        while key in self.cases:
            key += "'"
        self.cases[key] = outcome

    def addSuccess(self, test):  # noqa: N802
        if test.id() not in self._with_subtests:
            self.cases[test.id()] = "pass"

    def addFailure(self, test, err):  # noqa: N802
        self.cases[test.id() + " (outside subtests)"] = f"fail: {self._message(err)}"

    addError = addFailure  # noqa: N815

    def addSkip(self, test, reason):  # noqa: N802
        self.cases[test.id()] = "skip"

    @staticmethod
    def _message(err) -> str:
        kind, value, _ = err
        text = f"{kind.__name__}: {value}".replace("\n", " ")
        return text[:300]


def _child(path: str) -> None:
    """Run one test file in this process and print its cases as JSON."""
    sys.path.insert(0, str(Path(path).parent))
    import warnings

    warnings.simplefilter("ignore")
    suite = unittest.defaultTestLoader.loadTestsFromName(Path(path).stem)
    result = _Counting()
    suite.run(result)
    print("@@CASES@@" + json.dumps(result.cases))


def _run(path: Path, shim: bool, timeout: float) -> tuple[dict[str, str], float]:
    env = dict(os.environ)
    paths = [str(path.parent)]
    if shim:
        paths = [str(SHIM), str(ROOT / "src"), *paths]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {f"{path.stem} (whole file)": f"fail: timed out after {timeout:.0f} s"}, timeout
    wall = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith("@@CASES@@"):
            return json.loads(line[len("@@CASES@@") :]), wall
    tail = (proc.stderr or proc.stdout)[-300:].replace("\n", " ")
    return {f"{path.stem} (whole file)": f"fail: crashed: {tail}"}, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", type=Path, help="a copy of torchdiffeq's tests/ folder")
    parser.add_argument("--only", choices=["shim", "torchdiffeq"], help="run one side only")
    parser.add_argument("--files", nargs="*", help="test file names (default: *_tests.py)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per file")
    parser.add_argument("--json", type=Path, help="write every case's outcome here")
    parser.add_argument("--show", type=int, default=40, help="shim failures to list")
    parser.add_argument(
        "--reference", type=Path, help="torchdiffeq's outcomes from an earlier --json (not rerun)"
    )
    args = parser.parse_args()
    if not args.tests.is_dir():
        parser.error(f"tests folder {args.tests} does not exist")
    files = (
        [args.tests / name for name in args.files]
        if args.files
        else sorted(args.tests.glob("*_tests.py"))
    )
    sides = ["shim", "torchdiffeq"] if args.only is None else [args.only]
    results: dict[str, dict[str, dict[str, str]]] = {side: {} for side in sides}
    print(f"{'file':<22}" + "".join(f"{side + ' pass/fail (s)':>28}" for side in sides))
    for path in files:
        row = f"{path.name:<22}"
        for side in sides:
            cases, wall = _run(path, side == "shim", args.timeout)
            results[side][path.name] = cases
            passed = sum(v == "pass" for v in cases.values())
            failed = sum(v.startswith("fail") for v in cases.values())
            row += f"{f'{passed}/{failed} ({wall:.0f})':>28}"
        print(row, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.reference and "torchdiffeq" not in results:
        results["torchdiffeq"] = json.loads(args.reference.read_text())["torchdiffeq"]
    if "torchdiffeq" in results and "shim" in results:
        _compare(results, args.show)


def _compare(results: dict[str, dict[str, dict[str, str]]], show: int) -> None:
    reference = {
        (name, case)
        for name, cases in results["torchdiffeq"].items()
        for case, outcome in cases.items()
        if outcome == "pass"
    }
    shim = results["shim"]
    failures = [
        (name, case, shim[name].get(case, "fail: not run"))
        for name, case in sorted(reference)
        if shim.get(name, {}).get(case) != "pass"
    ]
    ok = len(reference) - len(failures)
    rate = ok / len(reference) if reference else float("nan")
    print(f"\nshim passes {ok}/{len(reference)} = {rate:.1%} of the cases torchdiffeq passes")
    for name, case, outcome in failures[:show]:
        print(f"  {name}: {case}: {outcome}")
    if len(failures) > show:
        print(f"  ... and {len(failures) - show} more")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(sys.argv[2])
    else:
        main()
