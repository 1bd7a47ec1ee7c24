"""``neuralode train cnf``: density matching and maximum likelihood with flows (the paper's §4).

Two tasks, each with the planar CNF (Chen et al. 2018, §4) or the planar NF baseline
(Rezende & Mohamed 2015):

- ``--task density``: fit ``q`` to ``p = exp(−U)/Z`` (U1–U4) by the reverse KL (Fig. 4).
  Every step draws fresh model samples; the reported KL adds the quadrature ``log Z``.
- ``--task ml``: maximum likelihood on fresh samples of a toy dataset every step (Fig. 5).

Training is a budget of ``--iters`` Adam iterations. :func:`~.training.fit` works in
epochs; here an *epoch* is a block of ``--iters-per-epoch`` iterations: the granularity
of validation, checkpoints, ``metrics.csv`` rows and ``--resume``. Validation uses a
fixed held-out sample (fixed base draws for the KL, fixed fresh data points for the NLL),
the same for every run and disjoint from the test sample, which is drawn with another
fixed seed and used once, on the best checkpoint. Both are evaluated with the exact trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from ...data import energy_target, sample_toy
from ...data.densities import EnergyTarget
from ...nn import (
    CNF,
    ExactTrace,
    GaussianBase,
    HutchinsonTrace,
    PlanarDynamics,
    PlanarFlow,
    evaluate_kl,
    evaluate_nll,
)
from ...nn.ode_block import check_steer
from .._run.config import MAX_LR, RunOptions, check_positive, flag
from .._run.distributed import World
from .._run.regularizing import RegularizerOptions, penalize
from .._run.runs import RunDir
from .._run.solving import GradientMethod, SolverOptions
from .._run.training import Schedule, Task, epoch_generator, lr_scheduler

Objective = Literal["density", "ml"]
Target = Literal["U1", "U2", "U3", "U4"]
Dataset = Literal["circles", "moons", "8gaussians", "pinwheel", "rings", "checkerboard", "2spirals"]

# Seeds of the held-out samples: fixed, the same for every --seed (runs with different
# seeds are scored on the same points), and different from each other, so validation
# never sees the test sample. Training draws from epoch_generator's mixed seeds.
VAL_SEED = 271_828
TEST_SEED = 314_159
# torchdiffeq's examples/cnf.py, for maximum likelihood: base N(0, 0.1 I), t from 0 to 10.
ML_T1, ML_BASE_STD = 10.0, math.sqrt(0.1)
# Planar units or layers (the paper compares up to 64): a flow of millions of layers would
# build for hours rather than fail.
MAX_WIDTH = 10_000


@dataclasses.dataclass(frozen=True)
class CNFConfig(RegularizerOptions, SolverOptions, RunOptions):
    """Train a planar CNF or planar NF on a 2-D density (the paper's §4, Figs. 4 and 5).

    --task density fits U1–U4 by reverse KL; --task ml fits a toy dataset by maximum
    likelihood. Training is --iters Adam iterations in epochs of --iters-per-epoch
    iterations (validation, checkpoint and metrics row after each).
    """

    adjoint: GradientMethod = "direct"
    """Gradient method: direct (backprop through the solver, torchdiffeq's cnf.py default;
    in 2-D its graph is small and an iteration costs about 0.6x the backsolve adjoint's,
    benchmarks/RESULTS.md), backsolve (O(1) memory) or checkpoint (exact, O(1) in the steps)."""
    task: Objective = "density"
    """density: reverse KL to --target; ml: maximum likelihood on --dataset."""
    target: Target = "U1"
    """--task density: Rezende & Mohamed's energy (U2-U4 get a soft wall at |z1| = 4)."""
    dataset: Dataset = "moons"
    """--task ml: toy dataset, fresh samples every iteration."""
    model: Literal["cnf", "nf"] = "cnf"
    """cnf: planar CNF (hypernetwork of t); nf: planar normalizing flow."""
    width: int = 64
    """Size of the flow: planar units M of the CNF, or layers K of the NF (the paper
    compares them at K = M)."""
    hidden: int = 32
    """CNF: hidden units of the hypernetwork t -> (w, u, gate, b), as in torchdiffeq."""
    trace: Literal["exact", "hutchinson"] = "exact"
    """CNF: trace estimator for training (evaluation always uses the exact trace)."""
    t1: float | None = None
    """CNF: end time of the flow from t0 = 0 (default: 10 for --task ml, as torchdiffeq's
    cnf.py; 1 for --task density)."""
    base_std: float | None = None
    """Standard deviation of the Gaussian base (default: sqrt(0.1) for a CNF on --task ml,
    as torchdiffeq's cnf.py; 1 otherwise)."""
    iters: int = 1_000
    """Adam iterations in all."""
    iters_per_epoch: int = 100
    """Iterations per epoch: validation, checkpoint and metrics.csv row after each (the
    whole budget in one epoch if --iters is smaller)."""
    batch_size: int = 512
    """Samples per iteration: model samples (density) or fresh data points (ml)."""
    lr: float = 1e-3
    """Adam's learning rate."""
    schedule: Schedule = "constant"
    """Learning rate: constant, or cosine decay to 0 over --iters."""
    val_size: int = 2_000
    """Held-out samples for validation (fixed seed), scored after every epoch."""
    test_size: int = 10_000
    """Test samples (another fixed seed), scored once on the best checkpoint."""
    eval_batch_size: int = 2_000
    """Samples per evaluation batch."""
    tol: float = 1e-5
    """Relative and absolute tolerance (rtol = atol); 1e-5 as in the paper's CNF runs."""
    device: Literal["cpu"] = "cpu"
    """Only cpu: the seeded samplers draw on the CPU, where 2-D flows also run fastest."""
    kinetic: float = 0.0
    """CNF only: weight of the kinetic energy ∫‖f‖² dt of the flow, per sample, added to
    the loss (RNODE, Finlay et al. 2020; 0: off). Recorded as train_kinetic."""
    jacobian: float = 0.0
    """CNF only: weight of the Jacobian's Frobenius norm ∫‖∂f/∂z‖²_F dt per sample
    (Hutchinson's estimator; with --trace hutchinson it reuses the trace's noise and
    vector-Jacobian product; 0: off). Recorded as train_jacobian."""
    steer: float = 0.0
    """CNF only: STEER (Ghosh et al. 2020): each training batch flows to a data time drawn
    uniformly from [t1 - B, t1 + B]; validation and test use t1 (0: off; B < t1)."""
    local_error: float = 0.0
    """Not available here yet (0 only): the solver's local error penalty is an option of
    train classify's ODE block."""

    def __post_init__(self) -> None:
        RunOptions.__post_init__(self)
        SolverOptions.__post_init__(self)
        check_positive(self, "width", maximum=MAX_WIDTH)
        check_positive(self, "hidden", "iters", "iters_per_epoch", "batch_size")
        check_positive(self, "eval_batch_size", "t1", "base_std", "val_size", "test_size")
        check_positive(self, "lr", maximum=MAX_LR)
        for name in ("val_size", "test_size"):
            if getattr(self, name) < 2:
                raise ValueError(f"{flag(name)} must be ≥ 2 (a standard error needs two), "
                                 f"got {getattr(self, name)}")  # fmt: skip
        if self.iters % self.steps_per_epoch():
            raise ValueError(
                f"--iters {self.iters} must be a multiple of --iters-per-epoch "
                f"{self.iters_per_epoch}; e.g. --iters {self.epochs() * self.iters_per_epoch}"
            )
        RegularizerOptions.__post_init__(self)
        if self.model == "nf":
            self.refuse(("kinetic", "jacobian", "steer"), "to --model cnf only (an NF "
                        "has no dynamics to regularise and no flow time); drop them")  # fmt: skip
            if self.trace != "exact":
                raise ValueError("--trace applies to --model cnf only (an NF has exact log-dets)")
            if self.t1 is not None:
                raise ValueError("--t1 applies to --model cnf only (an NF has no flow time)")
        if self.device != "cpu":
            raise ValueError(f"--device must be cpu for train cnf, got {self.device!r}")
        check_steer(self.steer, self.flow_time(), "--steer")
        self.refuse(("local_error",), "to train classify's ODE block only for now (the "
                    "CNF's density solve does not take it); drop it")  # fmt: skip

    def steps_per_epoch(self) -> int:
        """Iterations per epoch."""
        return min(self.iters_per_epoch, self.iters)

    def epochs(self) -> int:
        """Number of epochs (blocks of iterations)."""
        return -(-self.iters // self.steps_per_epoch())

    def flow_time(self) -> float:
        """The CNF's end time ``t1`` (from ``t0 = 0``)."""
        if self.t1 is not None:
            return self.t1
        return ML_T1 if self.task == "ml" else 1.0

    def std(self) -> float:
        """The base distribution's standard deviation."""
        if self.base_std is not None:
            return self.base_std
        return ML_BASE_STD if self.task == "ml" and self.model == "cnf" else 1.0


def build_flow(cfg: CNFConfig) -> CNF | PlanarFlow:
    """The flow that ``--model`` names, configured by the flags."""
    base = GaussianBase(2, std=cfg.std())
    if cfg.model == "nf":
        # Generative layers make samples' densities exact (reverse KL); normalizing layers
        # make data densities exact (maximum likelihood). See docs/cnf.md.
        direction = "generative" if cfg.task == "density" else "normalizing"
        return PlanarFlow(2, cfg.width, direction=direction, base=base)
    options = cfg.ode_options()
    trace = ExactTrace() if cfg.trace == "exact" else HutchinsonTrace()
    return CNF(PlanarDynamics(2, cfg.width, cfg.hidden), trace=trace, base=base, t0=0.0,
               t1=cfg.flow_time(), max_steps=cfg.max_steps, regularizers=cfg.regularizers(),
               steer=cfg.steer, **options)  # fmt: skip


class FlowObjective(nn.Module):
    """A flow and its per-sample training terms, as one module.

    The terms are computed in ``forward`` because DistributedDataParallel synchronises
    gradients only of what runs through the wrapped module's ``forward``; and they are
    returned per sample so that :func:`~.training.fit`'s NaN check, which names the epoch
    and step, sees a non-finite loss (``reverse_kl_loss`` would raise first).

    Args:
        flow: A :class:`~neuralode.nn.CNF` or :class:`~neuralode.nn.PlanarFlow`.
        target: The energy target for reverse KL, or ``None`` for maximum likelihood.
    """

    def __init__(self, flow: CNF | PlanarFlow, target: EnergyTarget | None) -> None:
        super().__init__()
        self.flow = flow
        self.target = target

    def forward(self, batch: Any, noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log q(x), U(x))`` of ``batch`` model samples, or ``(log q(x), 0)`` of data ``batch``.

        ``noise`` draws the base samples and a stochastic trace's noise.
        """
        if self.target is None:
            if isinstance(self.flow, CNF):
                log_q = self.flow.log_prob(batch, generator=noise)
            else:
                log_q = self.flow.log_prob(batch)
            return log_q, torch.zeros_like(log_q)
        x, log_q = self.flow.sample_and_log_prob(int(batch), noise)
        return log_q, self.target.energy(x)


@contextlib.contextmanager
def exact_trace(flow: CNF | PlanarFlow) -> Iterator[None]:
    """Evaluate a flow as it is scored: the exact trace, in eval mode (restored after).

    A CNF gets the exact trace whatever it trains with; eval mode fixes STEER's data time
    at t1.
    """
    training = flow.training
    trace = flow.trace if isinstance(flow, CNF) else None
    flow.eval()
    if isinstance(flow, CNF):
        flow.trace = ExactTrace()
    try:
        yield
    finally:
        if isinstance(flow, CNF) and trace is not None:
            flow.trace = trace
        flow.train(training)


class CNFTask(Task):
    """Reverse KL (``kl`` selects the checkpoint) or maximum likelihood (``nll``)."""

    experiment = "cnf"
    size_flags = ("width", "hidden", "batch_size", "eval_batch_size")

    def __init__(self, config: CNFConfig) -> None:
        self.config = config
        self.epochs = config.epochs()
        self.select = "kl" if config.task == "density" else "nll"
        self.target = energy_target(config.target) if config.task == "density" else None

    def setup(self, world: World) -> None:
        """Build the flow and Adam; compute ``log Z`` once (quadrature, about a second)."""
        cfg = self.config
        if cfg.batch_size % world.size:
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the number "
                             f"of processes ({world.size})")  # fmt: skip
        if self.target is not None:
            self.target.normalizer  # noqa: B018 (cached: computed here, not in epoch 1)
        self.flow = build_flow(cfg)
        self.model = FlowObjective(self.flow, self.target)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scheduler = lr_scheduler(self.optimizer, cfg.schedule, cfg.iters)

    def steps_per_epoch(self) -> int:
        """``--iters-per-epoch`` (or ``--iters`` if smaller)."""
        return self.config.steps_per_epoch()

    def train_batches(self, epoch: int, world: World) -> Iterator[tuple[Any, torch.Generator]]:
        """Fresh data points (the global batch, this rank's share) or sample counts.

        Data come from a generator shared by all ranks; base samples and trace noise from
        one per rank. Both derive from ``(seed, epoch)`` alone, so ``--resume`` is exact.
        """
        cfg = self.config
        data = epoch_generator(cfg.seed, epoch)
        noise = epoch_generator(cfg.seed, epoch, stream=1 + world.rank)
        for _ in range(self.steps_per_epoch()):
            if self.target is not None:
                yield cfg.batch_size // world.size, noise
            else:
                x = sample_toy(cfg.dataset, cfg.batch_size, data)
                yield world.batch_share(x), noise

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean ``log q + U`` (reverse KL − log Z) or mean ``−log q``; metric sums."""
        log_q, energy = model(*batch)
        n = len(log_q)
        if self.target is None:
            loss = -log_q.mean()
            value = float(loss.detach())
            sums = {"loss": value * n, "nll": value * n, "n": n}
        else:
            loss = (log_q + energy).mean()
            value = float(loss.detach())
            sums = {
                "loss": value * n,
                "kl": (value + self.target.log_z) * n,
                "energy": float(energy.detach().sum()),
                "entropy": -float(log_q.detach().sum()),
                "n": n,
            }
        # "loss" stays the objective (KL or NLL) alone; the penalties are their own columns.
        regularization = getattr(self.flow, "regularization", {})
        return penalize(loss, sums, regularization, self.config, n), sums

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, world: World) -> dict[str, float]:
        """KL or NLL on the fixed validation or test sample, exact trace.

        Every rank scores the whole sample (identical, cheap in 2-D), so nothing is summed.
        """
        cfg = self.config
        flow = self.flow  # the parameters of `model`, wrapped by DDP or not
        test = split == "test"
        n = cfg.test_size if test else cfg.val_size
        gen = torch.Generator().manual_seed(TEST_SEED if test else VAL_SEED)
        with exact_trace(flow):
            if self.target is not None:
                out = evaluate_kl(flow, self.target, n, gen, batch_size=cfg.eval_batch_size)
            else:
                out = evaluate_nll(flow, cfg.dataset, n, gen, batch_size=cfg.eval_batch_size)
        # The test keeps nfe_forward: the solves' forward evaluations per test batch.
        return out if test else {self.select: out[self.select]}

    def plots(self, run: RunDir, history: list[dict[str, Any]]) -> list[str]:
        """The fit against the target or the data, and the flow at 5–100% of its time."""
        from .plots import plot_fit, plot_flow

        flow = self.flow  # the best checkpoint's weights: fit loaded them
        what = f"{self.config.target}" if self.target is not None else self.config.dataset
        name = f"{self.config.model.upper()} ({self.config.width}) on {what}"
        with exact_trace(flow), torch.no_grad():
            return [
                plot_fit(flow, self.target, self.config.dataset, run.plots, name),
                plot_flow(flow, self.target, self.config.dataset, run.plots, name),
            ]

    def describe(self) -> dict[str, Any]:
        """Model, task, sizes and the flow's settings."""
        cfg = self.config
        facts: dict[str, Any] = {
            "model": cfg.model,
            "task": cfg.task,
            "width": cfg.width,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "iters": cfg.iters,
            "batch_size": cfg.batch_size,
            "base_std": cfg.std(),
        }
        if cfg.model == "cnf":
            facts.update(t1=cfg.flow_time(), trace=cfg.trace)
        if self.target is not None:
            facts.update(target=cfg.target, log_z=self.target.log_z)
        else:
            facts["dataset"] = cfg.dataset
        return facts


def summary_line(summary: dict[str, Any]) -> str:
    """The one line ``train cnf`` prints at the end."""
    last = summary["history"][-1]
    if summary["task"] == "density":
        score = f"test KL {summary['test_kl']:.4f} ± {summary['test_kl_stderr']:.4f} nats"
    else:
        score = f"test NLL {summary['test_nll']:.4f} ± {summary['test_nll_stderr']:.4f} nats"
    nfe = f", NFE-F/B {last['nfe_forward']:.0f}/{last['nfe_backward']:.0f}" * (
        summary["model"] == "cnf"
    )
    return (
        f"{summary['model']} ({summary['width']}): {score} "
        f"({summary['train_seconds']:.0f} s training{nfe})"
    )
