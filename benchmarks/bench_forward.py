"""Forward-solve benchmark: neuralode against torchdiffeq, torchode and torchdyn.

Two parts:

* an MLP neural ODE over a grid of (dim, hidden, batch) and tolerances, float32, where the
  question is how much time each library spends *outside* the vector field;
* Van der Pol (mu = 10) and Lotka-Volterra at batch 1 in float64, where the question is
  cost against accuracy (error measured against scipy's DOP853 at rtol = atol = 1e-12).

A "bare loop" column (note 7) runs neuralode's steps in a plain hand-written eager loop
with no checks: a reference for what an eager PyTorch solver spends outside the vector field.

Everything runs forward only under torch.no_grad(), one torch thread (see _harness).
Install the peers first: `bash benchmarks/install_peers.sh .venv/bin/python`.

On a GPU (``--device cuda``) every library runs there and each timed sample ends with a
device sync. ``--sync-every K`` adds the column ``neuralode sync K``: the joint state run
as the per-sample driver's one row with one host read per K steps
(``PerSampleTuning(sync_every=K)``), the path meant for GPUs.

Usage: python benchmarks/bench_forward.py [--quick] [--repeats N] [--out PATH]
       [--device DEV] [--sync-every K]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from _harness import (
    Table,
    Timing,
    count_calls,
    fmt_err,
    fmt_ms,
    fmt_pct,
    fmt_ratio,
    hardware_info,
    info_table,
    overhead_share,
    publish,
    time_with_vector_field,
)
from scipy.integrate import solve_ivp
from torch import Tensor, nn

Field = Callable[[Tensor, Tensor], Tensor]
OURS = "neuralode"
# Dopri5 with the embedded solution the peers use (note 6): the same error estimate, so
# the same steps at the same tolerance; the default's estimate is 1.5 times larger.
SAME_ESTIMATE = f"{OURS}, peers' estimate"
# A dopri5 loop written out in plain eager PyTorch (see _bare_loop): a reference for an eager
# solver's overhead, not a library.
BARE = "bare loop"
PEERS = ("torchdiffeq", "torchode", "torchdyn")
LIBRARIES = (OURS, SAME_ESTIMATE, BARE, *PEERS)


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


class MLPField(nn.Module):
    """f(t, y) = W2 tanh(W1 y + b1) + b2, autonomous.

    Weights are N(0, gain^2 / fan_in): with gain 3 the state moves by more than its own norm
    over t in [0, 1] (dopri5 needs ~30-100 evaluations) while the Jacobian stays far from
    stiff, which is the regime of a trained neural ODE.
    """

    def __init__(self, dim: int, hidden: int, gain: float = 3.0, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)
        with torch.no_grad():
            self.lin1.weight.copy_(torch.randn(hidden, dim, generator=gen) * gain / dim**0.5)
            self.lin2.weight.copy_(torch.randn(dim, hidden, generator=gen) * gain / hidden**0.5)
            self.lin1.bias.copy_(0.5 * torch.randn(hidden, generator=gen))
            self.lin2.bias.copy_(0.5 * torch.randn(dim, generator=gen))

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.lin2(torch.tanh(self.lin1(y)))


def van_der_pol(mu: float) -> Field:
    def f(t: Tensor, y: Tensor) -> Tensor:
        x, v = y[..., 0], y[..., 1]
        return torch.stack((v, mu * (1 - x * x) * v - x), dim=-1)

    return f


def lotka_volterra(alpha: float, beta: float, gamma: float, delta: float) -> Field:
    def f(t: Tensor, y: Tensor) -> Tensor:
        prey, pred = y[..., 0], y[..., 1]
        return torch.stack(
            (alpha * prey - beta * prey * pred, delta * prey * pred - gamma * pred), dim=-1
        )

    return f


def scipy_reference(f: Field, y0: Tensor, ts: Tensor) -> Tensor:
    """Near-exact solution at ts, from scipy's DOP853 at rtol = atol = 1e-12 in float64."""

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        return f(torch.tensor(t), torch.from_numpy(y)).numpy()

    t = ts.double().numpy()
    sol = solve_ivp(
        rhs, (t[0], t[-1]), y0[0].double().numpy(), "DOP853", t_eval=t, rtol=1e-12, atol=1e-12
    )
    assert sol.success, sol.message
    return torch.from_numpy(sol.y.T).unsqueeze(1).to(y0.dtype)  # (len(ts), 1, dim)


