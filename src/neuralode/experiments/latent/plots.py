"""The spiral figure of ``train latent-ode``: observations, reconstruction, extrapolation."""

from __future__ import annotations

from pathlib import Path

import torch

from ...data import IrregularSeries
from ...nn import LatentODE, SequenceModel
from .._run.plots import pyplot, save

FIGURE = "extrapolation.png"


@torch.no_grad()
def plot_spirals(
    model: SequenceModel,
    test: IrregularSeries,
    truth: IrregularSeries,
    folder: Path,
    *,
    title: str,
    count: int = 4,
) -> str:
    """Draw ``count`` test spirals with the model's predictions; return the file name.

    Args:
        model: The trained model (put in eval mode while drawing).
        test: The test spirals (noisy observations, targets with ``target_clean``).
        truth: The same spirals observed noise-free at every window point.
        folder: Where to save :data:`FIGURE`.
        title: The figure's title.
        count: Spirals drawn.
    """
    plt = pyplot()
    was_training = model.training
    model.eval()
    batch = test[: min(count, len(test))]
    extrapolated = model.extrapolate(batch).cpu()
    reconstructed = None
    if isinstance(model, LatentODE):
        # The latent ODE predicts anywhere, inside the observed window too; the RNNs only
        # after their last observation.
        grid = truth.times[0].to(batch.times.device)
        reconstructed = model.extrapolate(batch, grid).cpu()
    model.train(was_training)
    batch = batch.to("cpu")
    fig, axes = plt.subplots(1, len(batch), figsize=(3.4 * len(batch), 3.6), squeeze=False)
    for i, ax in enumerate(axes[0]):
        window, ahead = truth.values[i].cpu(), batch.target_clean[i]  # type: ignore[index]
        ahead = torch.cat([window[-1:], ahead])
        ax.plot(window[:, 0], window[:, 1], color="0.6", lw=1.2, label="true, observed window")
        ax.plot(ahead[:, 0], ahead[:, 1], color="0.6", lw=1.2, ls="--", label="true, to predict")
        ax.scatter(batch.values[i, :, 0], batch.values[i, :, 1], s=9, color="k", zorder=3,
                   label=f"observed ({batch.values.shape[1]})")  # fmt: skip
        if reconstructed is not None:
            ax.plot(reconstructed[i, :, 0], reconstructed[i, :, 1], color="tab:blue",
                    label="reconstruction")  # fmt: skip
        ax.plot(extrapolated[i, :, 0], extrapolated[i, :, 1], color="tab:red",
                label="extrapolation")  # fmt: skip
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(f"test spiral {i + 1}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    return save(fig, folder, FIGURE)
