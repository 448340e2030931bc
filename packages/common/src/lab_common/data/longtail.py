"""Long-tailed subsets of labelled datasets and many/medium/few-shot evaluation.

The exponential profile of Cao et al. (NeurIPS 2019, the CIFAR-100-LT protocol): class ``i`` of
``C`` keeps ``n_i = ⌊n_max · ρ^(−i/(C−1))⌋`` training images, ``ρ = n_max / n_min`` the imbalance
ratio. Classes are then split by their number of training images into many-shot (``> many``),
medium-shot and few-shot (``< few``); the defaults 100 / 20 are those of Liu et al. (CVPR 2019).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, Subset

__all__ = [
    "longtail_counts",
    "longtail_indices",
    "longtail_subset",
    "dataset_targets",
    "shot_splits",
    "split_accuracy",
]


def longtail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Per-class counts ``⌊n_max · ρ^(−i/(C−1))⌋`` for ``i = 0 … C−1`` (class 0 the largest)."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if imbalance_ratio < 1:
        raise ValueError(f"imbalance_ratio must be >= 1 (n_max / n_min), got {imbalance_ratio}")
    counts = [
        max(1, math.floor(n_max * imbalance_ratio ** (-i / (num_classes - 1)) + 1e-9))
        for i in range(num_classes)
    ]
    return counts


def dataset_targets(dataset: Dataset) -> torch.Tensor:
    """``(N,)`` int64 labels of a dataset: its ``targets``/``labels`` attribute, else by indexing."""
    for attr in ("targets", "labels", "_labels", "y"):
        if hasattr(dataset, attr):
            return torch.as_tensor(getattr(dataset, attr), dtype=torch.long).flatten()
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices)]
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.long)


def longtail_indices(
    targets: torch.Tensor | Sequence[int],
    imbalance_ratio: float,
    *,
    n_max: int | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of a long-tailed subset following :func:`longtail_counts`.

    Args:
        targets: ``(N,)`` labels in ``[0, C)``.
        imbalance_ratio: ``ρ``.
        n_max: images of class 0 (default: the smallest class size, so every class can comply).
        num_classes: ``C`` (default ``max(targets) + 1``).
        seed: which images of each class are kept (a random draw from its own generator).

    Returns:
        ``(Σ n_i,)`` sorted int64 indices into ``targets``.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)
    num_classes = int(targets.max()) + 1 if num_classes is None else num_classes
    available = torch.bincount(targets, minlength=num_classes)
    n_max = int(available.min()) if n_max is None else n_max
    counts = longtail_counts(n_max, num_classes, imbalance_ratio)
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c, n in enumerate(counts):
        idx = (targets == c).nonzero().flatten()
        if idx.numel() < n:
            raise ValueError(
                f"class {c} has {idx.numel()} images but the profile (n_max={n_max}, "
                f"rho={imbalance_ratio}) needs {n}; lower n_max"
            )
        keep.append(idx[torch.randperm(idx.numel(), generator=gen)[:n]])
    return torch.cat(keep).sort().values


def longtail_subset(
    dataset: Dataset, imbalance_ratio: float, *, n_max: int | None = None, seed: int = 0
) -> Subset:
    """A :class:`torch.utils.data.Subset` of ``dataset`` with the long-tailed profile."""
    return Subset(
        dataset,
        longtail_indices(
            dataset_targets(dataset), imbalance_ratio, n_max=n_max, seed=seed
        ).tolist(),
    )


def shot_splits(
    train_counts: Sequence[int] | torch.Tensor, *, many: int = 100, few: int = 20
) -> dict[str, list[int]]:
    """Classes by training-set size: ``many`` (``> many``), ``medium``, ``few`` (``< few``)."""
    if few > many:
        raise ValueError(f"few={few} must be <= many={many}")
    counts = [int(c) for c in train_counts]
    return {
        "many": [c for c, n in enumerate(counts) if n > many],
        "medium": [c for c, n in enumerate(counts) if few <= n <= many],
        "few": [c for c, n in enumerate(counts) if n < few],
    }


def split_accuracy(
    predictions: torch.Tensor, targets: torch.Tensor, splits: dict[str, list[int]]
) -> dict[str, float]:
    """Accuracy in percent over all samples and over the samples of each split's classes.

    A split with no test samples gets ``nan``. ``predictions`` and ``targets`` are ``(N,)``.
    """
    if predictions.shape != targets.shape or predictions.ndim != 1:
        raise ValueError(
            f"expected (N,) predictions and targets, got {tuple(predictions.shape)} and "
            f"{tuple(targets.shape)}"
        )
    correct = predictions.eq(targets)
    out = {"all": correct.float().mean().item() * 100.0 if len(targets) else float("nan")}
    for name, classes in splits.items():
        mask = torch.isin(targets, torch.as_tensor(classes, dtype=targets.dtype))
        out[name] = correct[mask].float().mean().item() * 100.0 if mask.any() else float("nan")
    return out