@dataclass(frozen=True)
class Case:
    """One solve to benchmark: every library gets the same f, y0, output times and tolerance."""

    label: str
    f: Field
    y0: Tensor
    ts: Tensor
    method: str
    tol: float
    reference: Tensor | None = None
    atol: float | None = None  # None: atol = rtol = tol

    @property
    def tolerances(self) -> tuple[float, float]:
        """``(rtol, atol)`` every library is given."""
        return self.tol, self.tol if self.atol is None else self.atol


def mlp_case(dim: int, hidden: int, batch: int, tol: float, n_out: int) -> Case:
    y0 = torch.randn(batch, dim, generator=torch.Generator().manual_seed(1))
    return Case(
        label=f"{dim}/{hidden}/{batch}",
        f=MLPField(dim, hidden),
        y0=y0,
        ts=torch.linspace(0.0, 1.0, n_out),
        method="dopri5",
        tol=tol,
    )


# Van der Pol's period at mu = 10 is 19.08 from (2, 0): t in [0, 20] covers one full
# relaxation cycle, both fast jumps included. 21 outputs, so the error includes phase error.
def classic_cases(method: str) -> list[Case]:
    def case(label: str, f: Field, y0: list[float], t_end: float) -> Case:
        y = torch.tensor([y0], dtype=torch.float64)
        ts = torch.linspace(0.0, t_end, 21, dtype=torch.float64)
        return Case(label, f, y, ts, method, 1e-6, scipy_reference(f, y, ts))

    return [
        case("Van der Pol μ=10, t∈[0,20]", van_der_pol(10.0), [2.0, 0.0], 20.0),
        case("Lotka–Volterra, t∈[0,15]", lotka_volterra(1.5, 1.0, 3.0, 1.0), [1.0, 1.0], 15.0),
    ]


# --------------------------------------------------------------------------------------------
# Libraries: each adapter builds a zero-argument runner for one Case, or says why it cannot
# --------------------------------------------------------------------------------------------


class NotSupported(Exception):
    """The library cannot run this configuration; the message is the reason shown."""


class Output(NamedTuple):
    ys: Tensor  # (len(ts), *y0.shape), whatever layout the library uses internally
    reported_nfe: int | None  # what the library says about itself, to cross-check our count


Runner = Callable[[], Output]


def _neuralode(f: Field, case: Case, sync_every: int = 1, peers_estimate: bool = False) -> Runner:
    try:
        import neuralode
        from neuralode import PerSampleTuning, PIDController, solve
    except ImportError as err:
        raise NotSupported(f"not importable: {err}") from err
    solver_cls = getattr(neuralode, {"dopri5": "Dopri5", "tsit5": "Tsit5"}[case.method], None)
    if solver_cls is None:
        raise NotSupported(f"no {case.method} solver")
    if peers_estimate and case.method != "dopri5":
        raise NotSupported(f"its {case.method} estimate is the peers' already")
    rtol, atol = case.tolerances
    solver = solver_cls(embedded="torchdiffeq") if peers_estimate else solver_cls()
    controller = PIDController(rtol=rtol, atol=atol)
    tuning = PerSampleTuning(sync_every=sync_every) if sync_every > 1 else None

    def run() -> Output:
        sol = solve(f, case.y0, case.ts, solver=solver, controller=controller, tuning=tuning)
        return Output(sol.ys, int(sol.stats.nfe))

    return run


