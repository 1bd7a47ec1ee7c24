"""One training step of the paper's ODE-Net: neuralode vs the identical model on torchdiffeq.

The ODE-Net of Table 1 (width 64 by default: 208,266 parameters) on a batch of 128
Fashion-MNIST training images (random images if the data are not installed), dopri5 at
rtol = atol = 1e-3, trained by the adjoint. One step = forward + cross-entropy + backward
(the optimiser update is left out so that every repeat does the same solves). The
torchdiffeq model shares the stem, the ODE function and the head with ours (same weights,
same modules); only the ODE block differs: `odeint_adjoint(func, h, [0, 1])` against
`neuralode.nn.ODEBlock` with `BacksolveAdjoint`. Both with the default norm of the whole
augmented state, and both with the seminorm (torchdiffeq: adjoint_options={"norm":
"seminorm"}).

Reported: median wall time over interleaved repeats (one torch thread), the ratio
neuralode / torchdiffeq, and NFE forward / backward from a counted step. Target (issue 4):
ratio ≤ 0.8 at width 64.

Usage: python benchmarks/bench_odenet_step.py [--width 64] [--batch 128] [--repeats 7]
       [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from _harness import (
    REPO_ROOT,
    CountingModule,
    Table,
    fmt_ms,
    fmt_ratio,
    hardware_info,
    info_table,
    time_interleaved,
)
from torch import nn
from torch.nn import functional as F

from neuralode import BacksolveAdjoint
from neuralode.nn import ODENet


class TorchdiffeqBlock(nn.Module):
    """The ODE block as torchdiffeq's odenet_mnist.py writes it."""

    def __init__(self, func: nn.Module, tol: float, seminorm: bool) -> None:
        super().__init__()
        self.func = func
        self.tol = tol
        self.options = {"norm": "seminorm"} if seminorm else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torchdiffeq import odeint_adjoint

        t = torch.tensor([0.0, 1.0], dtype=x.dtype)
        out = odeint_adjoint(self.func, x, t, rtol=self.tol, atol=self.tol, method="dopri5",
                             adjoint_options=self.options)  # fmt: skip
        return out[-1]


def images(batch: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from neuralode.data import load_images, to_float

        x, y = load_images("fashion-mnist", "train")
        return to_float(x[:batch]), y[:batch], "Fashion-MNIST (first training images)"
    except FileNotFoundError:
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 1, 28, 28, generator=g)
        return x, torch.randint(0, 10, (batch,), generator=g), "uniform random images"


def models(width: int, tol: float, seminorm: bool) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ours = ODENet(width, adjoint=BacksolveAdjoint(seminorm=seminorm))
    ours.ode_block.controller = type(ours.ode_block.controller)(rtol=tol, atol=tol)
    theirs = copy.deepcopy(ours)
    theirs[1] = TorchdiffeqBlock(CountingModule(theirs.ode_block.func), tol, seminorm)
    ours.ode_block.func = CountingModule(ours.ode_block.func)
    return ours, theirs


def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def counted(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    counter = next(m for m in model.modules() if isinstance(m, CountingModule))
    counter.calls = 0
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    forward = counter.calls
    loss.backward()
    return forward, counter.calls - forward


def _pair(nfe: tuple[int, int]) -> str:
    return f"{nfe[0]} / {nfe[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    x, y, source = images(args.batch)
    table = Table(["norm", "neuralode ms", "torchdiffeq ms", "ratio", "NFE-F / NFE-B ours",
                   "NFE-F / NFE-B torchdiffeq"])  # fmt: skip
    results = []
    for seminorm in (False, True):
        ours, theirs = models(args.width, args.tol, seminorm)
        nfe_ours, nfe_theirs = counted(ours, x, y), counted(theirs, x, y)
        timings = time_interleaved(
            {
                "neuralode": lambda m=ours: step(m, x, y),
                "torchdiffeq": lambda m=theirs: step(m, x, y),
            },
            args.repeats,
            min_sample_s=0.0,
        )
        ratio = timings["neuralode"].median / timings["torchdiffeq"].median
        norm = "seminorm" if seminorm else "full"
        table.add(norm, fmt_ms(timings["neuralode"]), fmt_ms(timings["torchdiffeq"]),
                  fmt_ratio(ratio), _pair(nfe_ours), _pair(nfe_theirs))  # fmt: skip
        results.append({"norm": norm, "ratio": ratio, "nfe_ours": nfe_ours,
                        "nfe_torchdiffeq": nfe_theirs,
                        "ms": {k: v.median * 1e3 for k, v in timings.items()}})  # fmt: skip
        print(table.render().splitlines()[-1], flush=True)

    params = sum(p.numel() for p in ours.parameters())
    info = hardware_info(["torchdiffeq"])
    text = "\n\n".join([
        f"# ODE-Net training step (width {args.width}, {params:,} parameters, batch "
        f"{args.batch}, dopri5 tol {args.tol:g}, adjoint)",
        f"Images: {source}. Median (IQR) over {args.repeats} interleaved repeats of forward + "
        "loss + backward; ratio = neuralode / torchdiffeq (target ≤ 0.8×).",
        table.render(),
        info_table(info),
    ])  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"odenet_step_w{args.width}"
    (args.out / f"{stem}.md").write_text(text + "\n")
    (args.out / f"{stem}.json").write_text(json.dumps({"info": info, "rows": results}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
