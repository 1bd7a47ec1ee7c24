"""Image preprocessing and augmentation in plain torch (no torchvision: no CPU build here)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_tensor

__all__ = ["random_crop", "to_float"]


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Convert uint8 images to float32 network input in ``[0, 1]``.

    The only normalisation is division by 255, as in the reference: torchdiffeq's
    ``odenet_mnist.py`` applies ``transforms.ToTensor()`` alone (no mean/std
    standardisation). The ODE-Net's first layer is a convolution followed by GroupNorm, so a
    per-dataset mean and std would change little.

    Args:
        images: uint8 ``(N, H, W)`` or ``(N, C, H, W)``.

    Returns:
        float32 ``(N, 1, H, W)`` (or ``(N, C, H, W)``) in ``[0, 1]``.

    Raises:
        TypeError: If ``images`` is not uint8.
        ValueError: If ``images`` is not 3- or 4-dimensional.
    """
    if check_tensor("images", images).dtype != torch.uint8:
        raise TypeError(
            f"images must be uint8 (as load_images returns them), got {images.dtype}; "
            "float images are taken to be converted already"
        )
    if images.dim() not in (3, 4):
        raise ValueError(
            f"images must be (N, H, W) or (N, C, H, W), got shape {tuple(images.shape)}"
        )
    x = images.unsqueeze(1) if images.dim() == 3 else images
    return x.to(torch.float32).div_(255.0)


def random_crop(
    images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Pad with zeros, then crop back to the original size at a random offset per image.

    The equivalent of torchvision's ``RandomCrop(size, padding=padding)`` (the reference's
    MNIST augmentation with ``padding=4``), applied to a whole batch at once: the offsets
    are drawn per image and the crops are taken with two ``gather`` calls, with no Python
    loop over images. Works for any dtype and device and is differentiable.

    Args:
        images: ``(N, H, W)`` or ``(N, C, H, W)``.
        padding: Zero padding on each side; offsets are uniform in ``[0, 2 · padding]`` in
            each direction, i.e. shifts of up to ``padding`` pixels.
        generator: Source of the offsets, for reproducible augmentation; the global RNG if
            ``None``. Its device may differ from the images'.

    Returns:
        Cropped images of the input's shape, dtype and device.

    Raises:
        ValueError: If ``images`` is not 3- or 4-dimensional or ``padding`` is negative.
    """
    if check_tensor("images", images).dim() not in (3, 4):
        raise ValueError(
            f"images must be (N, H, W) or (N, C, H, W), got shape {tuple(images.shape)}"
        )
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    x = images.unsqueeze(1) if images.dim() == 3 else images
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (N, C, H + 2p, W + 2p)
    draw_device = generator.device if generator is not None else x.device
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=draw_device).to(
        x.device
    )
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (N, W)
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * padding))
    out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))  # (N, C, H, W)
    return out.reshape(images.shape)
