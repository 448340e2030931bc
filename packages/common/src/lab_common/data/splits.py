"""Class-balanced train/validation splits with a fixed seed (choose defaults on validation only)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["class_balanced_split"]


def class_balanced_split(
    labels: Sequence[int] | torch.Tensor, fraction: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` with ``round(fraction · n_c)`` of every class ``c`` in ``val``.

    Args:
        labels: ``(N,)`` integer class labels.
        fraction: share of each class held out for validation, in ``(0, 1)``.
        seed: seed of the permutation inside each class (same seed, same split).

    Returns:
        Two sorted ``int64`` index tensors that partition ``range(N)``; every class keeps at
        least one training example.
    """
    y = torch.as_tensor(labels)
    if y.ndim != 1 or y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be (N,) integer classes, got {y.dtype} {tuple(y.shape)}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), e.g. 0.1, got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = min(round(fraction * len(idx)), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values
