"""Fit bouncing balls' restitutions and gravity from their observed bounce times.

Sixty-four balls are dropped from different heights, each with its own coefficient of
restitution; we observe the times of their first five bounces (with a little timing
noise). The model is the free-fall ODE with a learnable gravity, a learnable restitution
per ball and a bounce event (``neuralode.Event``: the height falls through zero, the
velocity is reversed and scaled by the restitution). All balls are solved in ONE
per-sample call, each with its own steps and its own events; the loss is the squared
error of the predicted bounce times, whose gradients come from the implicit-function
theorem at every bounce, through every earlier bounce.

    python examples/bouncing_balls.py            # about half a minute on a CPU
    python examples/bouncing_balls.py --quick    # a few iterations, for tests

Writes ``bouncing_balls.png`` (trajectories of a few balls, learned against true
restitutions, the loss) and ``metrics.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _plotting import pyplot  # examples/ is on sys.path when a script runs
from torch import nn

import neuralode
from neuralode import Event, PIDController

TRUE_GRAVITY = 9.81
N_BALLS = 64
N_BOUNCES = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300, help="Adam iterations")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam learning rate")
    parser.add_argument("--noise", type=float, default=1e-3, help="timing noise (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="5 iterations (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("runs/bouncing_balls"))
    return parser.parse_args(argv)


class Balls(nn.Module):
    """Free fall with a learnable gravity; each ball's restitution is a sigmoid."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.log_gravity = nn.Parameter(torch.tensor(7.0).log())  # a wrong first guess
        self.restitution_logit = nn.Parameter(torch.zeros(n))  # e = 0.5 for every ball

    @property
    def gravity(self) -> torch.Tensor:
        return self.log_gravity.exp()

    @property
    def restitution(self) -> torch.Tensor:
        return torch.sigmoid(self.restitution_logit)

    def forward(self, t: torch.Tensor, y: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        # y = (height, velocity) per ball; e (each ball's restitution) rides along as args.
        return torch.stack([y[:, 1], -self.gravity * torch.ones_like(y[:, 1])], dim=-1)

    def bounce(self, n_bounces: int) -> Event:
        return Event(
            lambda t, y, e: y[:, 0],  # the height
            direction=-1,  # falling through the floor
            terminal=n_bounces,  # each ball stops at its n-th bounce
            jump=lambda t, y, e: torch.stack([y[:, 0], -e * y[:, 1]], dim=-1),
        )

    def simulate(
        self, h0: torch.Tensor, e: torch.Tensor, ts: torch.Tensor, n_bounces: int
    ) -> neuralode.Solution:
        """Balls dropped from ``h0`` with restitutions ``e``, each to its n-th bounce."""
        y0 = torch.stack([h0, torch.zeros_like(h0)], dim=-1)
        return neuralode.solve(
            self, y0, ts, batch_dims=1, args=e, event=self.bounce(n_bounces),
            controller=PIDController(rtol=1e-8, atol=1e-10),
        )  # fmt: skip


def true_bounce_times(h0: torch.Tensor, e: torch.Tensor, n: int) -> torch.Tensor:
    """Closed form: the fall takes sqrt(2h/g); each flight after a bounce 2 e v / g."""
    t = torch.sqrt(2 * h0 / TRUE_GRAVITY)
    v, times = TRUE_GRAVITY * t, [t]
    for _ in range(n - 1):
        v = e * v
        times.append(times[-1] + 2 * v / TRUE_GRAVITY)
    return torch.stack(times, dim=-1)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    pyplot()  # fail before training, not after it, if matplotlib is missing
    torch.manual_seed(args.seed)
    torch.set_default_dtype(torch.float64)
    iters = 5 if args.quick else args.iters
    h0 = 1.0 + 2.0 * torch.rand(N_BALLS)
    true_e = 0.5 + 0.4 * torch.rand(N_BALLS)
    observed = true_bounce_times(h0, true_e, N_BOUNCES)
    observed = observed + args.noise * torch.randn_like(observed)
    ts = torch.tensor([0.0, float(observed.max()) + 10.0])

    model = Balls(N_BALLS)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses, start = [], time.perf_counter()
    for it in range(iters):
        optimizer.zero_grad()
        sol = model.simulate(h0, model.restitution, ts, N_BOUNCES)
        assert sol.event_ts is not None
        loss = (sol.event_ts - observed).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
        if it % 50 == 0 or it == iters - 1:
            gravity = float(model.gravity.detach())
            print(
                f"iter {it:4d}  loss {float(loss):.3e}  gravity {gravity:.4f}  "
                f"rows evaluated {sol.stats.rows}"
            )
    seconds = time.perf_counter() - start
    e_error = (model.restitution.detach() - true_e).abs()
    metrics = {
        "iterations": iters,
        "seconds": seconds,
        "final_loss": losses[-1],
        "gravity": float(model.gravity.detach()),
        "gravity_error": abs(float(model.gravity.detach()) - TRUE_GRAVITY),
        "restitution_mae": float(e_error.mean()),
        "restitution_max_error": float(e_error.max()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot(args.out / "bouncing_balls.png", model, h0, true_e, observed, losses)
    print(json.dumps(metrics, indent=2))
    return metrics


def plot(
    path: Path,
    model: Balls,
    h0: torch.Tensor,
    true_e: torch.Tensor,
    observed: torch.Tensor,
    losses: list[float],
) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    # A few balls' heights over time: the learned model against the true balls.
    shown = [0, 1, 2]
    grid = torch.linspace(0.0, float(observed[shown].max()), 400)
    with torch.no_grad():
        e = model.restitution[shown]
        learned = model.simulate(h0[shown], e, grid, N_BOUNCES).ys[..., 0]
        truth = Balls(len(shown))
        truth.log_gravity.fill_(torch.tensor(TRUE_GRAVITY).log())
        true_path = truth.simulate(h0[shown], true_e[shown], grid, N_BOUNCES).ys[..., 0]
    for i, b in enumerate(shown):
        axes[0].plot(grid, true_path[:, i], color=f"C{i}", lw=2.5, alpha=0.35)
        axes[0].plot(grid, learned[:, i], color=f"C{i}", lw=1.2, ls="--")
        axes[0].plot(observed[b], torch.zeros(N_BOUNCES), "o", color=f"C{i}", ms=4)
    axes[0].set(xlabel="t", ylabel="height", title="Balls 0–2: true (wide), learned (dashed)")
    axes[1].plot([0.45, 0.95], [0.45, 0.95], color="grey", lw=1)
    axes[1].scatter(true_e, model.restitution.detach(), s=12)
    axes[1].set(
        xlabel="true restitution", ylabel="learned restitution",
        title=f"64 balls; gravity {float(model.gravity.detach()):.3f} (true {TRUE_GRAVITY})",
    )  # fmt: skip
    axes[2].semilogy(losses)
    axes[2].set(xlabel="iteration", ylabel="mean squared bounce-time error (s²)", title="Loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
