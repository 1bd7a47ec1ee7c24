"""Bitwise gate for changes to the solve loop's structure: record, then check.

A restructuring of the core (the loop, its drivers, controllers, records, adjoints) must
not move a single number. This script runs a fixed set of solves -- every solver, joint
and per-sample, every gradient method, dense output, forced stops and jumps, compiled
per-sample steps and the failures -- and digests every output bit: the outputs, the
gradients with respect to y0, the parameters and the output times, the statistics, the
statuses and the error messages.

    python benchmarks/core_gate.py record /tmp/gate.json   # before the change
    python benchmarks/core_gate.py check /tmp/gate.json    # after it: lists what moved

Run both on the same machine (the digests are of the exact bits, which depend on the
CPU's kernels); exit status 1 when anything moved.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

import neuralode as no

torch.set_num_threads(1)
DTYPE = torch.float64
ADAPTIVE = ("Dopri5", "Tsit5", "Bosh3", "Dopri8", "AdaptiveHeun", "Fehlberg2")
FIXED = ("Euler", "Midpoint", "Heun2", "Heun3", "RK4")


def digest(x: Any) -> Any:
    """A short digest of every bit of ``x`` (tensors, numbers, nested tuples)."""
    if isinstance(x, torch.Tensor):
        data = x.detach().cpu().contiguous()
        raw = data.view(torch.uint8) if data.numel() else data
        body = bytes(raw.numpy().tobytes()) + str((tuple(x.shape), x.dtype)).encode()
        return hashlib.sha256(body).hexdigest()[:16]
    if isinstance(x, (tuple, list)):
        return [digest(v) for v in x]
    if x is None or isinstance(x, (int, float, str, bool)):
        return x
    return repr(x)


class MLP(torch.nn.Module):
    """A small non-autonomous field with parameters; rows independent (per-sample safe)."""

    def __init__(self, n: int = 3, width: int = 8) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(n + 1, width, generator=gen, dtype=DTYPE) / 2)
        self.w2 = torch.nn.Parameter(torch.randn(width, n, generator=gen, dtype=DTYPE) / 3)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tt = t.expand(*y.shape[:-1], 1) if t.ndim == 0 else t.reshape(-1, 1).expand(-1, 1)
        return torch.tanh(torch.cat([y, tt.to(y.dtype)], -1) @ self.w1) @ self.w2 - 0.1 * y


def controller_for(name: str, **kw: Any) -> no.AbstractController:
    if name in FIXED:
        return no.ConstantStepSize(0.07)
    return no.PIDController(rtol=1e-6, atol=1e-8, **kw)


def stats_of(sol: no.Solution) -> Any:
    s = sol.stats
    return digest([getattr(s, k) for k in vars(s)]) if hasattr(s, "__dict__") else repr(s)


def run_case(build: Callable[[], Any]) -> dict[str, Any]:
    """Run one solve (and its backward pass, if it has one); digest what came out."""
    torch.manual_seed(0)
    try:
        sol, grads = build()
    except (no.SolverError, ValueError) as err:
        return {"error": f"{type(err).__name__}: {err}"}
    out = {"ys": digest(sol.ys), "stats": stats_of(sol), "status": repr(sol.status)}
    if getattr(sol, "sample_status", None) is not None:
        out["sample_status"] = repr(sol.sample_status)
    if grads is not None:
        out["grads"] = digest(grads)
    return out


def gradients(sol: no.Solution, *inputs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    loss = (sol.ys.nan_to_num() ** 2).sum() + sol.ys.nan_to_num()[-1].sum()
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def joint_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    adjoints = {
        "direct": no.DirectAdjoint(),
        "backsolve": no.BacksolveAdjoint(),
        "seminorm": no.BacksolveAdjoint(seminorm=True),
        "checkpoint": no.CheckpointAdjoint(),
    }
    for name in ADAPTIVE + FIXED:
        for aname, adjoint in adjoints.items():

            def build(name: str = name, adjoint: Any = adjoint) -> Any:
                f = MLP()
                y0 = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.1, -0.4]], dtype=DTYPE)
                y0.requires_grad_(True)
                ts = torch.tensor([0.0, 0.15, 0.7, 0.7001, 1.3], dtype=DTYPE, requires_grad=True)
                sol = no.solve(f, y0, ts, solver=getattr(no, name)(),
                               controller=controller_for(name), adjoint=adjoint)  # fmt: skip
                return sol, gradients(sol, y0, ts, *f.parameters())

            yield f"joint/{name}/{aname}", build

    def reverse() -> Any:
        f = MLP()
        y0 = torch.tensor([0.3, -0.2, 0.5], dtype=DTYPE, requires_grad=True)
        ts = torch.tensor([1.0, 0.4, -0.5], dtype=DTYPE)
        sol = no.solve(f, y0, ts, controller=no.PIDController(pcoeff=0.3, icoeff=0.4))
        return sol, gradients(sol, y0, *f.parameters())

    def dense() -> Any:
        f = MLP()
        y0 = torch.tensor([0.3, -0.2, 0.5], dtype=DTYPE, requires_grad=True)
        sol = no.solve(f, y0, torch.tensor([0.0, 2.0], dtype=DTYPE), dense=True,
                       solver=no.Tsit5())  # fmt: skip
        pts = sol.dense(torch.linspace(0, 2, 17, dtype=DTYPE))
        return sol, torch.autograd.grad(pts.sum(), (y0, *f.parameters()))

    def stops() -> Any:
        f = MLP()
        y0 = torch.tensor([0.3, -0.2, 0.5], dtype=DTYPE, requires_grad=True)
        ctrl = no.PIDController(rtol=1e-5, atol=1e-7, step_ts=(0.33,), jump_ts=(0.9,),
                                dt_max=0.4)  # fmt: skip
        ts = torch.tensor([0.0, 0.5, 1.5], dtype=DTYPE)
        sol = no.solve(f, y0, ts, controller=ctrl, adjoint=no.CheckpointAdjoint())
        return sol, gradients(sol, y0, *f.parameters())

    def step_to() -> Any:
        f = MLP()
        y0 = torch.tensor([0.3, -0.2, 0.5], dtype=DTYPE, requires_grad=True)
        ctrl = no.StepTo(ts=(0.0, 0.1, 0.35, 0.8, 1.0))
        sol = no.solve(f, y0, torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE), solver=no.RK4(),
                       controller=ctrl)  # fmt: skip
        return sol, gradients(sol, y0, *f.parameters())

    def float32() -> Any:
        f = MLP().float()
        y0 = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
        sol = no.solve(f, y0, torch.linspace(0, 3, 7), controller=no.PIDController(1e-4, 1e-6),
                       adjoint=no.BacksolveAdjoint())  # fmt: skip
        return sol, gradients(sol, y0, *f.parameters())

    yield "joint/reverse-pi", reverse
    yield "joint/dense", dense
    yield "joint/stops-jumps", stops
    yield "joint/step-to", step_to
    yield "joint/float32-backsolve", float32
    yield from failure_cases(batch_dims=0)


def blowup(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y**2


def nan_late(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    t = t.reshape(-1, *([1] * (y.ndim - 1))) if t.ndim else t
    return torch.where(t > 0.5, torch.full_like(y, float("nan")), -y)


def failure_cases(batch_dims: int) -> Iterator[tuple[str, Callable[[], Any]]]:
    mode = "joint" if batch_dims == 0 else "sample"
    y0 = torch.tensor([[1.0], [0.2], [-1.0]], dtype=DTYPE)
    ts = torch.tensor([0.0, 0.5, 2.0], dtype=DTYPE)
    if batch_dims:
        ts = ts.expand(3, 3)
    common = {"throw": False, "batch_dims": batch_dims}
    cases = {
        "blowup": lambda: no.solve(blowup, y0, ts, **common),
        "nan": lambda: no.solve(nan_late, y0, ts, **common),
        "max-steps": lambda: no.solve(lambda t, y: -50 * y, y0, ts, max_steps=7, **common),
        "dt-min": lambda: no.solve(blowup, y0, ts, controller=no.PIDController(dt_min=1e-3),
                                   **common),  # fmt: skip
        "fixed-nan": lambda: no.solve(lambda t, y: -500 * y**3, y0 * 3, ts, solver=no.RK4(),
                                      controller=no.ConstantStepSize(0.3), **common),
        "throw": lambda: no.solve(blowup, y0, ts, batch_dims=batch_dims),
        "throw-nan": lambda: no.solve(nan_late, y0, ts, batch_dims=batch_dims),
        "throw-nan-t0": lambda: no.solve(lambda t, y: y / 0 * 0, y0, ts, batch_dims=batch_dims),
        "throw-max-steps": lambda: no.solve(lambda t, y: -50 * y, y0, ts, max_steps=7,
                                            batch_dims=batch_dims),  # fmt: skip
    }  # fmt: skip
    for name, call in cases.items():
        yield f"{mode}/fail-{name}", lambda call=call: (call(), None)


def sample_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    adjoints = {
        "direct": no.DirectAdjoint(),
        "backsolve": no.BacksolveAdjoint(),
        "checkpoint": no.CheckpointAdjoint(),
    }
    gen = torch.Generator().manual_seed(1)
    y0_all = torch.randn(6, 3, generator=gen, dtype=DTYPE)
    ends = torch.tensor([0.3, 1.0, 2.0, 0.05, 1.5, 3.0], dtype=DTYPE)
    grid = torch.linspace(0, 1, 4, dtype=DTYPE)
    for name in ADAPTIVE:  # per-sample mode steps adaptively
        for aname, adjoint in adjoints.items():

            def build(name: str = name, adjoint: Any = adjoint) -> Any:
                f = MLP()
                y0 = y0_all.clone().requires_grad_(True)
                ts = (ends[:, None] * grid).requires_grad_(True)
                sol = no.solve(f, y0, ts, solver=getattr(no, name)(), batch_dims=1,
                               controller=controller_for(name), adjoint=adjoint)  # fmt: skip
                return sol, gradients(sol, y0, ts, *f.parameters())

            yield f"sample/{name}/{aname}", build

    def args_case() -> Any:
        y0 = y0_all.clone().requires_grad_(True)
        rate = torch.linspace(0.5, 3.0, 6, dtype=DTYPE).requires_grad_(True)
        sol = no.solve(lambda t, y, k: -k[:, None] * y + torch.sin(t)[..., None], y0,
                       ends[:, None] * grid, batch_dims=1, args=(rate,))  # fmt: skip
        return sol, gradients(sol, y0, rate)

    def compiled() -> Any:
        f = MLP()
        y0 = torch.randn(40, 3, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
        ts = torch.linspace(0.1, 4.0, 40, dtype=DTYPE)[:, None] * grid
        return no.solve(f, y0, ts, batch_dims=1, compile_step=True), None

    yield "sample/args", args_case
    yield "sample/compiled", compiled
    yield from failure_cases(batch_dims=1)


def controller_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    """Every branch of step-size control, in both modes; tuple states; Hermite outputs."""
    controllers = {
        "pid": no.PIDController(rtol=1e-5, atol=1e-7, pcoeff=0.2, icoeff=0.5, dcoeff=0.1),
        "pi-bounds": no.PIDController(pcoeff=0.3, icoeff=0.4, dt_max=0.2, dt_min=1e-6),
        "force-dt-min": no.PIDController(rtol=1e-9, atol=1e-9, dt_min=0.05, force_dt_min=True),
        "dt0-max-norm": no.PIDController(dt0=0.3, norm=no.max_norm, rtol=1e-4, atol=1e-6),
    }
    gen = torch.Generator().manual_seed(3)
    y0_all = torch.randn(5, 3, generator=gen, dtype=DTYPE)
    ts = torch.tensor([0.0, 0.4, 1.1, 2.5], dtype=DTYPE)
    for cname, ctrl in controllers.items():
        for batch_dims in (0, 1):
            for direction in (1.0, -1.0):

                def build(
                    ctrl: Any = ctrl, batch_dims: int = batch_dims, d: float = direction
                ) -> Any:
                    f = MLP()
                    y0 = y0_all.clone().requires_grad_(True)
                    sol = no.solve(f, y0, d * ts, controller=ctrl, batch_dims=batch_dims,
                                   throw=False)  # fmt: skip
                    return sol, gradients(sol, y0, *f.parameters())

                mode = "joint" if batch_dims == 0 else "sample"
                yield f"{mode}/control-{cname}/{'fwd' if direction > 0 else 'rev'}", build

    for batch_dims in (0, 1):
        for aname, adjoint in (
            ("direct", no.DirectAdjoint()),
            ("checkpoint", no.CheckpointAdjoint()),
        ):

            def tuple_state(batch_dims: int = batch_dims, adjoint: Any = adjoint) -> Any:
                a = y0_all[:, :2].clone().requires_grad_(True)
                b = y0_all[:, 2:].clone().requires_grad_(True)
                sol = no.solve(lambda t, y: (-y[1] * y[0], torch.sin(y[0][..., :1]) - y[1]),
                               (a, b), ts, solver=no.Bosh3(interpolation="hermite"),
                               batch_dims=batch_dims, adjoint=adjoint, params=())  # fmt: skip
                loss = sum((y**2).sum() for y in sol.ys)
                return sol_view(sol), torch.autograd.grad(loss, (a, b))

            mode = "joint" if batch_dims == 0 else "sample"
            yield f"{mode}/tuple-hermite/{aname}", tuple_state


def sol_view(sol: no.Solution) -> Any:
    """A tuple-state solution with ``ys`` concatenated (to digest it like the others)."""

    class View:
        ys = torch.cat([y.flatten(2) for y in sol.ys], -1)
        stats = sol.stats
        status = sol.status
        sample_status = sol.sample_status

    return View()


def all_cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    yield from joint_cases()
    yield from sample_cases()
    yield from controller_cases()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("record", "check"))
    parser.add_argument("path")
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    opts = parser.parse_args()
    results = {}
    for name, build in all_cases():
        if opts.only in name:
            start = time.perf_counter()
            results[name] = run_case(build)
            print(f"{time.perf_counter() - start:6.2f} s  {name}", flush=True)
    if opts.mode == "record":
        with open(opts.path, "w") as fh:
            json.dump(results, fh, indent=1, sort_keys=True)
        print(f"recorded {len(results)} cases in {opts.path}")
        return 0
    with open(opts.path) as fh:
        before = json.load(fh)
    moved = [n for n in results if before.get(n) != json.loads(json.dumps(results[n]))]
    for name in moved:
        print(f"MOVED {name}\n  before {before.get(name)}\n  after  {results[name]}")
    print(f"{len(results) - len(moved)} of {len(results)} cases bitwise identical")
    return 1 if moved else 0


if __name__ == "__main__":
    sys.exit(main())
