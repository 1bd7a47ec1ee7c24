"""``neuralode evaluate classify RUN_DIR``: the paper's Figure 3 from a trained ODE-Net.

For each test-time tolerance: forward NFE, time per forward call, numerical error of h(1)
against a tight float64 reference, and test accuracy (Figure 3a/b and the "tolerance as a
knob" claim). Then backward vs forward NFE of the adjoint, with and without the seminorm
(Figure 3c), and forward NFE per training epoch from the run's history (Figure 3d).
Everything goes to ``RUN_DIR/figure3/``: ``results.json``, ``results.csv`` and plots.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import torch
import tyro
from torch.nn import functional as F

from ...adjoints import BacksolveAdjoint
from ...controllers import PIDController
from ...data import IDXFormatError
from ...nn import ODEBlock, ODENet
from ...solvers import Dopri5
from .._run.config import check_positive
from .._run.extras import require
from .._run.files import NUMBER, RunFolderError, atomic_write_text, load_config, write_json
from .._run.plots import epoch_axis, pyplot, save
from .._run.runs import BEST, EXECUTION_FIELDS, RunDir
from .task import ClassifyConfig, build_model, load_splits

# The reference: Dopri5 in float64, 100× tighter than the tightest tolerance of the sweep
# but never tighter than 1e-9 (float32 solutions cannot resolve more). Not a higher-order
# method: the ODE function (ReLU, group norm) is only piecewise smooth, and Dopri8 at 1e-10
# took 9× the evaluations of Dopri5 on a small ODE-Net while its order buys nothing across
# the kinks.
REFERENCE_MARGIN = 100.0
REFERENCE_TOL_MIN = 1e-9


def parse_tolerances(text: str) -> list[float]:
    """``"1e-1,1e-3"`` → ``[0.1, 0.001]``, with an error that names ``--tolerances``."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--tolerances must be comma-separated numbers like 1e-1,1e-3,1e-5, got {text!r}"
        ) from None
    if not values or any(not 0 < v < 1 for v in values):
        raise ValueError(f"--tolerances must be numbers in (0, 1), got {text!r}")
    return values


@dataclasses.dataclass(frozen=True)
class EvaluateClassifyConfig:
    """Figure 3 from a trained ODE-Net run: NFE, time, error and accuracy per tolerance."""

    run_dir: Annotated[Path, tyro.conf.Positional]
    """Folder of a finished `neuralode train classify --model odenet` run."""
    tolerances: str = "1e-1,1e-2,1e-3,1e-4,1e-5,1e-6,1e-7"
    """Test-time rtol = atol values, comma-separated."""
    images: int = 1000
    """Test images to evaluate on."""
    batch_size: int = 500
    """Images per forward call."""
    backward_batches: int = 2
    """Training-size batches (128 images) for the backward/forward NFE ratio."""
    data_dir: Path | None = None
    """Folder with the IDX files, as for `train classify` (never read from the run folder)."""
    progress: bool = True
    """Print one line per tolerance."""

    def __post_init__(self) -> None:
        parse_tolerances(self.tolerances)
        check_positive(self, "images", "batch_size", "backward_batches")


def load_run_config(run: RunDir, data_dir: Path | None = None) -> ClassifyConfig:
    """The :class:`ClassifyConfig` a run was trained with (from its config.json, checked).

    No path is taken from the file: the data comes from ``data_dir`` (``--data-dir``).
    """
    trained = load_config(ClassifyConfig, run.path / "config.json", ignore=IGNORED)
    return dataclasses.replace(trained, data_dir=data_dir)


# What Figure 3 reads from summary.json.
SUMMARY = {"history": [{"nfe_forward": NUMBER, "nfe_backward": NUMBER}]}
# Where the run was and how it was executed are not part of the model; the data folder
# is a path, and a run folder may come from elsewhere: --data-dir gives it.
IGNORED = EXECUTION_FIELDS | {"data_dir"}


@contextlib.contextmanager
def _settings_from(path: Path) -> Iterator[None]:
    """Name ``path`` in a settings error of the data or model rebuilt from it."""
    try:
        yield
    except (IDXFormatError, RunFolderError):  # about a data file or already named
        raise
    except ValueError as exc:
        raise RunFolderError(
            f"{path} holds settings that rebuild no model on this data ({exc}); the run "
            "folder is damaged or not from this command: train the run again"
        ) from None


def evaluate_classify(config: EvaluateClassifyConfig) -> dict[str, Any]:
    """Run the Figure 3 measurements on ``config.run_dir``; returns results.json's content."""
    run = RunDir(config.run_dir)
    summary = run.read_summary(SUMMARY)
    trained = load_run_config(run, config.data_dir)
    out = run.subfolder("figure3")  # checked before the work, written after
    if trained.model != "odenet":
        raise ValueError(
            f"evaluate classify needs an ODE-Net run; {run.path} holds a "
            f"--model {trained.model} run"
        )
    with _settings_from(run.path / "config.json"):
        images, labels = load_splits(trained)["test"]
        images, labels = images[: config.images], labels[: config.images]
        model = build_model(trained, images.shape[-2:])
    run.restore(model, run.load_checkpoint(BEST)["model"], BEST)
    model.eval()
    assert isinstance(model, ODENet)

    with torch.no_grad():
        h0 = model[0](images)
        tols = parse_tolerances(config.tolerances)
        ref_tol = max(min(tols) / REFERENCE_MARGIN, REFERENCE_TOL_MIN)
        h1_ref = _reference(model.ode_block, h0, ref_tol)
    rows = []
    for tol in tols:
        row = _forward_at(model, h0, labels, h1_ref, tol, config.batch_size)
        row.update(_backward_ratio(model, images, labels, tol, config.backward_batches))
        rows.append(row)
        if config.progress:
            print(", ".join(f"{k} {v:.4g}" for k, v in row.items()))

    results = {
        "run": str(run.path),
        "model": summary.get("model"),
        "trained_tol": trained.tol,
        "solver": trained.solver,
        "images": len(labels),
        "batch_size": config.batch_size,
        "reference": f"{Dopri5.__name__} in float64 at rtol = atol = {ref_tol:g}",
        "rows": rows,
        "nfe_forward_per_epoch": [r.get("nfe_forward") for r in summary["history"]],
        "nfe_backward_per_epoch": [r.get("nfe_backward") for r in summary["history"]],
    }
    results["plots"] = plot_figure3(results, out)
    write_json(out / "results.json", results)
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(f"{r[k]:.6g}" for k in header) for r in rows]
    atomic_write_text(out / "results.csv", "\n".join(lines) + "\n")
    print(f"figure 3 results: {out}")
    return results


