"""Recover the three rate constants of Robertson's stiff chemical kinetics from noisy data.

ROBER (Robertson 1966; Hairer & Wanner II, §IV.1): A → B at rate 0.04, B + C → A + C at
1e4, 2B → B + C at 3e7; y = ([A], [B], [C]), y(0) = (1, 0, 0). Its rates span nine
decades, so it is stiff: an explicit solver must keep its steps below ~1e-4 for stability
over a horizon of 1e5. The data are the three concentrations at 21 log-spaced times in
[1e-5, 1e5] with 1% noise; the model is the same system with unknown rates, trained on
their base-10 logarithms from a start 0.4 decades off each, with Adam, through Kvaerno5
(implicit, L-stable) and CheckpointAdjoint (exact gradients; the backsolve adjoint
would solve the stiff system backwards in time, where it blows up). The same forward
solve with Dopri5 is tried once, under a budget of 20,000 steps: it reaches t ≈ 24 of
1e5.

    python examples/stiff_rober.py            # 80 iterations, about a minute on a 2-core CPU
    python examples/stiff_rober.py --quick    # 3 iterations, for tests

Writes ``stiff_rober.png`` (data and fit, the loss) and ``metrics.json`` to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import neuralode as no

D = torch.float64
TRUE_RATES = (0.04, 1e4, 3e7)
# Loss weights: [B] stays below 4e-5, so it is scaled to the others' size.
SCALE = torch.tensor([1.0, 1e4, 1.0], dtype=D)
TS = torch.cat([torch.zeros(1, dtype=D), torch.logspace(-5, 5, 21, dtype=D)])
Y0 = torch.tensor([1.0, 0.0, 0.0], dtype=D)
TOL = 1e-6, 1e-10  # rtol, atol


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=80, help="training iterations")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate")
    parser.add_argument("--noise", type=float, default=0.01, help="relative noise of the data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/stiff_rober"), help="output folder")
    parser.add_argument(
        "--explicit-steps", type=int, default=20_000, help="step budget of the Dopri5 attempt"
    )
    parser.add_argument("--quick", action="store_true", help="a few iterations (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.iters, args.explicit_steps = 3, 2_000
    if args.iters < 1:
        parser.error(f"--iters must be at least 1, got {args.iters}")
    return args


def rober(log_rates: torch.Tensor):
    """The ROBER vector field with rates ``10**log_rates``."""

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k = 10**log_rates
        slow = -k[0] * y[0] + k[1] * y[1] * y[2]
        fast = k[2] * y[1] ** 2
        return torch.stack([slow, -slow - fast, fast])

    return f


def implicit_solve(log_rates: torch.Tensor) -> no.Solution:
    rtol, atol = TOL
    return no.solve(
        rober(log_rates), Y0, TS,
        solver=no.Kvaerno5(newton=no.Newton(rtol=rtol, atol=atol)),
        # Output times as step ends: between them the dense output is only 3rd order.
        controller=no.PIDController(rtol=rtol, atol=atol, step_ts=TS),
        adjoint=no.CheckpointAdjoint(), params=[log_rates],
    )  # fmt: skip


def explicit_attempt(log_rates: torch.Tensor, max_steps: int) -> dict:
    """The forward solve with Dopri5 under a budget of ``max_steps`` steps."""
    start = time.perf_counter()
    with torch.no_grad():
        sol = no.solve(
            rober(log_rates), Y0, TS, solver=no.Dopri5(),
            controller=no.PIDController(rtol=TOL[0], atol=TOL[1]), max_steps=max_steps,
            throw=False,
        )  # fmt: skip
    return {
        "status": sol.status.name,
        "reached_t": float(sol.t_last),
        "nfe": sol.stats.nfe,
        "seconds": round(time.perf_counter() - start, 2),
    }


def train(args: argparse.Namespace, data: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    start_offset = torch.tensor([0.4, -0.4, 0.4], dtype=D)
    log_rates = (torch.tensor(TRUE_RATES, dtype=D).log10() + start_offset).requires_grad_(True)
    opt = torch.optim.Adam([log_rates], lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.iters)
    losses = []
    for it in range(args.iters):
        start = time.perf_counter()
        opt.zero_grad()
        sol = implicit_solve(log_rates)
        loss = (((sol.ys - data) * SCALE) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        rates = ", ".join(f"{r:.4g}" for r in (10 ** log_rates.detach()).tolist())
        print(
            f"iter {it:3d}  loss {losses[-1]:.3e}  rates [{rates}]  steps {sol.stats.steps}  "
            f"nfe {sol.stats.nfe}  {time.perf_counter() - start:.2f} s"
        )
    return log_rates.detach(), losses


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or exit with the install line."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install 'neuralode[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(path: Path, data: torch.Tensor, fitted: torch.Tensor, losses: list[float]) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    t = TS[1:].numpy()
    for i, (name, scale) in enumerate(zip(("A", "B ×1e4", "C"), SCALE.tolist(), strict=True)):
        color = f"C{i}"
        axes[0].plot(t, data[1:, i].numpy() * scale, "o", ms=4, color=color, label=f"[{name}] data")
        axes[0].plot(t, fitted[1:, i].numpy() * scale, "-", color=color, label=f"[{name}] fit")
    axes[0].set(xscale="log", xlabel="t", title="concentrations (Kvaerno5 fit)")
    axes[0].legend(fontsize=7)
    axes[1].semilogy(losses)
    axes[1].set(xlabel="iteration", title="loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    pyplot()  # fail before training, not after it, if matplotlib is missing
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        clean = implicit_solve(torch.tensor(TRUE_RATES, dtype=D).log10()).ys
    data = clean + args.noise * clean.abs() * torch.randn(clean.shape, dtype=D)
    explicit = explicit_attempt(torch.tensor(TRUE_RATES, dtype=D).log10(), args.explicit_steps)
    print(f"Dopri5, one forward solve with the true rates: {explicit}")
    log_rates, losses = train(args, data)
    with torch.no_grad():
        fitted = implicit_solve(log_rates).ys
    rates = (10**log_rates).tolist()
    metrics = {
        "final_loss": losses[-1],
        "rates": rates,
        "true_rates": list(TRUE_RATES),
        "relative_errors": [abs(r / t - 1) for r, t in zip(rates, TRUE_RATES, strict=True)],
        "explicit_dopri5": explicit,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot(args.out / "stiff_rober.png", data, fitted, losses)
    worst = max(metrics["relative_errors"])
    print(f"rates {rates} (true {list(TRUE_RATES)}); worst relative error {worst:.2%}")


if __name__ == "__main__":
    main()
