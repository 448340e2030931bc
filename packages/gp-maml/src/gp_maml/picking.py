"""Adaptive class-balanced picking of pseudo-labelled queries (GP-MAML step 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pick_pseudo_labels"]


def pick_pseudo_labels(scores: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Pick the ``k`` most confident queries of every predicted class.

    ``k`` is the smallest number of queries predicted for any class, so the pick is
    class-balanced; ``k = 0`` (a class nobody predicts) picks nothing. Shapes never depend on
    the data, so the function is ``vmap``-able.

    Args:
        scores: ``(N_q, C)`` propagated scores of the queries (e.g. label-propagation ``F``).
        num_classes: ``C``.

    Returns:
        ``(mask, labels)``: ``(N_q,)`` float 0/1 mask of picked queries and ``(N_q,)`` int64
        pseudo-labels ``argmax`` of ``softmax(scores)``.
    """
    prob = scores.detach().softmax(-1)
    conf, labels = prob.max(-1)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    counts = F.one_hot(labels, num_classes).sum(0)
    k = counts.min()
    n = scores.shape[0]
    order = torch.arange(n, device=scores.device)
    # rank_i = number of same-class queries ranked before i (higher confidence, ties by index)
    before = (conf.unsqueeze(0) > conf.unsqueeze(1)) | (
        (conf.unsqueeze(0) == conf.unsqueeze(1)) & (order.unsqueeze(0) < order.unsqueeze(1))
    )
    rank = (same & before).sum(1)
    mask = (rank < k).to(scores.dtype)
    return mask, labels