def _bare_loop(f: Field, case: Case) -> Runner:
    """neuralode's joint dopri5 solve with nothing but its tensor work and controller rule.

    The same tableau (Dormand and Prince's estimate), Hairer's initial step, the I
    controller (safety 0.9, factors in [0.2, 10]), the RMS error over max(|y0|, |y1|) and
    the dense output at the output times inside each step, so it takes neuralode's steps;
    but no input or output checks, no failure handling, no statistics, no abstractions:
    the plain way to write it. Not a lower bound by construction (neuralode's step has a
    few tensor operations fewer: the last two stages share one time tensor, the error
    ratio divides by rtol on the host, one matrix product interpolates a step's outputs),
    but faster than neuralode on every row measured so far, the small float64 problems
    included.
    """
    if case.method != "dopri5":
        raise NotSupported("written for dopri5 only")
    from neuralode.solvers.dopri5 import DOPRI5_TABLEAU as tab

    rtol, atol = case.tolerances
    times = case.ts.tolist()
    t_dtype, n = case.ts.dtype, case.y0.numel()
    a = [[(j, w) for j, w in enumerate(row) if w] for row in tab.a_float]
    e = [(j, w) for j, w in enumerate(tab.error_float or ()) if w]
    dense = tab.dense_float or ()

    def norm(x: Tensor) -> float:
        return float(torch.linalg.vector_norm(x)) / n**0.5

    def run() -> Output:
        y, t = case.y0, times[0]
        f0 = f(torch.scalar_tensor(t, dtype=t_dtype), y)
        scale = torch.abs(y).mul_(rtol).add_(atol)
        d0, d1 = norm(y / scale), norm(f0 / scale)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = f(torch.scalar_tensor(t + h0, dtype=t_dtype), torch.add(y, f0, alpha=h0))
        d2 = norm((f1 - f0) / scale) / h0
        d12 = max(d1, d2)
        h1 = max(1e-6, h0 * 1e-3) if d12 <= 1e-15 else (0.01 / d12) ** 0.2
        h = min(100 * h0, h1, times[-1] - t)
        outs, i_out, abs_y = [y], 1, y.abs()
        while i_out < len(times):
            # Land on the last output time exactly.
            t1 = times[-1] if h >= times[-1] - t else t + h
            h = t1 - t
            k = [f0]
            for row, c in zip(a, tab.c_float[1:], strict=True):
                y1 = torch.add(y, k[row[0][0]], alpha=h * row[0][1])
                for j, w in row[1:]:
                    y1.add_(k[j], alpha=h * w)
                k.append(f(torch.scalar_tensor(t + c * h, dtype=t_dtype), y1))
            err = torch.mul(k[e[0][0]], h * e[0][1])
            for j, w in e[1:]:
                err.add_(k[j], alpha=h * w)
            abs_y1 = y1.abs()
            ratio = norm(err / torch.maximum(abs_y, abs_y1).mul_(rtol).add_(atol))
            factor = 0.9 * max(ratio, 1e-10) ** -0.2
            if ratio > 1:
                h *= max(0.2, factor)
                continue
            while i_out < len(times) and times[i_out] <= t1:
                theta = (times[i_out] - t) / h
                out = y1 if theta == 1.0 else y.clone()
                for j, row in enumerate(dense if theta < 1.0 else ()):
                    w = sum(c * theta ** (p + 1) for p, c in enumerate(row))
                    if w:
                        out.add_(k[j], alpha=h * w)
                outs.append(out)
                i_out += 1
            t, y, abs_y, f0 = t1, y1, abs_y1, k[-1]
            h *= min(10.0, max(0.2, factor))
        return Output(torch.stack(outs), None)

    return run


def _torchdiffeq(f: Field, case: Case) -> Runner:
    from torchdiffeq import odeint
    from torchdiffeq._impl.odeint import SOLVERS

    if case.method not in SOLVERS:
        raise NotSupported(f"torchdiffeq has no {case.method}")
    rtol, atol = case.tolerances
    return lambda: Output(
        odeint(f, case.y0, case.ts, rtol=rtol, atol=atol, method=case.method), None
    )


def _torchode(f: Field, case: Case) -> Runner:
    import torchode as to

    if case.y0.ndim != 2:
        raise NotSupported("state must be (batch, features)")
    # Built once, as a user would: only the problem depends on y0.
    term = to.ODETerm(f)
    step = {"dopri5": to.Dopri5, "tsit5": to.Tsit5}[case.method](term=term)
    rtol, atol = case.tolerances
    controller = to.IntegralController(atol=atol, rtol=rtol, term=term)
    adjoint = to.AutoDiffAdjoint(step, controller)
    t_eval = case.ts.expand(case.y0.shape[0], -1)

    def run() -> Output:
        sol = adjoint.solve(to.InitialValueProblem(y0=case.y0, t_eval=t_eval))
        if bool((sol.status != 0).any()):
            raise RuntimeError(f"torchode status {sol.status.unique().tolist()}")
        # torchode lays out (batch, time, features); its f-eval counter is per sample.
        return Output(sol.ys.transpose(0, 1), int(sol.stats["n_f_evals"].max()))

    return run


