"""Picking pseudo-labelled queries (GP-MAML step 3): class-balanced (the paper), by a
confidence threshold, or class-balanced with the threshold where the balanced rule finds
nothing (options)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "check_pick_threshold",
    "check_picking_rule",
    "pick_balanced_or_confident",
    "pick_confident",
    "pick_pseudo_labels",
]


def pick_pseudo_labels(
    scores: Tensor, num_classes: int, pool: int | None = None
) -> tuple[Tensor, Tensor]:
    """Pick the ``k`` most confident queries of every predicted class.

    ``k`` is the smallest number of queries predicted for any class, so the pick is
    class-balanced; ``k = 0`` (a class nobody predicts) picks nothing. With ``pool`` only the
    ``pool`` most confident queries overall are candidates (the paper's code's ``pic_num`` at
    meta-training): ``k`` and the ranks are counted among them. Shapes never depend on the
    data, so the function is ``vmap``-able.

    Args:
        scores: ``(N_q, C)`` propagated scores of the queries (e.g. label-propagation ``F``).
        num_classes: ``C``.
        pool: candidates, the most confident first (``None``: every query).

    Returns:
        ``(mask, labels)``: ``(N_q,)`` float 0/1 mask of picked queries and ``(N_q,)`` int64
        pseudo-labels ``argmax`` of ``softmax(scores)``.
    """
    prob = scores.detach().softmax(-1)
    conf, labels = prob.max(-1)
    n = scores.shape[0]
    order = torch.arange(n, device=scores.device)
    # before[i, j]: query j is ranked before query i (higher confidence, ties by index)
    before = (conf.unsqueeze(0) > conf.unsqueeze(1)) | (
        (conf.unsqueeze(0) == conf.unsqueeze(1)) & (order.unsqueeze(0) < order.unsqueeze(1))
    )
    candidate = torch.ones(n, dtype=torch.bool, device=scores.device)
    if pool is not None:
        candidate = before.sum(1) < pool
    same = (labels.unsqueeze(0) == labels.unsqueeze(1)) & candidate.unsqueeze(0)
    counts = (F.one_hot(labels, num_classes) * candidate.unsqueeze(1)).sum(0)
    k = counts.min()
    rank = (same & before).sum(1)
    mask = (candidate & (rank < k)).to(scores.dtype)
    return mask, labels


def check_pick_threshold(threshold: float | None, name: str = "pick_threshold") -> None:
    """Raise ``ValueError`` unless ``threshold`` is ``None`` (class-balanced) or in (0, 1]."""
    if threshold is not None and not 0 < threshold <= 1:
        raise ValueError(
            f"{name} must be in (0, 1] (a share of a query's propagated mass), or None "
            f"for class-balanced picking alone; got {threshold!r}"
        )


def check_picking_rule(pick_threshold: float | None, fallback_threshold: float | None) -> None:
    """Raise ``ValueError`` unless both thresholds are valid (``check_pick_threshold``) and at
    most one is set: ``pick_threshold`` replaces class-balanced picking, ``fallback_threshold``
    extends it."""
    check_pick_threshold(pick_threshold)
    check_pick_threshold(fallback_threshold, "fallback_threshold")
    if pick_threshold is not None and fallback_threshold is not None:
        raise ValueError(
            "pick_threshold replaces class-balanced picking and fallback_threshold extends it: "
            "use one of them, not both"
        )


def pick_confident(scores: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Pick every query whose propagated mass falls ``>= threshold`` on one class.

    The confidence of query ``i`` is its top class share ``max_c s_ic / sum_c s_ic`` of the
    non-negative scores (``F`` or its class-mass-normalised rows): scale-free, ``1/C`` for a
    query the graph cannot tell apart, 1 for one reached by a single class. Unlike
    ``pick_pseudo_labels`` a class nobody predicts does not empty the pick, so it still picks
    with one query per class; the pick is not class-balanced. ``vmap``-able.

    Args:
        scores: ``(N_q, C)`` non-negative propagated scores of the queries.
        threshold: minimum top share, in (0, 1]; ``<= 1/C`` picks every query.

    Returns:
        ``(mask, labels)`` as ``pick_pseudo_labels``.
    """
    check_pick_threshold(threshold)
    mass = scores.detach().clamp_min(0)
    share, labels = (mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)).max(-1)
    return (share >= threshold).to(scores.dtype), labels


def pick_balanced_or_confident(
    scores: Tensor, num_classes: int, threshold: float, pool: int | None = None
) -> tuple[Tensor, Tensor]:
    """Class-balanced picking (``pick_pseudo_labels``); where it picks nothing (``k = 0``, a
    class nobody predicts), every query with at least ``threshold`` of its mass on one class
    (``pick_confident``) instead.

    With many queries per class the balanced rule almost always picks, so this is the paper's
    rule there; with one query per class (20-way: ``k = 0`` in ~98 % of tasks) it is the
    threshold rule. ``vmap``-able.

    Args:
        scores: ``(N_q, C)`` non-negative propagated scores of the queries.
        num_classes: ``C``.
        threshold: minimum top share of the fallback, in (0, 1].
        pool: candidates of the class-balanced rule (``pick_pseudo_labels``).

    Returns:
        ``(mask, labels)`` as ``pick_pseudo_labels`` (both rules label by the top class).
    """
    balanced, labels = pick_pseudo_labels(scores, num_classes, pool)
    confident, _ = pick_confident(scores, threshold)
    return torch.where(balanced.sum() > 0, balanced, confident), labels
