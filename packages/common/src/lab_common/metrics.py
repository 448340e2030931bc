"""Accuracy and confidence intervals."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.stats
import torch

__all__ = ["topk_accuracy", "mean_confidence_interval"]


def topk_accuracy(
    logits: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1,)
) -> list[float]:
    """Top-k accuracies in percent.

    Args:
        logits: ``(B, C)`` scores.
        target: ``(B,)`` integer labels.
        topk: the k values; each must be ``<= C``.
    """
    if logits.ndim != 2 or target.ndim != 1 or logits.shape[0] != target.shape[0]:
        raise ValueError(
            f"expected logits (B, C) and target (B,), got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    maxk = max(topk)
    if maxk > logits.shape[1]:
        raise ValueError(
            f"top-{maxk} accuracy needs at least {maxk} classes, got {logits.shape[1]}"
        )
    if logits.shape[0] == 0:
        raise ValueError("cannot compute accuracy of an empty batch")
    pred = logits.topk(maxk, dim=1).indices  # (B, maxk)
    correct = pred.eq(target.unsqueeze(1))
    return [correct[:, :k].any(dim=1).float().mean().item() * 100.0 for k in topk]


def mean_confidence_interval(
    values: Sequence[float] | np.ndarray | torch.Tensor, confidence: float = 0.95
) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval of the mean.

    Returns ``(mean, h)`` so that the interval is ``mean ± h``; ``h`` is 0 for one value.
    """
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("mean_confidence_interval needs at least one value")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, 0.0
    sem = float(scipy.stats.sem(arr))
    half = sem * float(scipy.stats.t.ppf((1.0 + confidence) / 2.0, arr.size - 1))
    return mean, half