def _torchdyn(f: Field, case: Case) -> Runner:
    from torchdyn.numerics import odeint

    rtol, atol = case.tolerances
    return lambda: Output(
        odeint(f, case.y0, case.ts, solver=case.method, atol=atol, rtol=rtol)[1], None
    )


ADAPTERS: dict[str, Callable[[Field, Case], Runner]] = {
    OURS: _neuralode,
    SAME_ESTIMATE: functools.partial(_neuralode, peers_estimate=True),
    BARE: _bare_loop,
    "torchdiffeq": _torchdiffeq,
    "torchode": _torchode,
    "torchdyn": _torchdyn,
}


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclass
class LibResult:
    timing: Timing | None = None
    nfe: int | None = None
    error: float | None = None
    note: str = ""  # why there is no timing, or a discrepancy worth reporting


@dataclass
class CaseResult:
    case: Case
    t_f: float  # seconds of one bare vector-field call
    libs: dict[str, LibResult]

    def wall(self, lib: str) -> float | None:
        timing = self.libs[lib].timing
        return timing.median if timing else None

    def overhead(self, lib: str) -> float | None:
        res = self.libs[lib]
        if res.timing is None or res.nfe is None:
            return None
        return overhead_share(res.nfe, self.t_f, res.timing.median)

    def ratio(self, peer: str) -> float | None:
        ours, theirs = self.wall(OURS), self.wall(peer)
        return ours / theirs if ours and theirs else None

    def ratio_fastest_peer(self, ours_as: str = OURS) -> float | None:
        walls = [w for w in map(self.wall, PEERS) if w]
        ours = self.wall(ours_as)
        return ours / min(walls) if ours and walls else None


def _check_run(lib: str, case: Case) -> tuple[Runner, LibResult]:
    """Build the timed runner, and do one untimed counted run for NFE and error."""
    runner = ADAPTERS[lib](case.f, case)
    nfe, out = count_calls(lambda g: ADAPTERS[lib](g, case)(), case.f)
    assert isinstance(out, Output)
    res = LibResult(nfe=nfe)
    if out.ys.shape != (len(case.ts), *case.y0.shape):
        raise RuntimeError(f"output shape {tuple(out.ys.shape)}")
    if case.reference is not None:
        res.error = float((out.ys - case.reference).abs().max())
    if lib not in PEERS and out.reported_nfe not in (None, nfe):
        res.note = f"reports nfe={out.reported_nfe}, counted {nfe}"
    return runner, res


def measure(case: Case, repeats: int) -> CaseResult:
    runners: dict[str, Runner] = {}
    libs: dict[str, LibResult] = {}
    with torch.no_grad():
        for lib in LIBRARIES:
            try:
                runners[lib], libs[lib] = _check_run(lib, case)
            except NotSupported as err:
                libs[lib] = LibResult(note=f"n/a: {err}")
            except ModuleNotFoundError as err:
                libs[lib] = LibResult(note=f"n/a: {err.name} not installed (install_peers.sh)")
            except Exception as err:  # a peer failing is a result, not a crash of the suite
                libs[lib] = LibResult(note=f"failed: {type(err).__name__}: {err}"[:120])
        timings, t_f = time_with_vector_field(runners, case.f, case.ts[0], case.y0, repeats)
    for lib, timing in timings.items():
        libs[lib].timing = timing
    return CaseResult(case, t_f, libs)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _cell(value: float | None, fmt: Callable[[float], str]) -> str:
    return fmt(value) if value is not None else "n/a"


def _wall_cell(res: LibResult) -> str:
    return fmt_ms(res.timing) if res.timing else res.note or "n/a"


