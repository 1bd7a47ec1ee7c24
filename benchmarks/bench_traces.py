"""CNF training costs: trace estimators (2-D and 64-D) and gradient methods (2-D).

Trace estimators, exact (closed form, loop, batched) against Hutchinson; two measurements
per setting, all estimators interleaved in the same run:

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

Gradient methods: one training iteration (loss and gradient) of the planar CNF with the
closed-form exact trace, by neuralode's DirectAdjoint (backprop through the solver),
BacksolveAdjoint and CheckpointAdjoint, against torchdiffeq's odeint (what its
``examples/cnf.py`` runs by default) and odeint_adjoint on the same augmented field and
weights, dopri5 at rtol = atol = 1e-5, interleaved. Settings: P5's density matching (U2,
M = 8, batch 256, t1 = 1, reverse KL) and maximum likelihood (two moons, M = 64, batch 512,
t1 = 10, base N(0, 0.1 I)).

Usage: python benchmarks/bench_traces.py [--repeats N] [--only traces|gradients] [--out PATH]
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
from neuralode.data import energy_target, sample_toy
from neuralode.nn import (
    CNF,
    ExactTrace,
    GaussianBase,
    HutchinsonTrace,
    MLPDynamics,
    PlanarDynamics,
)
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


ADJOINTS = {
    "neuralode direct": no.DirectAdjoint(),
    "neuralode backsolve": no.BacksolveAdjoint(),
    "neuralode checkpoint": no.CheckpointAdjoint(),
}
TOL = 1e-5


class PlanarField(torch.nn.Module):
    """``(z, Δ) ↦ (f, −tr ∂f/∂z)`` of :class:`PlanarDynamics` for torchdiffeq."""

    def __init__(self, dynamics: PlanarDynamics) -> None:
        super().__init__()
        self.dynamics = dynamics
        self.nfe = 0

    def forward(
        self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.nfe += 1
        f, trace = self.dynamics.forward_with_trace(t, state[0])
        return f, -trace


def gradient_settings() -> list[tuple[str, int, float, float, Callable[[CNF], torch.Tensor]]]:
    """(title, width M, t1, base std, loss of a CNF) of P5's two tasks."""
    target = energy_target("U2")
    data = sample_toy("moons", 512, generator=torch.Generator().manual_seed(0))

    def reverse_kl(cnf: CNF) -> torch.Tensor:
        x, log_q = cnf.sample_and_log_prob(256, torch.Generator().manual_seed(1))
        return (log_q + target.energy(x)).mean()

    def nll(cnf: CNF) -> torch.Tensor:
        return -cnf.log_prob(data).mean()

    return [
        ("density matching: U2, M = 8, batch 256, t1 = 1", 8, 1.0, 1.0, reverse_kl),
        ("maximum likelihood: two moons, M = 64, batch 512, t1 = 10", 64, 10.0, 0.1**0.5, nll),
    ]


def iteration_of(cnf: CNF, loss_of: Callable[[CNF], torch.Tensor]) -> Callable[[], None]:
    """One training iteration's loss and gradient (no optimiser step: same weights)."""

    def run() -> None:
        cnf.dynamics.zero_grad(set_to_none=True)
        loss_of(cnf).backward()

    return run


def torchdiffeq_twin(cnf: CNF, adjoint: bool, field: PlanarField) -> CNF:
    """``cnf`` (same weights, base and times) with torchdiffeq solving its augmented field."""
    import torchdiffeq

    odeint = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint

    def solve(z: torch.Tensor, t0: float, t1: float) -> tuple[torch.Tensor, torch.Tensor]:
        ts = torch.tensor([t0, t1])
        zs, deltas = odeint(field, (z, torch.zeros(len(z))), ts, rtol=TOL, atol=TOL,
                            method="dopri5")  # fmt: skip
        return zs[-1], deltas[-1]

    class Solved(CNF):  # the same loss code as neuralode's, with torchdiffeq's solve
        def _solve_with_density(self, z, times, generator):  # type: ignore[no-untyped-def]
            zt, dt = solve(z, times[0], times[-1])
            return zt.unsqueeze(0), dt.unsqueeze(0)

    return Solved(cnf.dynamics, base=cnf.base, t0=cnf.t0, t1=cnf.t1)


def gradient_methods(repeats: int) -> list[str]:
    """A table per P5 task: one training iteration by each gradient method."""
    lines = []
    for title, width, t1, std, loss_of in gradient_settings():
        torch.manual_seed(0)
        dynamics = PlanarDynamics(2, width)
        base = GaussianBase(2, std=std)
        controller = no.PIDController(rtol=TOL, atol=TOL)
        cnfs = {name: CNF(dynamics, base=base, t1=t1, controller=controller, adjoint=adjoint)
                for name, adjoint in ADJOINTS.items()}  # fmt: skip
        fields = {name: PlanarField(dynamics)
                  for name in ("torchdiffeq odeint", "torchdiffeq odeint_adjoint")}  # fmt: skip
        twins = {name: torchdiffeq_twin(cnfs["neuralode direct"], "adjoint" in name, field)
                 for name, field in fields.items()}  # fmt: skip
        models = {**cnfs, **twins}

        nfe: dict[str, str] = {}
        for name, cnf in models.items():  # one counted run each, outside the timing
            if name in fields:
                fields[name].nfe = 0
                iteration_of(cnf, loss_of)()
                nfe[name] = str(fields[name].nfe)
            else:
                iteration_of(cnf, loss_of)()
                nfe[name] = f"{cnf.stats.nfe} + {cnf.stats.nfe_backward}"
        times = interleave({name: iteration_of(cnf, loss_of) for name, cnf in models.items()},
                           repeats, min_sample_s=0.0)  # fmt: skip
        base_ms = times["torchdiffeq odeint"].median
        table = Table(["gradient method", "training iteration, ms (IQR)",
                       "vs torchdiffeq odeint", "NFE (forward + backward)"])  # fmt: skip
        for name in models:
            table.add(name, fmt_ms(times[name]), fmt_ratio(times[name].median / base_ms),
                      nfe[name])  # fmt: skip
        lines += [f"## Gradient methods, {title}", "", table.render(), ""]
        print("\n".join(lines[-4:]), flush=True)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    parser.add_argument("--only", choices=("traces", "gradients"), help="one part only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["# CNF training costs", "", info_table(hardware_info(["torchdiffeq"])), ""]
    for title, make_dynamics, x, t1 in settings() if args.only != "gradients" else []:
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
    if args.only != "traces":
        lines += gradient_methods(args.repeats)
    if args.out:
        args.out.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
