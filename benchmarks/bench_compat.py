"""Every torchdiffeq method through neuralode.compat against torchdiffeq itself.

The same calls (``odeint(func, y0, t, method=..., options=...)``) on the same problem,
interleaved, medians: forward without gradients, and forward + backward (backprop
through the solver for ``odeint``; ``odeint_adjoint`` for the adaptive methods). The
error of each against a tight reference is printed beside it, so a ratio is only read
where both reach comparable accuracy. Methods torchdiffeq 0.2.5 does not have (its
development branch's implicit fixed-grid methods) are timed for neuralode only.

    python benchmarks/bench_compat.py            # 7 rounds
    python benchmarks/bench_compat.py --quick    # 2 rounds, fewer methods
"""

from __future__ import annotations

import argparse
import math
import warnings

import torch
import torchdiffeq
from _harness import Table, fmt_err, fmt_ms, fmt_ratio, hardware_info, info_table, time_interleaved

from neuralode import compat

RTOL, ATOL = 1e-6, 1e-8
STEP = 0.02


class Field(torch.nn.Module):
    """A small MLP vector field with a time input, batch of 64 two-dimensional states."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(2, 64, generator=gen) / 2**0.5)
        self.w2 = torch.nn.Parameter(torch.randn(64, 2, generator=gen) / 8)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ self.w1) @ self.w2 * torch.cos(t)


def cases(quick: bool) -> list[tuple[str, dict, bool]]:
    """(method, options, whether torchdiffeq 0.2.5 has it)."""
    adaptive = ["dopri5", "bosh3", "adaptive_heun"] if quick else [
        "dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun",
    ]  # fmt: skip
    fixed = ["euler", "rk4"] if quick else ["euler", "midpoint", "heun3", "rk4"]
    adams = ["explicit_adams", "implicit_adams"]
    out = [(m, {}, True) for m in adaptive]
    out += [(m, {"step_size": STEP}, True) for m in fixed]
    out += [(m, {"step_size": STEP, "max_order": 4}, True) for m in adams]
    out += [(m, {"step_size": STEP}, True) for m in adams]  # max_order 12, the default
    if not quick:
        out += [(m, {"step_size": STEP}, False) for m in ("implicit_euler", "trbdf2", "gl4")]
    out += [
        ("scipy_solver", {"solver": s}, True) for s in (["RK45"] if quick else ["RK45", "LSODA"])
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # torchdiffeq's and compat's own notices
    print(info_table(hardware_info(["torchdiffeq", "scipy"])))
    field = Field()
    y0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    t = torch.linspace(0.0, 2.0, 10)
    with torch.no_grad():
        # The same field in float64 (same seed), solved tightly.
        reference = compat.odeint(Field().double(), y0.double(), t.double(), rtol=1e-12,
                                  atol=1e-12, method="dopri8").float()  # fmt: skip
    table = Table([
        "method", "options", "mode", "neuralode.compat (ms)", "torchdiffeq (ms)", "ratio",
        "error neuralode", "error torchdiffeq",
    ])  # fmt: skip
    libraries = {"neuralode": compat, "torchdiffeq": torchdiffeq}
    for method, options, peer in cases(args.quick):
        adaptive = not options or method == "scipy_solver"
        for mode in ("forward", "backward"):

            def run(lib, method=method, options=options, mode=mode, adaptive=adaptive):
                kwargs = dict(rtol=RTOL, atol=ATOL, method=method, options=options)
                if mode == "forward":
                    with torch.no_grad():
                        return lib.odeint(field, y0, t, **kwargs)
                if adaptive and method != "scipy_solver":
                    ys = lib.odeint_adjoint(field, y0, t, **kwargs)
                else:
                    ys = lib.odeint(field, y0, t, **kwargs)
                ys.square().sum().backward()
                return ys.detach()

            if mode == "backward" and method == "scipy_solver":
                continue  # no gradients through scipy's solvers in either library
            names = ["neuralode", "torchdiffeq"] if peer else ["neuralode"]
            errors = {}
            for name in names:
                try:
                    errors[name] = float((run(libraries[name]) - reference).abs().max())
                except Exception as err:  # a method a library fails on: report it, go on
                    errors[name] = math.nan
                    print(f"{name} {method} {options} {mode}: {type(err).__name__}: {err}")
            timed = {n: (lambda n=n: run(libraries[n])) for n in names if math.isfinite(errors[n])}
            timings = time_interleaved(timed, rounds, min_sample_s=0.0)
            ours = timings.get("neuralode")
            theirs = timings.get("torchdiffeq")
            ratio = ours.median / theirs.median if ours and theirs else math.nan
            table.add(
                method, ", ".join(f"{k}={v}" for k, v in options.items()) or "-", mode,
                fmt_ms(ours) if ours else "failed", fmt_ms(theirs) if theirs else "-",
                fmt_ratio(ratio) if math.isfinite(ratio) else "-",
                fmt_err(errors["neuralode"]), fmt_err(errors.get("torchdiffeq", math.nan)),
            )  # fmt: skip
            print(table.rows[-1], flush=True)
    print()
    print(
        f"rtol={RTOL}, atol={ATOL}; fixed steps of {STEP}; error: max abs against dopri8 at "
        f"1e-12 in float64; medians of {rounds} interleaved rounds (interquartile range in "
        "brackets); ratio = neuralode.compat / torchdiffeq (below 1: faster)."
    )
    print(table.render())


if __name__ == "__main__":
    main()
