"""Learn a switching linear dynamical system, its switching surface included.

The true system is a relay oscillator: the state ``x`` in the plane follows
``dx/dt = A x + s b`` where the mode ``s`` is ``+1`` or ``-1``: mode ``+1`` pulls the state
towards negative ``x[0]`` and mode ``-1`` towards positive, and the mode flips when ``x[0]``
falls through ``-c`` (in mode ``+1``) or rises through ``+c`` (in mode ``-1``): a
switching surface with hysteresis, and an oscillation that never settles. We observe
``x`` (not the mode) along 16 trajectories and learn ``A``, ``b`` and the threshold ``c``
with an event function
(``neuralode.Event``: the condition ``s x[0] + c`` falls through zero, the jump flips
``s``), as in Chen, Amos & Nickel, "Learning Neural Event Functions" (ICLR 2021). The
threshold is a parameter of the event's condition: its gradient comes from the event
times (implicit-function theorem), through every switch of every trajectory, all 16 in one
per-sample solve.

    python examples/switching_lds.py            # about a minute on a CPU
    python examples/switching_lds.py --quick    # a few iterations, for tests

Writes ``switching_lds.png`` (true and learned trajectories with their switches, the
learned parameters over training, the loss) and ``metrics.json`` to ``--out``.
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

TRUE = {"d": 0.1, "w": 1.0, "beta": 1.0, "c": 0.5}
N_TRAJECTORIES = 16
T_END = 8.0
N_TIMES = 60


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300, help="Adam iterations")
    parser.add_argument("--lr", type=float, default=0.03, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="5 iterations (smoke test)")
    parser.add_argument("--out", type=Path, default=Path("runs/switching_lds"))
    return parser.parse_args(argv)


class Relay(nn.Module):
    """``dx/dt = A x + s b`` on the state ``(x, s)``; the mode ``s`` changes only at switches.

    ``A = [[-d, w], [-w, -d]]`` (a damped rotation) and ``b = (0, -beta)``: the learned
    parameters are the damping ``d``, the frequency ``w``, the push ``beta`` and the
    threshold ``c`` (through its log, so it stays positive).
    """

    def __init__(self, d: float, w: float, beta: float, c: float) -> None:
        super().__init__()
        dtype = torch.get_default_dtype()
        self.d = nn.Parameter(torch.tensor(d, dtype=dtype))
        self.w = nn.Parameter(torch.tensor(w, dtype=dtype))
        self.beta = nn.Parameter(torch.tensor(beta, dtype=dtype))
        self.log_c = nn.Parameter(torch.tensor(c, dtype=dtype).log())

    @property
    def a(self) -> torch.Tensor:
        return torch.stack([torch.stack([-self.d, self.w]), torch.stack([-self.w, -self.d])])

    @property
    def b(self) -> torch.Tensor:
        return torch.stack([torch.zeros_like(self.beta), -self.beta])

    @property
    def c(self) -> torch.Tensor:
        return self.log_c.exp()

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple:
        x, s = state  # (n, 2) and (n,)
        return x @ self.a.T + s[:, None] * self.b, torch.zeros_like(s)

    def switch(self) -> Event:
        return Event(
            lambda t, state: state[1] * state[0][:, 0] + self.c,
            direction=-1,
            terminal=False,
            jump=lambda t, state: (state[0], -state[1]),
        )

    def simulate(self, x0: torch.Tensor, ts: torch.Tensor) -> neuralode.Solution:
        return neuralode.solve(
            self, (x0, torch.ones(x0.shape[0])), ts, batch_dims=1, event=self.switch(),
            controller=PIDController(rtol=1e-7, atol=1e-9),
        )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    pyplot()  # fail before training, not after it, if matplotlib is missing
    torch.manual_seed(args.seed)
    torch.set_default_dtype(torch.float64)
    iters = 5 if args.quick else args.iters
    x0 = 2.0 * torch.rand(N_TRAJECTORIES, 2) - 1.0
    x0[:, 0] = x0[:, 0].abs() + 0.2  # every trajectory starts in mode +1, right of -c
    ts = torch.linspace(0.0, T_END, N_TIMES)
    truth = Relay(**TRUE)
    with torch.no_grad():
        observed = truth.simulate(x0, ts).ys[0]  # (T, n, 2): x only, not the mode

    # A wrong first guess: no damping, a slower rotation, a weaker push, too wide a relay.
    model = Relay(d=0.0, w=0.9, beta=0.7, c=0.7)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    losses, history, start = [], [], time.perf_counter()
    for it in range(iters):
        optimizer.zero_grad()
        sol = model.simulate(x0, ts)
        loss = (sol.ys[0] - observed).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            history.append(tuple(float(v) for v in (model.c, model.beta, model.d, model.w)))
        if it % 50 == 0 or it == iters - 1:
            switches = int((~torch.isnan(sol.event_ts)).sum()) if sol.event_ts is not None else 0
            print(f"iter {it:4d}  loss {float(loss.detach()):.3e}  c {history[-1][0]:.4f}  "
                  f"switches {switches}")  # fmt: skip
    seconds = time.perf_counter() - start
    learned = dict(zip(("c", "beta", "d", "w"), history[-1], strict=True))
    metrics = {
        "iterations": iters,
        "seconds": seconds,
        "final_loss": losses[-1],
        **{name: learned[name] for name in TRUE},
        **{f"{name}_error": abs(learned[name] - TRUE[name]) for name in TRUE},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot(args.out / "switching_lds.png", model, truth, x0, ts, observed, losses, history)
    print(json.dumps(metrics, indent=2))
    return metrics


def plot(
    path: Path,
    model: Relay,
    truth: Relay,
    x0: torch.Tensor,
    ts: torch.Tensor,
    observed: torch.Tensor,
    losses: list[float],
    history: list[tuple[float, float, float]],
) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    fine = torch.linspace(0.0, T_END, 800)
    shown = [0, 1]
    with torch.no_grad():
        true_path = truth.simulate(x0[shown], fine)
        learned = model.simulate(x0[shown], fine)
    for i in range(len(shown)):
        axes[0].plot(*true_path.ys[0][:, i].T, color=f"C{i}", lw=2.5, alpha=0.35)
        axes[0].plot(*learned.ys[0][:, i].T, color=f"C{i}", lw=1.2, ls="--")
        axes[0].plot(*observed[:, shown[i]].T, ".", color=f"C{i}", ms=3)
    for x, style in ((TRUE["c"], "-"), (history[-1][0], "--")):
        for sign in (1, -1):
            axes[0].axvline(sign * x, color="grey", lw=1, ls=style)
    axes[0].set(
        xlabel="x[0]", ylabel="x[1]",
        title="Trajectories 0–1: true (wide), learned (dashed);\nswitching lines ±c",
    )  # fmt: skip
    steps = range(len(history))
    names = ("threshold c", "push beta", "damping d", "frequency w")
    targets = (TRUE["c"], TRUE["beta"], TRUE["d"], TRUE["w"])
    for k, (name, target) in enumerate(zip(names, targets, strict=True)):
        axes[1].plot(steps, [h[k] for h in history], color=f"C{k}", label=name)
        axes[1].axhline(target, color=f"C{k}", lw=1, ls=":")
    axes[1].set(xlabel="iteration", title="Learned parameters (dotted: true)")
    axes[1].legend()
    axes[2].semilogy(losses)
    axes[2].set(xlabel="iteration", ylabel="mean squared error of x", title="Loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
