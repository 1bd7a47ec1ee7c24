"""Per-sample benchmark: batches of independent problems, neuralode against the peers.

Problems (float64, dopri5, 200 evenly spaced outputs, every library the same f, y0, times):

* ``vdp-256``: torchode's setup (Lienen & Günnemann 2022): 256 Van der Pol oscillators,
  mu = 2, over one limit cycle (t in [0, 7.63]), atol = rtol = 1e-5;
* ``vdp-mixed``: 256 Van der Pol oscillators with mu log-uniform in [1, 20], t in [0, 10];
* ``rotations``: 1024 damped rotations ``y' = [[-g, -w], [w, -g]] y`` (g = 0.1) with
  frequencies w log-uniform in [0.1, 100], t in [0, 10], at tol 1e-3 and 1e-5;
* ``scaled-mlp``: 1024 samples of one 2-1024-2 tanh MLP field, each on its own time scale
  w log-uniform in [0.3, 30], t in [0, 1], tol 1e-5: a field whose rows cost real work.

For each library: wall time (median of interleaved rounds, IQR), calls of f, rows evaluated
(calls × batch for libraries that always evaluate the whole batch), each sample's error in
units of its tolerance, ``max_i rms((y - y_ref) / (atol + rtol |y_ref|))`` (references:
scipy DOP853 at 1e-12 per sample for Van der Pol, the exact solution for the rotations),
and the share of samples beyond 10× their tolerance; the same for each sample's largest
local error (the error one accepted step adds, note 7). neuralode runs in per-sample mode
(``batch_dims=1``), eager and with ``compile_step=True``, and in its default joint mode.

Usage: python benchmarks/bench_per_sample.py [--quick] [--repeats N] [--out PATH]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from _harness import Table, Timing, count_calls, fmt_ms, hardware_info, info_table, publish
from _harness import time_interleaved as interleave
from scipy.integrate import solve_ivp
from torch import Tensor

import neuralode as no

D = torch.float64
PEERS = ("torchdiffeq", "torchode", "torchdyn")
OURS = ("neuralode", "neuralode compiled", "neuralode joint")
DAMPING = 0.1


def van_der_pol(t: Tensor, y: Tensor, mu: Tensor) -> Tensor:
    x, v = y[..., 0], y[..., 1]
    return torch.stack((v, mu * (1 - x * x) * v - x), dim=-1)


def rotation(t: Tensor, y: Tensor, w: Tensor) -> Tensor:
    x, v = y[..., 0], y[..., 1]
    return torch.stack((-DAMPING * x - w * v, w * x - DAMPING * v), dim=-1)


@dataclass
class Case:
    """One batch of problems: ``f(t, y, p)`` with ``p`` one parameter per sample."""

    label: str
    f: Callable[[Tensor, Tensor, Tensor], Tensor]
    p: Tensor
    y0: Tensor
    ts: Tensor
    tol: float
    reference: Tensor = field(init=False)  # (T, B, 2)

    def joint(self) -> Callable[[Tensor, Tensor], Tensor]:
        """``f`` on the whole batch, for the libraries without per-sample arguments."""
        return lambda t, y: self.f(t, y, self.p)


def _log_uniform(n: int, lo: float, hi: float, seed: int) -> Tensor:
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=D)
    return torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def _scipy_vdp(mu: float, y0: np.ndarray, t: np.ndarray) -> np.ndarray:
    def rhs(_: float, y: np.ndarray) -> np.ndarray:
        return np.array([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    sol = solve_ivp(rhs, (t[0], t[-1]), y0, "DOP853", t_eval=t, rtol=1e-12, atol=1e-12)
    assert sol.success, sol.message
    return sol.y.T


def vdp_case(label: str, mu: Tensor, t1: float, tol: float) -> Case:
    y0 = 4 * torch.rand(len(mu), 2, generator=torch.Generator().manual_seed(1), dtype=D) - 2
    case = Case(label, van_der_pol, mu, y0, torch.linspace(0.0, t1, 200, dtype=D), tol)
    t = case.ts.numpy()
    refs = [_scipy_vdp(float(m), y.numpy(), t) for m, y in zip(mu, y0, strict=True)]
    case.reference = torch.from_numpy(np.stack(refs, axis=1))
    return case


def rotation_case(batch: int, tol: float) -> Case:
    w = _log_uniform(batch, 0.1, 100.0, seed=2)
    y0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(3), dtype=D)
    case = Case(
        f"rotations-{batch} tol={tol:g}",
        rotation,
        w,
        y0,
        torch.linspace(0.0, 10.0, 200, dtype=D),
        tol,
    )
    t = case.ts[:, None]
    angle, decay = w * t, torch.exp(-DAMPING * t)  # (T, B)
    c, s = torch.cos(angle), torch.sin(angle)
    x = decay * (c * y0[:, 0] - s * y0[:, 1])
    v = decay * (s * y0[:, 0] + c * y0[:, 1])
    case.reference = torch.stack((x, v), dim=-1)
    return case


class ScaledMLP(torch.nn.Module):
    """``f(t, y, w) = w · MLP(y)``: one neural field, each sample on its own time scale ``w``.

    2 → 1024 → 2 with tanh, weights N(0, 1/fan_in) from a fixed seed. A row costs a few
    hundred kFLOP, so evaluating rows, not solver overhead, is the cost here.
    """

    def __init__(self, hidden: int = 1024) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.w1 = torch.randn(2, hidden, generator=gen, dtype=D) * 2.0 / 2**0.5
        self.b1 = 0.5 * torch.randn(hidden, generator=gen, dtype=D)
        self.w2 = torch.randn(hidden, 2, generator=gen, dtype=D) * 2.0 / hidden**0.5

    def forward(self, t: Tensor, y: Tensor, w: Tensor) -> Tensor:
        return w[:, None] * (torch.tanh(y @ self.w1 + self.b1) @ self.w2)


def mlp_case(batch: int, tol: float) -> Case:
    """Reference: neuralode's per-sample solve at rtol = atol = 1e-10 (no closed form)."""
    w = _log_uniform(batch, 0.3, 30.0, seed=6)
    y0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(7), dtype=D)
    field = ScaledMLP()
    case = Case(f"scaled-mlp-{batch}", field, w, y0, torch.linspace(0.0, 1.0, 200, dtype=D), tol)
    with torch.no_grad():
        case.reference = no.solve(
            field,
            y0,
            case.ts,
            batch_dims=1,
            args=w,
            controller=no.PIDController(rtol=1e-10, atol=1e-10),
        ).ys
    return case


