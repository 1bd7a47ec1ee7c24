"""Seeded, stratified subsets and train/validation splits (index tensors, not copies).

Example: the P1 protocol (a 20k training subset and a 5k validation split of Fashion-MNIST's
60k training images)::

    train_idx, val_idx = train_val_split(labels, 5000, seed=0)
    train_idx = train_idx[stratified_subset(labels[train_idx], 20000, seed=0)]
"""

from __future__ import annotations

import torch

from ._checks import check_seed, check_tensor

__all__ = ["stratified_subset", "train_val_split"]


def _check_labels(labels: torch.Tensor) -> None:
    check_tensor("labels", labels)
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-D, got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")


def _apportion(counts: list[int], size: int) -> list[int]:
    # Hamilton's largest-remainder method: each class gets floor(size · n_c / N), and the
    # seats left over go to the largest remainders (ties to the lower class index). Every
    # class's count is then within 1 of its exact proportional share, and a balanced data
    # set gives counts that differ by at most 1.
    total = sum(counts)
    take = [size * n // total for n in counts]
    remainders = [size * n % total for n in counts]
    left = size - sum(take)
    for k in sorted(range(len(counts)), key=lambda k: (-remainders[k], k))[:left]:
        take[k] += 1
    return take


def _check_size(name: str, size: object, n: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{name} must be an int, got {type(size).__name__}")
    if not 0 <= size <= n:
        raise ValueError(f"{name} must lie in [0, {n}] (the number of labels), got {size}")
    return size


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Pick ``size`` indices at random with the class proportions of ``labels`` preserved.

    Per-class counts are the exact proportional shares rounded by the largest-remainder
    method (each within 1 of ``size · n_c / N``); which members of a class are chosen is
    random, fixed by ``seed`` alone (a private ``torch.Generator``; the global RNG is not
    touched).

    Args:
        labels: Integer class labels, ``(N,)``.
        size: Number of indices, ``0 ≤ size ≤ N``.
        seed: Seed of the random choice.

    Returns:
        Sorted int64 indices into ``labels``, ``(size,)``, on ``labels``' device.

    Raises:
        ValueError: If ``labels`` is not 1-D or ``size`` is out of range.
        TypeError: If ``labels`` is not an integer tensor, ``size`` or ``seed`` not an int.
    """
    _check_labels(labels)
    seed = check_seed(seed)
    n = labels.shape[0]
    _check_size("size", size, n)
    cpu = labels.cpu()
    if size == 0:
        return torch.empty(0, dtype=torch.int64, device=labels.device)
    _, inverse, counts = torch.unique(cpu, return_inverse=True, return_counts=True)
    take = torch.tensor(_apportion(counts.tolist(), size))
    # A random permutation, then a stable sort by class: members of each class end up
    # contiguous and in random order, so "the first take[c] of class c" is a random choice.
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=generator)
    order = perm[torch.argsort(inverse[perm], stable=True)]
    cls = inverse[order]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[cls]
    chosen = order[rank < take[cls]]
    return chosen.sort().values.to(labels.device)


def train_val_split(
    labels: torch.Tensor, val_size: int | float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into disjoint, stratified training and validation sets.

    The validation set is :func:`stratified_subset` of ``labels``; the training set is
    everything else. Together they cover every index exactly once.

    Args:
        labels: Integer class labels, ``(N,)``.
        val_size: Validation set size: an int count, or a float fraction in ``(0, 1)``
            (rounded to the nearest count).
        seed: Seed of the random choice.

    Returns:
        ``(train_indices, val_indices)``, each sorted int64.

    Raises:
        ValueError: If ``val_size`` is out of range (more than the labels, or negative).
        TypeError: If ``val_size`` is neither an int nor a float, or ``seed`` not an int.
    """
    _check_labels(labels)
    n = labels.shape[0]
    if isinstance(val_size, float):
        if not 0.0 < val_size < 1.0:
            raise ValueError(f"a fractional val_size must lie in (0, 1), got {val_size}")
        val_size = round(val_size * n)
    elif isinstance(val_size, bool) or not isinstance(val_size, int):
        raise TypeError(f"val_size must be an int or a float, got {type(val_size).__name__}")
    val = stratified_subset(labels, _check_size("val_size", val_size, n), seed)
    in_val = torch.zeros(n, dtype=torch.bool, device=labels.device)
    in_val[val] = True
    train = torch.nonzero(~in_val).squeeze(1)
    return train, val