def _nfe_overhead_cell(result: CaseResult, lib: str) -> str:
    res = result.libs[lib]
    if res.timing is None:
        return "n/a"
    cell = f"{res.nfe} / {_cell(result.overhead(lib), fmt_pct)}"
    return cell + (f" ({res.note})" if res.note else "")


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _add_summary_rows(summary: Table, results: list[CaseResult], n_out: int) -> None:
    summary.add(
        f"median ratio {OURS}/library",
        n_out,
        *(_cell(_median([r.ratio(lib) for r in results]), fmt_ratio) for lib in LIBRARIES),
        _cell(_median([r.ratio_fastest_peer() for r in results]), fmt_ratio),
    )
    blank = [""] * len(LIBRARIES)
    for ours in _our_variants()[1:]:
        ratio = _median([r.ratio_fastest_peer(ours) for r in results])
        summary.add(f"median ratio {ours}/fastest peer", n_out, *blank, _cell(ratio, fmt_ratio))
    summary.add(
        "median overhead share",
        n_out,
        *(_cell(_median([r.overhead(lib) for r in results]), fmt_pct) for lib in LIBRARIES),
        "",
    )


def _our_variants() -> list[str]:
    return [lib for lib in LIBRARIES if lib not in PEERS]


def mlp_report(results: list[CaseResult]) -> str:
    key = ["dim/hidden/batch", "tol", "outputs"]
    fastest = [f"{ours}/fastest" for ours in _our_variants()]
    walls = Table([*key, "t_f µs", *LIBRARIES, *(f"{OURS}/{p}" for p in PEERS), *fastest])
    costs = Table([*key, *LIBRARIES])
    for r in results:
        c = r.case
        row = [c.label, f"{c.tol:.0e}", str(len(c.ts))]
        walls.add(
            *row,
            f"{r.t_f * 1e6:.3g}",
            *(_wall_cell(r.libs[lib]) for lib in LIBRARIES),
            *(_cell(r.ratio(p), fmt_ratio) for p in PEERS),
            *(_cell(r.ratio_fastest_peer(ours), fmt_ratio) for ours in _our_variants()),
        )
        costs.add(*row, *(_nfe_overhead_cell(r, lib) for lib in LIBRARIES))

    summary = Table(["over the grid", "outputs", *LIBRARIES, "fastest peer"])
    # Split by output count: torchdyn pays per output time (note 2), so pooling would blur it.
    for n_out in sorted({len(r.case.ts) for r in results}):
        _add_summary_rows(summary, [r for r in results if len(r.case.ts) == n_out], n_out)
    return "\n\n".join(
        [
            "## MLP neural ODE (float32, dopri5, t ∈ [0, 1], forward under no_grad)",
            "Wall time per solve in ms: median (IQR) over interleaved repeats. "
            "Ratios are neuralode wall / peer wall: below 1× means neuralode is faster.",
            walls.render(),
            "Function evaluations / overhead share (1 − NFE·t_f / wall): the share of the "
            "wall time spent outside the vector field.",
            costs.render(),
            "### Summary",
            summary.render(),
        ]
    )


def classic_report(results: list[CaseResult]) -> str:
    table = Table(["problem", "method", "library", "wall ms", "NFE", "max abs error", "ratio"])
    for r in results:
        for lib in LIBRARIES:
            res = r.libs[lib]
            table.add(
                r.case.label,
                r.case.method,
                lib,
                _wall_cell(res),
                res.nfe if res.timing else "",
                _cell(res.error, fmt_err) if res.timing else "",
                _cell(r.ratio(lib), fmt_ratio) if lib != OURS else "",
            )
    return "\n\n".join(
        [
            "## Van der Pol and Lotka–Volterra (float64, batch 1, rtol = atol = 1e-6)",
            "Max abs error over the 21 output times against scipy DOP853 at 1e-12. "
            "Ratio is neuralode wall / library wall for the same method.",
            table.render(),
        ]
    )


