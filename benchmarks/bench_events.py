"""Batched bouncing balls: one per-sample neuralode solve against loops of odeint_event.

B balls, each dropped from its own height with its own restitution, bounce ``--bounces``
times. neuralode solves all of them in ONE per-sample call (``batch_dims=1``, an
``Event`` with a jump, terminal at the last bounce): each ball takes its own steps and
meets its own events, and finished balls leave the batch. torchdiffeq's ``odeint_event``
stops the whole solve at the first event of any element, so a batch of balls needs a
loop over balls and bounces (its ``bouncing_ball.py`` example's pattern: solve to the
event, update the state, solve again). Both are timed without gradients and with the
gradient of the bounce times with respect to every restitution, interleaved, medians;
the error of every bounce time against the closed form is reported beside each.

    python benchmarks/bench_events.py            # B = 16 and 64, 5 bounces
    python benchmarks/bench_events.py --quick    # B = 8, 3 bounces, 2 rounds
"""

from __future__ import annotations

import argparse
import math

import torch
from _harness import Table, fmt_err, fmt_ms, fmt_ratio, hardware_info, info_table, time_interleaved

import neuralode as no

G = 9.81
RTOL, ATOL = 1e-8, 1e-10


def balls(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    h0 = 1.0 + 2.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    e = 0.5 + 0.4 * torch.rand(n, generator=gen, dtype=torch.float64)
    return h0, e


def exact(h0: torch.Tensor, e: torch.Tensor, bounces: int) -> torch.Tensor:
    t = torch.sqrt(2 * h0 / G)
    v, times = G * t, [t]
    for _ in range(bounces - 1):
        v = e * v
        times.append(times[-1] + 2 * v / G)
    return torch.stack(times, -1)


def neuralode_batched(h0: torch.Tensor, e: torch.Tensor, bounces: int) -> torch.Tensor:
    def fall(t, y, e):
        return torch.stack([y[:, 1], torch.full_like(y[:, 1], -G)], -1)

    event = no.Event(
        lambda t, y, e: y[:, 0], direction=-1, terminal=bounces,
        jump=lambda t, y, e: torch.stack([y[:, 0], -e * y[:, 1]], -1),
    )  # fmt: skip
    y0 = torch.stack([h0, torch.zeros_like(h0)], -1)
    ts = torch.tensor([0.0, 100.0], dtype=torch.float64)
    sol = no.solve(
        fall, y0, ts, batch_dims=1, args=e, event=event,
        controller=no.PIDController(rtol=RTOL, atol=ATOL),
    )  # fmt: skip
    assert sol.event_ts is not None
    return sol.event_ts


def torchdiffeq_loop(h0: torch.Tensor, e: torch.Tensor, bounces: int) -> torch.Tensor:
    from torchdiffeq import odeint_event

    def fall(t, state):
        return state[1], torch.full_like(state[1], -G)

    times = []
    for b in range(h0.shape[0]):
        t0 = torch.zeros((), dtype=torch.float64)
        state = (h0[b : b + 1], torch.zeros(1, dtype=torch.float64))
        row = []
        for _ in range(bounces):
            t0, solution = odeint_event(
                fall, state, t0, event_fn=lambda t, s: s[0], rtol=RTOL, atol=ATOL
            )
            pos, vel = (s[-1] for s in solution)
            # As torchdiffeq's example: nudge the ball up so the event does not fire at once.
            state = (pos + 1e-7, -e[b : b + 1] * vel)
            row.append(t0.reshape(()))
        times.append(torch.stack(row))
    return torch.stack(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sizes, bounces, rounds = ([8], 3, 2) if args.quick else ([16, 64], 5, args.rounds)
    print(info_table(hardware_info(["torchdiffeq"])))
    table = Table([
        "balls", "mode", "neuralode, one call (ms)", "torchdiffeq loop (ms)", "ratio",
        "max error neuralode", "max error torchdiffeq",
    ])  # fmt: skip
    for n in sizes:
        h0, e = balls(n)
        truth = exact(h0, e, bounces)
        for mode in ("no grad", "grad"):

            def run(fn, h0=h0, e=e, mode=mode):
                if mode == "no grad":
                    with torch.no_grad():
                        return fn(h0, e, bounces)
                e_var = e.clone().requires_grad_(True)
                times = fn(h0, e_var, bounces)
                times.sum().backward()
                return times.detach()

            errors = {
                name: float((run(fn) - truth).abs().max())
                for name, fn in (
                    ("neuralode", neuralode_batched),
                    ("torchdiffeq", torchdiffeq_loop),
                )
            }
            timings = time_interleaved(
                {
                    "neuralode": lambda run=run: run(neuralode_batched),
                    "torchdiffeq": lambda run=run: run(torchdiffeq_loop),
                },
                rounds,
                min_sample_s=0.0,
            )
            ratio = timings["neuralode"].median / timings["torchdiffeq"].median
            table.add(
                n, mode, fmt_ms(timings["neuralode"]), fmt_ms(timings["torchdiffeq"]),
                fmt_ratio(ratio), fmt_err(errors["neuralode"]), fmt_err(errors["torchdiffeq"]),
            )  # fmt: skip
            print(table.rows[-1], flush=True)
    print()
    print(f"{bounces} bounces per ball, rtol={RTOL}, atol={ATOL}; medians of {rounds} "
          "interleaved rounds (interquartile range in brackets); ratio = neuralode / "
          "torchdiffeq (below 1: neuralode faster).")  # fmt: skip
    print(table.render())
    assert math.isfinite(ratio)


if __name__ == "__main__":
    main()