@dataclass
class Run:
    """What one untimed run of a library produced."""

    ys: Tensor  # (T, B, 2)
    rows: int  # rows evaluated by f
    calls: int
    ideal_rows: int | None = None  # neuralode: sum over samples of 6 * steps + 2


def _ours(case: Case, mode: str) -> Callable[[], Run]:
    controller = no.PIDController(rtol=case.tol, atol=case.tol)

    def run() -> Run:
        if mode == "neuralode joint":
            sol = no.solve(case.joint(), case.y0, case.ts, controller=controller)
            return Run(sol.ys, sol.stats.nfe * len(case.p), sol.stats.nfe)
        sol = no.solve(
            case.f,
            case.y0,
            case.ts,
            controller=controller,
            batch_dims=1,
            args=case.p,
            compile_step=mode == "neuralode compiled",
        )
        steps = sol.stats.sample_steps
        assert sol.success and steps is not None
        return Run(sol.ys, sol.stats.rows, sol.stats.nfe, int((6 * steps + 2).sum()))

    return run


def _peer(case: Case, lib: str, f: Callable[[Tensor, Tensor], Tensor]) -> Callable[[], Tensor]:
    if lib == "torchdiffeq":
        from torchdiffeq import odeint

        return lambda: odeint(f, case.y0, case.ts, rtol=case.tol, atol=case.tol, method="dopri5")
    if lib == "torchdyn":
        from torchdyn.numerics import odeint as dyn_odeint

        return lambda: dyn_odeint(
            f, case.y0, case.ts, solver="dopri5", atol=case.tol, rtol=case.tol
        )[1]
    import torchode as to

    term = to.ODETerm(f)
    solver = to.AutoDiffAdjoint(
        to.Dopri5(term=term), to.IntegralController(atol=case.tol, rtol=case.tol, term=term)
    )
    t_eval = case.ts.expand(len(case.p), -1)

    def run() -> Tensor:
        sol = solver.solve(to.InitialValueProblem(y0=case.y0, t_eval=t_eval))
        assert bool((sol.status == 0).all()), sol.status.unique()
        return sol.ys.transpose(0, 1)

    return run


