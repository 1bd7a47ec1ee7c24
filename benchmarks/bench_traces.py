"""CNF trace estimators: exact (closed form, loop, batched) against Hutchinson, 2-D and 64-D.

Two measurements per setting, all estimators interleaved in the same run:

* one evaluation of the dynamics with its trace under ``create_graph=True`` and the
  backward pass through both (the unit of a CNF training step's cost);
* the loss and gradient of one maximum-likelihood training iteration (``nll_loss`` and
  backward; no optimiser step, so every round times the same weights), dopri5 at
  rtol = atol = 1e-5 with backprop through the solver, and its forward NFE.

Settings: D = 2, the paper's planar CNF (width 64) on two moons, batch 512, t1 = 10
(torchdiffeq's ``cnf.py``); D = 64, FFJORD's MLP dynamics (ConcatSquash 64-64-64) on an
8-component Gaussian mixture, batch 256, t1 = 1. None of torchdiffeq, torchode and torchdyn
ships a trace estimator (torchdiffeq's example loops over dimensions like ``ExactTrace()``),
so the ratios here are against our own exact loop.

Usage: python benchmarks/bench_traces.py [--repeats N] [--out PATH]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from _harness import Table, fmt_ms, fmt_ratio, hardware_info, info_table
from _harness import time_interleaved as interleave

import neuralode as no
from neuralode.data import sample_toy
from neuralode.nn import CNF, ExactTrace, HutchinsonTrace, MLPDynamics, PlanarDynamics
from neuralode.nn.density_estimation import nll_loss

TRACES = {
    "exact (closed form)": ExactTrace(),  # only where the dynamics have forward_with_trace
    "exact (loop)": ExactTrace(closed_form=False),
    "exact (batched)": ExactTrace(batched=True, closed_form=False),
    "Hutchinson": HutchinsonTrace("rademacher"),
}


def mixture(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points of 8 well-separated unit Gaussians in ``dim`` dimensions."""
    centres = 4.0 * torch.randn(8, dim, generator=generator)
    pick = torch.randint(0, 8, (n,), generator=generator)
    return centres[pick] + torch.randn(n, dim, generator=generator)


def settings() -> list[tuple[str, Callable[[], torch.nn.Module], torch.Tensor, float]]:
    gen = torch.Generator().manual_seed(0)
    return [
        ("D = 2, planar CNF (M = 64), moons, batch 512",
         lambda: PlanarDynamics(2, 64), sample_toy("moons", 512, generator=gen), 10.0),
        ("D = 64, MLP 64-64-64, Gaussian mixture, batch 256",
         lambda: MLPDynamics(64, (64, 64, 64)), mixture(256, 64, gen), 1.0),
    ]  # fmt: skip


def evaluation(dynamics: torch.nn.Module, trace: object, x: torch.Tensor) -> Callable[[], None]:
    """One field evaluation with its differentiable trace, then backward through both."""
    noise = trace.draw_noise(x)  # type: ignore[attr-defined]

    def run() -> None:
        z = x.detach().requires_grad_(True)
        f, tr = trace.field_and_trace(  # type: ignore[attr-defined]
            dynamics, torch.tensor(0.5), z, noise, create_graph=True
        )
        (f.square().sum() + tr.sum()).backward()

    return run


def iteration(cnf: CNF, x: torch.Tensor) -> Callable[[], None]:
    """A training iteration's loss and gradient (NLL and backward)."""

    def run() -> None:
        cnf.zero_grad(set_to_none=True)
        loss, _ = nll_loss(cnf, x)
        loss.backward()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["# CNF trace estimators", "", info_table(hardware_info()), ""]
    for title, make_dynamics, x, t1 in settings():
        torch.manual_seed(0)
        dynamics = make_dynamics()
        closed = hasattr(dynamics, "forward_with_trace")
        traces = {name: trace for name, trace in TRACES.items()
                  if closed or name != "exact (closed form)"}  # fmt: skip
        cnfs = {name: CNF(make_dynamics(), trace=trace, t1=t1,
                          controller=no.PIDController(rtol=1e-5, atol=1e-5))
                for name, trace in traces.items()}  # fmt: skip
        for cnf in cnfs.values():  # the same weights for every estimator
            cnf.dynamics.load_state_dict(dynamics.state_dict())
        evals = interleave(
            {name: evaluation(dynamics, trace, x) for name, trace in traces.items()},
            args.repeats,
        )
        iters = interleave({name: iteration(cnf, x) for name, cnf in cnfs.items()},
                           args.repeats, min_sample_s=0.0)  # fmt: skip
        table = Table(["trace", "evaluation + backward, ms (IQR)", "vs exact loop",
                       "training iteration, ms (IQR)", "vs exact loop", "NFE"])  # fmt: skip
        base_e, base_i = evals["exact (loop)"].median, iters["exact (loop)"].median
        for name in traces:
            table.add(name, fmt_ms(evals[name]), fmt_ratio(evals[name].median / base_e),
                      fmt_ms(iters[name]), fmt_ratio(iters[name].median / base_i),
                      cnfs[name].stats.nfe)  # fmt: skip
        lines += [f"## {title}", "", table.render(), ""]
        print("\n".join(lines[-4:]), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