NOTES = """\
### Notes

1. torchode controls the error *per sample* (each row of the (batch, dim) state has its own
   step size), while neuralode, torchdiffeq and torchdyn control one joint norm over the whole
   state. At batch > 1 torchode therefore takes different steps; its NFE here counts batched
   calls of f (every call evaluates the whole batch), not its own per-sample `n_f_evals`.
2. torchdyn (no interpolator, its default) shortens steps to land on every output time, so
   its NFE grows with the number of outputs; the others interpolate dense output.
3. torchdiffeq 0.2.5 has no tsit5.
4. NFE is counted by wrapping f in an untimed extra run; timed runs call the bare f.
   t_f is the median time of one bare f(t, y0) call, interleaved with the solves. On a loaded
   machine (load average above the core count) t_f and the walls are noisy, and the overhead
   share most of all: a negative share means t_f caught more interference than the solves.
5. All peers run with their defaults otherwise (torchode eager, not torch.jit.script-ed).
6. Each peer's dopri5 estimates its error with the embedded solution b/3 + 2·b̂/3
   (torchdiffeq's, copied by torchode and torchdyn), whose estimate is exactly 2/3 of
   Dormand and Prince's: at one tolerance the peers take about 8% longer steps
   (1.5^(1/5)) and make larger errors than neuralode's default. The column "neuralode,
   peers' estimate" runs `Dopri5(embedded="torchdiffeq")`: the peers' estimate, hence
   (up to the controllers' small differences) their steps, so that its ratios compare
   the solver loops alone. It has no tsit5 variant.
7. "bare loop" is not a library: neuralode's joint dopri5 solve written out in this file
   (`_bare_loop`) with only its tensor work and step-size rule (the same steps, hence the
   same NFE), without input and output checks, failure handling, statistics or
   abstractions: the plain way to write the loop, so its overhead share is about what any
   eager PyTorch solver spends outside f, and neuralode's ratio to it is the price of
   neuralode's checks and structure. Not a lower bound by construction (neuralode's step
   has a few tensor operations fewer), but faster than neuralode on every row so far."""


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

FULL_GRID = [(2, 64, 128), (16, 64, 128), (64, 64, 128), (16, 256, 128), (16, 64, 1)]
FULL_GRID += [(16, 64, 1024), (64, 256, 1024)]
QUICK_GRID = [(2, 64, 128), (16, 64, 1), (16, 64, 1024), (64, 256, 1024)]


def build_cases(quick: bool) -> tuple[list[Case], list[Case]]:
    grid = QUICK_GRID if quick else FULL_GRID
    outputs = (2,) if quick else (2, 10)
    mlp = [
        mlp_case(dim, hidden, batch, tol, n_out)
        for n_out in outputs
        for dim, hidden, batch in grid
        for tol in (1e-3, 1e-6)
    ]
    classic = classic_cases("dopri5") + classic_cases("tsit5")
    return mlp, classic


def on_device(case: Case, device: str) -> Case:
    """The same case with its field, state, times and reference on ``device``."""
    f = case.f.to(device) if isinstance(case.f, nn.Module) else case.f
    ref = None if case.reference is None else case.reference.to(device)
    return dataclasses.replace(case, f=f, y0=case.y0.to(device), ts=case.ts.to(device),
                               reference=ref)  # fmt: skip


def run_all(cases: list[Case], repeats: int) -> list[CaseResult]:
    results = []
    for i, case in enumerate(cases, 1):
        what = f"{case.label} {case.method} tol={case.tol:g} outputs={len(case.ts)}"
        print(f"[{i}/{len(cases)}] {what}", file=sys.stderr)
        results.append(measure(case, repeats))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="subset of the grid, 5 repeats")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 7, quick 5)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--device", default="cpu", help="torch device of every solve")
    parser.add_argument("--sync-every", type=int, default=1, metavar="K",
                        help="also time neuralode with one host read per K steps")  # fmt: skip
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 7)

    mlp_cases, classic = build_cases(args.quick)
    if args.device != "cpu":
        mlp_cases, classic = (
            [on_device(c, args.device) for c in cs] for cs in (mlp_cases, classic)
        )
    if args.sync_every > 1:
        global LIBRARIES
        name = f"{OURS} sync {args.sync_every}"
        ADAPTERS[name] = functools.partial(_neuralode, sync_every=args.sync_every)
        LIBRARIES = (OURS, SAME_ESTIMATE, name, BARE, *PEERS)
    mlp_results = run_all(mlp_cases, repeats)
    classic_results = run_all(classic, repeats)

    info = hardware_info(["torchdiffeq", "torchode", "torchdyn"])
    info["repeats"] = f"{repeats}{' (--quick)' if args.quick else ''}"
    info["device"] = args.device
    report = "\n\n".join(
        [
            "# Forward benchmark",
            info_table(info),
            mlp_report(mlp_results),
            classic_report(classic_results),
            NOTES,
        ]
    )
    publish(report, args.out)


if __name__ == "__main__":
    main()