def errors(case: Case, ys: Tensor) -> Tensor:
    """Each sample's largest error over the outputs, in units of its tolerance: ``(B,)``."""
    scale = case.tol + case.tol * case.reference.abs()
    rms = ((ys - case.reference) / scale).square().mean(-1).sqrt()  # (T, B)
    return rms.amax(0)


class CallLog:
    """Every call of ``f``: which samples, at what time, in what state (calls in order).

    :meth:`twin` is the case with ``p`` tagged by each sample's index (``(B, 2)``: the
    parameter, the index), so that rows can be told apart even when parameters repeat.
    """

    def __init__(self, case: Case) -> None:
        self.case = case
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []

    def twin(self) -> Case:
        case = self.case
        tagged = torch.stack([case.p, torch.arange(len(case.p), dtype=D)], dim=-1)

        def f(t: Tensor, y: Tensor, p: Tensor) -> Tensor:
            idx = p[..., 1].long()
            self.calls.append((idx, torch.as_tensor(t, dtype=D).expand(len(idx)), y.detach()))
            return case.f(t, y, p[..., 0])

        return Case(case.label, f, tagged, case.y0, case.ts, case.tol)


def local_errors(case: Case, log: CallLog) -> Tensor:
    """Each sample's largest true local error over its accepted steps, in units of its tol.

    What error control promises, per sample: the error one step adds, ``y1 − Φ_h(y0)``
    with ``Φ_h`` the exact flow from the step's start, weighed as the controllers weigh it
    (``atol + rtol · max(|y0|, |y1|)``, RMS over components). The steps are read off the
    calls of ``f``: a dopri5 attempt ends with two calls at ``t0 + h`` (its last two nodes
    are 1), the second at ``y1``, after one at ``t0 + 8h/9``; the call five before is at
    ``t0 + h/5``; an attempt is accepted if the sample's next one starts after it.
    ``Φ_h`` is neuralode's Dopri8 at rtol = atol = 1e-12, all accepted steps of all samples
    solved as one per-sample batch.
    """
    idx, t, y = (torch.cat(c) for c in zip(*log.calls, strict=True))
    order = torch.sort(idx, stable=True).indices  # each sample's calls together, in order
    idx, t, y = idx[order], t[order], y[order]
    end = torch.nonzero((idx[6:] == idx[5:-1]) & (t[6:] == t[5:-1])).squeeze(-1) + 6
    # ... and the node before them (8/9) is earlier: a frozen sample, stepping in place at
    # its end, makes runs of equal times that would otherwise pair with its last attempt.
    end = end[(idx[end - 5] == idx[end]) & (t[end - 2] < t[end - 1])]
    t_end = t[end]
    h = (t_end - t[end - 5]) * 1.25
    keep = h > 0  # frozen or finished samples evaluated again at their end (h = 0)
    end, t_end, h, who = end[keep], t_end[keep], h[keep], idx[end[keep]]
    t0 = t_end - h
    later = torch.ones_like(keep[keep])
    same = who[1:] == who[:-1]
    later[:-1] = ~same | (t0[1:] > t0[:-1] + h[:-1] / 2)
    end, t0, t_end, who = end[later], t0[later], t_end[later], who[later]
    y1 = y[end]
    first = torch.ones_like(later[later])
    first[1:] = who[1:] != who[:-1]
    y0 = torch.where(first[:, None], case.y0[who], torch.roll(y1, 1, dims=0))
    ts = torch.stack([t0, t_end], dim=1)
    exact = no.solve(case.f, y0, ts, solver=no.Dopri8(), batch_dims=1, args=case.p[who],
                     controller=no.PIDController(rtol=1e-12, atol=1e-12)).ys[-1]  # fmt: skip
    scale = case.tol + case.tol * torch.maximum(y0.abs(), y1.abs())
    ratio = ((y1 - exact) / scale).square().mean(-1).sqrt()
    out = torch.zeros(len(case.p), dtype=D)
    return out.scatter_reduce(0, who, ratio, "amax")