def _reference(block: ODEBlock, h0: torch.Tensor, tol: float) -> torch.Tensor:
    tight = copy.deepcopy(block).double()
    tight.solver = Dopri5()
    tight.controller = PIDController(rtol=tol, atol=tol)
    tight.max_steps = 100_000
    return tight(h0.double())


def _set_tol(block: ODEBlock, tol: float) -> None:
    block.controller = PIDController(rtol=tol, atol=tol)


def _forward_at(model: ODENet, h0: torch.Tensor, labels: torch.Tensor, h1_ref: torch.Tensor,
                tol: float, batch_size: int) -> dict[str, float]:  # fmt: skip
    block = model.ode_block
    _set_tol(block, tol)
    nfe, seconds, correct, calls = 0, 0.0, 0, 0
    errors = []
    with torch.no_grad():
        for idx in torch.arange(len(labels)).split(batch_size):
            t0 = time.perf_counter()
            h1 = block(h0[idx])
            logits = model[2](h1)
            seconds += time.perf_counter() - t0
            nfe += block.stats.nfe
            calls += 1
            correct += int((logits.argmax(1) == labels[idx]).sum())
            errors.append((h1.double() - h1_ref[idx]).flatten(1))
    err = torch.cat(errors)
    return {
        "tol": tol,
        "nfe_forward": nfe / calls,
        "seconds_per_forward": seconds / calls,
        "error_rms": float(err.square().mean().sqrt()),
        "error_max": float(err.abs().max()),
        "accuracy": correct / len(labels),
    }


def _backward_ratio(model: ODENet, images: torch.Tensor, labels: torch.Tensor, tol: float,
                    batches: int) -> dict[str, float]:  # fmt: skip
    """Adjoint NFE per forward NFE on training-size batches, plain and with the seminorm."""
    block = model.ode_block
    saved = block.adjoint
    out: dict[str, float] = {}
    for name, seminorm in (("", False), ("_seminorm", True)):
        block.adjoint = BacksolveAdjoint(seminorm=seminorm)
        _set_tol(block, tol)
        f = b = 0
        for idx in torch.arange(len(labels)).split(128)[:batches]:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(images[idx]), labels[idx]).backward()
            f, b = f + block.stats.nfe, b + block.stats.nfe_backward
        out[f"nfe_backward{name}"] = b / batches
        out[f"backward_forward_ratio{name}"] = b / max(f, 1)
    block.adjoint = saved
    model.zero_grad(set_to_none=True)
    return out


def plot_figure3(results: dict[str, Any], folder: Path) -> list[str]:
    """Figure 3 (a)–(d) in one file, and each panel's data in results.json."""
    plt = pyplot()
    rows = results["rows"]
    nfe = [r["nfe_forward"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    ax = axes[0]
    ax.loglog(nfe, [r["error_rms"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(f"{r['tol']:g}", (r["nfe_forward"], r["error_rms"]), fontsize=7)
    ax.set(xlabel="NFE forward", ylabel="RMS error of h(1)", title="(a) NFE vs error")
    ax = axes[1]
    ax.plot(nfe, [r["seconds_per_forward"] for r in rows], marker="o")
    ax.set(xlabel="NFE forward", ylabel=f"seconds per forward ({results['batch_size']} images)",
           title="(b) NFE vs time")  # fmt: skip
    ax = axes[2]
    top = max(nfe)
    ax.plot(nfe, [r["nfe_backward"] for r in rows], marker="o", label="backsolve")
    ax.plot(nfe, [r["nfe_backward_seminorm"] for r in rows], marker="s", label="seminorm")
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=0.8, label="NFE-B = NFE-F")
    ax.set(xlabel="NFE forward", ylabel="NFE backward", title="(c) backward vs forward")
    ax.legend()
    ax = axes[3]
    per_epoch = results["nfe_forward_per_epoch"]
    ax.plot(range(1, len(per_epoch) + 1), per_epoch, marker="o")
    ax.set(ylabel="NFE forward per step", title="(d) NFE over training")
    epoch_axis(ax)
    for ax in axes:
        ax.grid(alpha=0.3)
    twin = axes[0].twinx()
    twin.semilogx(nfe, [100 * r["accuracy"] for r in rows], color="tab:green", marker="x")
    twin.set_ylabel("test accuracy (%)", color="tab:green")
    # Plain numbers at 1, 2 and 5 of each decade: every minor label (3×10¹, 4×10¹...)
    # collides, and decades alone leave a sweep within one decade (NFE 14-50) unlabelled.
    # Set after the twin, whose semilogx call resets the shared x axis's formatters.
    ticker = require("matplotlib.ticker")
    for axis in (axes[0].xaxis, twin.xaxis):
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.ScalarFormatter())
        axis.set_minor_formatter(ticker.NullFormatter())
    return [save(fig, folder, "figure3.png")]
