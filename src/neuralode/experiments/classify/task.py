"""``neuralode train classify``: the paper's Table 1 (ODE-Net vs ResNet vs RK-Net vs MLP).

Protocol P1 of docs/protocols.md: a seeded stratified training subset, a validation
split taken from the training set for model selection (the reference selects on the test
set; we do not), the test set used once at the end. Adam with a one-cycle schedule.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from ...data import (
    load_digits,
    load_images,
    random_crop,
    stratified_subset,
    to_float,
    train_val_split,
)
from ...nn import MLP, ODEBlock, ODENet, ResNet, RKNet, zero_residual_branches
from ...nn.classifiers import check_augment_dim
from ...nn.ode_block import check_steer
from ...regularizers import LocalError
from .._run.config import MAX_LR, RunOptions, check_positive
from .._run.distributed import World, unwrap
from .._run.regularizing import RegularizerOptions, penalize
from .._run.solving import SolverOptions
from .._run.training import Task, epoch_generator, solver_work

Model = Literal["odenet", "resnet", "rknet", "mlp"]
Dataset = Literal["fashion-mnist", "mnist", "digits"]

# The 8×8 digits have no official test split: a fixed, stratified 20% is held out, the
# same for every --seed so that runs with different seeds are tested on the same images.
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 1797
# --image-size: below 10 pixels the stem (3×3 conv, two stride-2 4×4 convs) leaves a 1×1
# state, where group norm maps everything to 0; 256 is far beyond any dataset here.
MIN_IMAGE, MAX_IMAGE = 10, 256
# The ResNet's blocks (the paper's 6): an absurd count would build for hours, not fail.
MAX_BLOCKS = 1_000
# Flags that change the ODE block, refused for the other models.
ODENET_ONLY = ("kinetic", "jacobian", "local_error", "augment_dim", "steer")


class DatasetDefault(int):
    """A size left at its default, which the chosen ``--dataset`` may replace.

    It prints, compares and serialises as the plain number (so ``--help`` shows it), while
    an explicit flag arrives as a plain ``int`` and is always honoured.
    """


# The digits have 1,437 training images after the fixed test split: the default 20,000
# training and 5,000 validation images would not fit. These are P1's digits sizes.
DIGITS_SIZES: dict[str, int | None] = {"train_size": None, "val_size": 300}


@dataclasses.dataclass(frozen=True)
class ClassifyConfig(RegularizerOptions, SolverOptions, RunOptions):
    """Train an image classifier: ODE-Net, ResNet, RK-Net or MLP (the paper's Table 1).

    Defaults are protocol P1's quick preset (docs/protocols.md): Fashion-MNIST, 20k training
    images, 5k validation images, width 32, 6 epochs of Adam with a one-cycle schedule.
    """

    model: Model = "odenet"
    """odenet (one ODE block), resnet (--blocks residual blocks),
    rknet (RK4 with step --rk-step, backprop), mlp (784-300-10)."""
    dataset: Dataset = "fashion-mnist"
    """fashion-mnist (Debian package or download), mnist (--data-dir or --download),
    digits (scikit-learn's 8x8 digits, for runs of seconds)."""
    data_dir: Path | None = None
    """Folder with the IDX files, the only one searched (default: $NEURALODE_DATA_DIR)."""
    download: bool = False
    """Download missing MNIST / Fashion-MNIST files (SHA-256 checked)."""
    verify_data: bool = True
    """Check the IDX files against the official SHA-256s (--no-verify-data: your own data)."""
    width: int = 32
    """Channels C of every convolution (the paper: 64)."""
    blocks: int = 6
    """resnet only: residual blocks (6 as in the paper, 1 for the equal-size control)."""
    rk_step: float = 0.25
    """rknet only: RK4 step on [0, 1]."""
    epochs: int = 6
    """Passes over the training subset."""
    train_size: int | None = DatasetDefault(20_000)
    """Training images (a seeded stratified subset; None: all remaining). Default for
    digits: all remaining."""
    val_size: int = DatasetDefault(5_000)
    """Validation images, split off the training set, for model selection. Default for
    digits: 300."""
    batch_size: int = 128
    """Global batch size (split across processes under torchrun)."""
    eval_batch_size: int = 500
    """Batch size for validation and test."""
    lr: float = 3e-3
    """Peak learning rate of Adam's one-cycle schedule."""
    image_size: int | None = None
    """Resize the images to this many pixels square by area averaging (None: as stored).
    14 halves MNIST's 28: the stem then leaves a 3×3 state and a step costs about a tenth
    (the demo preset's choice)."""
    zero_init: bool = False
    """Start every residual branch at zero (ResNet blocks' last convolution, the ODE
    function's last norm scale): the ODE-Net then trains about as fast as the ResNets from
    the first step (demo preset, 768 steps at 14×14, seeds 0 and 3: ODE-Net 18.2% and 16.0%
    test error without, 15.5% and 15.0% with; ResNet-6 15.0% and 14.4% either way)."""
    kinetic: float = 0.0
    """odenet only: weight of the kinetic energy ∫‖f‖² dt of the ODE block, per image,
    added to the loss (RNODE, Finlay et al. 2020; 0: off). Recorded as train_kinetic."""
    jacobian: float = 0.0
    """odenet only: weight of the Jacobian's Frobenius norm ∫‖∂f/∂h‖²_F dt per image
    (Hutchinson's estimator; 0: off). Recorded as train_jacobian."""
    steer: float = 0.0
    """odenet only: STEER (Ghosh et al. 2020): each training batch solves to an end time
    drawn uniformly from [1 - B, 1 + B]; validation and test use 1 (0: off; B < 1)."""
    local_error: float = 0.0
    """odenet only: weight of the solver's own scaled error estimate of one step from
    y(t*) at a random t* of the block's solve, per image (Pal et al. 2023; every
    --adjoint; 0: off). Recorded as train_local_error."""
    augment_dim: int = 0
    """odenet only: ANODE (Dupont et al. 2019): K zero channels appended to the ODE block's
    state and dropped after the solve (0: off)."""
    augment: bool = False
    """Random crops with 4-pixel padding, as in the reference's 160-epoch schedule. Off by
    default: in a few epochs it slows learning (ResNet-1, 300 steps: 70% validation
    accuracy with it, 81% without)."""

    def __post_init__(self) -> None:
        RunOptions.__post_init__(self)
        SolverOptions.__post_init__(self)
        for name, value in DIGITS_SIZES.items():
            if isinstance(getattr(self, name), DatasetDefault):
                default = value if self.dataset == "digits" else int(getattr(self, name))
                object.__setattr__(self, name, default)
        check_positive(self, "width", "epochs", "train_size")
        check_positive(self, "val_size", "batch_size", "eval_batch_size")
        check_positive(self, "lr", maximum=MAX_LR)
        check_positive(self, "blocks", maximum=MAX_BLOCKS)
        RegularizerOptions.__post_init__(self)
        if self.model != "odenet":
            self.refuse(ODENET_ONLY, f"to the ODE block of --model odenet only, got --model "
                                     f"{self.model}; drop them or train the ODE-Net")  # fmt: skip
        check_steer(self.steer, 1.0, "--steer")
        check_augment_dim(self.augment_dim, "--augment-dim")
        check_positive(self, "augment_dim", allow_zero=True)  # and at most MAX_COUNT
        if self.image_size is not None and not MIN_IMAGE <= self.image_size <= MAX_IMAGE:
            raise ValueError(
                f"--image-size must lie in [{MIN_IMAGE}, {MAX_IMAGE}], got {self.image_size} "
                f"(below {MIN_IMAGE} the stem leaves a 1×1 state); e.g. --image-size 14"
            )
        # The RK-Net integrates [0, 1]: a longer step is one step of length 1.
        check_positive(self, "rk_step", maximum=1.0)
        # group_norm(C) is GroupNorm(min(32, C), C): C must split into 32 groups when > 32.
        if self.width > 32 and self.width % 32:
            lower, upper = self.width // 32 * 32, (self.width // 32 + 1) * 32
            raise ValueError(
                f"--width must be at most 32 or a multiple of 32 (group normalisation uses 32 "
                f"groups), got {self.width}; e.g. --width {lower} or {upper}"
            )


class ClassifyTask(Task):
    """Image classification (cross-entropy; accuracy selects the checkpoint)."""

    experiment = "classify"
    select = "accuracy"
    higher_is_better = True
    size_flags = ("width", "blocks", "batch_size", "eval_batch_size", "train_size", "image_size")

    def __init__(self, config: ClassifyConfig) -> None:
        self.config = config
        self.epochs = config.epochs

    def setup(self, world: World) -> None:
        """Load the splits, build the model and Adam with a one-cycle schedule."""
        cfg = self.config
        self.device = world.device
        self.splits = load_splits(cfg)
        self.model = build_model(cfg, self.splits["train"][0].shape[-2:]).to(world.device)
        if cfg.batch_size % world.size:
            raise ValueError(
                f"--batch-size {cfg.batch_size} must be divisible by the number of "
                f"processes ({world.size})"
            )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * self.steps_per_epoch()
        )

    def steps_per_epoch(self) -> int:
        """Full global batches per epoch (the remainder is dropped, differently each epoch)."""
        n = len(self.splits["train"][1])
        return max(1, n // self.config.batch_size)

    def train_batches(self, epoch: int, world: World) -> Any:
        """Shuffled global batches; this rank's share, augmented."""
        images, labels = self.splits["train"]
        order = torch.randperm(len(labels), generator=epoch_generator(self.config.seed, epoch))
        crops = epoch_generator(self.config.seed, epoch, stream=1 + world.rank)
        size = min(self.config.batch_size, len(labels))
        for step in range(self.steps_per_epoch()):
            idx = world.batch_share(order[step * size : (step + 1) * size])
            x = images[idx]
            if self.config.augment:
                x = random_crop(x, padding=4, generator=crops)
            yield x.to(self.device), labels[idx].to(self.device)

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy plus the weighted regularisers; sums of loss, accuracy, regularisers.

        The regularisers' values are per image (their integrals over the batch's solve,
        divided by its size), as RNODE weighs them.
        """
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        n = len(y)
        correct = float((logits.argmax(1) == y).sum())
        sums = {"loss": float(loss.detach()) * n, "accuracy": correct, "n": n}
        if self.config.regularizers() or self.config.local_error:
            block: ODEBlock = unwrap(model).ode_block  # type: ignore[assignment]
            loss = penalize(loss, sums, block.regularization, self.config, n)
        return loss, sums

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, world: World) -> dict[str, float]:
        """Loss, accuracy and forward NFE per batch over this rank's shard of ``split``.

        ``nfe_forward`` is the mean forward evaluation count of the ODE block per
        evaluation batch of ``--eval-batch-size`` images (0 for the models without one):
        the test-time cost that regularisers aim to cut.
        """
        model.eval()
        images, labels = self.splits[split]
        shard = world.shard(torch.arange(len(labels)))
        sums = {"loss": 0.0, "accuracy": 0.0, "n": 0.0, "nfe": 0.0, "batches": 0.0}
        for idx in shard.split(self.config.eval_batch_size):
            x, y = images[idx].to(self.device), labels[idx].to(self.device)
            logits = model(x)
            sums["loss"] += float(F.cross_entropy(logits, y, reduction="sum"))
            sums["accuracy"] += float((logits.argmax(1) == y).sum())
            sums["n"] += len(y)
            sums["nfe"] += solver_work(model)[0]
            sums["batches"] += 1
        totals = world.sum(sums)
        model.train()
        return {
            "loss": totals["loss"] / totals["n"],
            "accuracy": totals["accuracy"] / totals["n"],
            "nfe_forward": totals["nfe"] / max(totals["batches"], 1.0),
        }

    def describe(self) -> dict[str, Any]:
        """Model, parameter count and split sizes."""
        cfg = self.config
        return {
            "model": cfg.model if cfg.model != "resnet" else f"resnet{cfg.blocks}",
            "dataset": cfg.dataset,
            "width": cfg.width,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "split_sizes": {k: len(v[1]) for k, v in self.splits.items()},
        }


def build_model(cfg: ClassifyConfig, image_size: torch.Size) -> nn.Module:
    """The classifier that ``--model`` names (its residual branches zeroed with --zero-init)."""
    net: nn.Module
    if cfg.model == "odenet":
        net = ODENet(cfg.width, augment_dim=cfg.augment_dim, steer=cfg.steer, **cfg.ode_options())
        net.ode_block.max_steps = cfg.max_steps
        local = (LocalError(),) if cfg.local_error else ()
        net.ode_block.regularizers = (*cfg.regularizers(), *local)
    elif cfg.model == "resnet":
        net = ResNet(cfg.width, blocks=cfg.blocks)
    elif cfg.model == "rknet":
        net = RKNet(cfg.width, step=cfg.rk_step)
    else:
        net = MLP(pixels=int(image_size.numel()))
    return zero_residual_branches(net) if cfg.zero_init else net


def load_splits(cfg: ClassifyConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"train", "val", "test"}`` → (float images (N, 1, H, W), labels), per the config."""
    if cfg.dataset == "digits":
        images, labels = load_digits()
        # Upsampled to MNIST's 28×28 so every model keeps the paper's architecture: at 8×8
        # the stem would shrink the state to 1×1, where group norm maps everything to 0.
        images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False)
        rest, test = train_val_split(labels, DIGITS_TEST_FRACTION, seed=DIGITS_TEST_SEED)
        test_set = (images[test], labels[test])
        images, labels = images[rest], labels[rest]
    else:
        raw, labels = load_images(
            cfg.dataset, "train", cfg.data_dir, cfg.download, verify=cfg.verify_data
        )
        images = to_float(raw)
        raw_test, labels_test = load_images(
            cfg.dataset, "test", cfg.data_dir, cfg.download, verify=cfg.verify_data
        )
        test_set = (to_float(raw_test), labels_test)
        if raw.shape[1:] != raw_test.shape[1:]:
            # The models are built for the training images' size; torch would fail deep
            # in the first test batch (or, for convolutions, silently test on another size).
            where = f"in --data-dir {cfg.data_dir}" if cfg.data_dir else "found"
            raise ValueError(
                f"--dataset {cfg.dataset}: the training images {where} are "
                f"{_size(raw)} but the test images are {_size(raw_test)}; both splits must "
                "have the same image size (check that the files belong together)"
            )
    if cfg.val_size >= len(labels):
        raise ValueError(
            f"--val-size {cfg.val_size} leaves no training images ({cfg.dataset} has "
            f"{len(labels)} in its training set)"
        )
    train, val = train_val_split(labels, cfg.val_size, seed=cfg.seed)
    if cfg.train_size is not None:
        if cfg.train_size > len(train):
            raise ValueError(
                f"--train-size {cfg.train_size} is more than the {len(train)} training images "
                f"left after --val-size {cfg.val_size}; lower it or omit it to use them all"
            )
        train = train[stratified_subset(labels[train], cfg.train_size, seed=cfg.seed)]
    splits = {
        "train": (images[train], labels[train]),
        "val": (images[val], labels[val]),
        "test": test_set,
    }
    if cfg.image_size is None:
        return splits
    size = (cfg.image_size, cfg.image_size)
    return {k: (F.interpolate(x, size=size, mode="area"), y) for k, (x, y) in splits.items()}


def _size(images: torch.Tensor) -> str:
    return "×".join(str(n) for n in images.shape[1:])


def summary_line(summary: dict[str, Any]) -> str:
    """The one line ``train classify`` prints at the end."""
    return (
        f"{summary['model']}: test accuracy {summary['test_accuracy']:.4f} "
        f"({summary['parameters']:,} parameters, {summary['train_seconds']:.0f} s training)"
    )