def local_error_run(case: Case, lib: str) -> Tensor:
    """:func:`local_errors` of one untimed run of ``lib`` (eager: calls must be seen)."""
    log = CallLog(case)
    twin = log.twin()
    if lib in OURS:
        _ours(twin, lib)()
    else:
        _peer(twin, lib, twin.joint())()
    return local_errors(case, log)


def subset(case: Case, b: int) -> Case:
    """Sample ``b`` alone, as a batch of one."""
    one = Case(case.label, case.f, case.p[b : b + 1], case.y0[b : b + 1], case.ts, case.tol)
    one.reference = case.reference[:, b : b + 1]
    return one


ALONE_SAMPLES = 16


def batch_effect(case: Case, lib: str, batched: Tensor) -> tuple[float, float]:
    """Range over samples of (error in the batch) / (error solving that sample alone).

    1.0 means the batch did not change the sample's accuracy. ``ALONE_SAMPLES`` samples
    spread over the sorted parameter (mu, w) are solved alone, with the same library.
    """
    order = torch.argsort(case.p)
    picks = order[torch.linspace(0, len(order) - 1, ALONE_SAMPLES).round().long()].tolist()
    ratios = []
    for b in picks:
        one = subset(case, b)
        ys = _ours(one, lib)().ys if lib in OURS else _peer(one, lib, one.joint())()
        ratios.append(float(batched[b]) / float(errors(one, ys)[0]))
    return min(ratios), max(ratios)


@dataclass
class Result:
    label: str
    timing: Timing
    run: Run
    errors: Tensor
    first_call_s: float
    effect: tuple[float, float] | None = None
    local: Tensor | None = None  # each sample's largest local error / tol


def measure(case: Case, repeats: int) -> list[Result]:
    timed: dict[str, Callable[[], object]] = {}
    runs: dict[str, Run] = {}
    first: dict[str, float] = {}
    with torch.no_grad():
        for lib in (*OURS, *PEERS):
            start = time.perf_counter()
            if lib in OURS:
                timed[lib] = _ours(case, lib)
                runs[lib] = timed[lib]()  # type: ignore[assignment]
            else:
                timed[lib] = _peer(case, lib, case.joint())
                timed[lib]()
                calls, ys = count_calls(lambda g, lib=lib: _peer(case, lib, g)(), case.joint())
                runs[lib] = Run(ys, calls * len(case.p), calls)  # type: ignore[arg-type]
            first[lib] = time.perf_counter() - start
        timings = interleave(timed, repeats)
        results = []
        for lib in timed:
            errs = errors(case, runs[lib].ys)
            # The compiled step takes the eager per-sample steps (tested): its calls of f,
            # inside the graph, cannot be logged, and it is not scored twice.
            eager = lib != "neuralode compiled"
            effect = batch_effect(case, lib, errs) if eager else None
            local = local_error_run(case, lib) if eager else None
            results.append(Result(lib, timings[lib], runs[lib], errs, first[lib], effect, local))
    return results


def report(case: Case, results: list[Result]) -> str:
    table = Table(
        [
            "library",
            "wall ms (IQR)",
            "calls of f",
            "rows evaluated",
            "rows / ideal",
            "max error / tol",
            "samples > 10× tol",
            "error / error alone",
            "max local error / tol",
            "samples > 10× tol (local)",
            "first call s",
        ]
    )
    fastest_peer = min(r.timing.median for r in results if r.label in PEERS)
    for r in results:
        ideal = f"{r.run.rows / r.run.ideal_rows:.3f}" if r.run.ideal_rows else ""
        share = float((r.errors > 10).double().mean())
        table.add(
            r.label,
            fmt_ms(r.timing),
            r.run.calls,
            r.run.rows,
            ideal,
            f"{float(r.errors.max()):.3g}",
            f"{100 * share:.1f}%",
            f"{r.effect[0]:.3g} – {r.effect[1]:.3g}" if r.effect else "",
            "" if r.local is None else f"{float(r.local.max()):.3g}",
            "" if r.local is None else f"{100 * float((r.local > 10).double().mean()):.1f}%",
            f"{r.first_call_s:.2f}",
        )
    ours = {r.label: r.timing.median / fastest_peer for r in results if r.label in OURS}
    ratios = ", ".join(f"{k} {v:.2f}×" for k, v in ours.items())
    head = (
        f"### {case.label}: {len(case.p)} samples, tol {case.tol:g}\n\n"
        f"Wall against the fastest peer: {ratios}."
    )
    return head + "\n\n" + table.render()


NOTES = """Notes.
1. rows / ideal: rows evaluated over the sum over samples of their own cost, 6 evaluations
   per attempted dopri5 step (FSAL) plus 2 for f(t0) and the initial step. Finished
   samples stay in the batch, frozen, until they are 10% of it, so the ratio stays ≤ 1.11.
2. The peers evaluate the whole batch at every call: rows = calls × batch. torchode steps
   each sample with its own step size but keeps evaluating finished samples; torchdiffeq,
   torchdyn and neuralode's joint mode control one RMS norm over the whole batch.
3. "first call s" includes torch.compile's compilation for "neuralode compiled"; its
   timed rounds reuse the compiled step (same model, dynamic batch size).
4. torchdyn's dopri5 steps to every output time (no interpolation), hence its call count.
5. "error / error alone": for 16 samples spread over the parameter range, the sample's
   error in the batch over its error when the same library solves it alone (range).
   1 – 1 means the neighbours changed nothing; below 1 the batch over-solved the sample
   (extra work), above 1 the batch norm let its error grow.
6. "max error / tol" and "samples > 10× tol" are global errors (accumulated over all
   steps), while every library controls the local error of each step; a global error of
   tens of times the tolerance after hundreds of steps is expected, whatever the library.
   Joint control looks better on that measure because the batch's hardest sample sets
   everyone's step: most samples are over-solved.
7. "local" columns: what error control promises each sample, the error one accepted step
   adds, y1 − Φ_h(y0) with Φ_h the exact flow (Dopri8 at 1e-12), over atol + rtol ·
   max(|y0|, |y1|), RMS over components; the largest over each sample's accepted steps
   (read off the calls of f). Per-sample control keeps it near 1 for every sample; one
   norm over the batch lets some samples' steps add many times their tolerance.
   "neuralode compiled" takes the eager per-sample steps (tested), so it is not scored
   again."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats, fewer cases")
    parser.add_argument("--repeats", type=int, help="interleaved rounds (default 5, quick 3)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--cases", help="comma-separated case indices (0-4), default all")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    builders = [
        lambda: vdp_case(
            "vdp-256 (torchode's setup)", torch.full((256,), 2.0, dtype=D), 7.63, 1e-5
        ),
        lambda: vdp_case("vdp-mixed", _log_uniform(256, 1.0, 20.0, seed=4), 10.0, 1e-5),
        lambda: rotation_case(1024, 1e-3),
        lambda: rotation_case(1024, 1e-5),
        lambda: mlp_case(1024, 1e-5),
    ]
    chosen = builders[:3] if args.quick else builders
    if args.cases:
        chosen = [builders[int(i)] for i in args.cases.split(",")]
    sections = []
    for i, build in enumerate(chosen, 1):
        case = build()
        print(f"[{i}] {case.label}", file=sys.stderr)
        sections.append(report(case, measure(case, repeats)))
    info = hardware_info(["torchdiffeq", "torchode", "torchdyn"])
    info["repeats"] = f"{repeats}{' (--quick)' if args.quick else ''}"
    text = "\n\n".join(["# Per-sample benchmark", info_table(info), *sections, NOTES])
    publish(text, args.out)


if __name__ == "__main__":
    main()
