"""Transductive label propagation (TPN, Liu et al., ICLR 2019) with a learned per-sample scale."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import BatchNorm2d

__all__ = [
    "RelationNet",
    "TPNRelationNet",
    "class_mass_normalize",
    "gaussian_affinity",
    "label_propagation",
]


class RelationNet(nn.Module):
    """Predicts a positive per-sample scale ``sigma`` from a flat embedding.

    TPN uses two conv blocks on the feature map; an MLP on the flat embedding works for any
    backbone (Conv-4 on 28x28 leaves a 1x1 map that cannot be pooled again).

    Args:
        in_features: embedding size ``D``.
        hidden: hidden width.
    """

    def __init__(self, in_features: int, hidden: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, z: Tensor) -> Tensor:
        """``(N, D)`` embeddings -> ``(N, 1)`` positive scales."""
        return F.softplus(self.fc2(F.relu(self.fc1(z)))) + 1e-3


class TPNRelationNet(nn.Module):
    """TPN's relation network (Liu et al., ICLR 2019), the paper's code's scale network.

    Two conv blocks (conv3x3 - batch-norm - ReLU - max-pool 2 with padding 1; ``channels`` then
    1 output channels) on the embedding's feature map, then two linear layers (8 hidden units,
    ReLU between) giving one scale per example. As in TPN the output is not constrained to be
    positive; ``eps`` is added before ``z`` is divided by it.

    Args:
        in_features: embedding size ``D = channels * side * side`` (the flat feature map).
        channels: channels of the feature map (``side`` follows from ``D``).
        hidden: width of the first linear layer.
        eps: added to the output.
    """

    def __init__(self, in_features: int, channels: int, hidden: int = 8, eps: float = 1e-8) -> None:
        super().__init__()
        side = math.isqrt(in_features // channels) if in_features % channels == 0 else 0
        if side < 1 or channels * side * side != in_features:
            raise ValueError(
                f"in_features={in_features} is not channels x side x side for channels="
                f"{channels}; pass the feature map's channel count"
            )
        self.channels, self.side, self.eps = channels, side, eps
        self.block1 = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2, padding=1),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(channels, 1, 3, padding=1),
            BatchNorm2d(1),
            nn.ReLU(),
            nn.MaxPool2d(2, padding=1),
        )
        out = (side // 2 + 1) // 2 + 1  # max-pool 2 with padding 1, twice
        self.fc1 = nn.Linear(out * out, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, z: Tensor) -> Tensor:
        """``(N, D)`` flat feature maps -> ``(N, 1)`` scales."""
        x = z.view(z.shape[0], self.channels, self.side, self.side)
        x = self.block2(self.block1(x)).flatten(1)
        return self.fc2(F.relu(self.fc1(x))) + self.eps


def gaussian_affinity(
    z: Tensor, sigma: Tensor, topk: int = 20, *, self_loops: bool = False
) -> Tensor:
    """Sparse symmetric Gaussian affinity.

    Args:
        z: ``(N, D)`` embeddings.
        sigma: ``(N, 1)`` per-sample scales; ``z / sigma`` is compared.
        topk: neighbours kept per row (clipped to ``N - 1``, or ``N`` with ``self_loops``); an
            edge is kept when it is in the top-k of either endpoint, so the result stays
            symmetric.
        self_loops: keep each node's link to itself (``W_ii = 1``, one of its top-k), as TPN's
            and the paper's code do (``MetaLearner``'s default); ``False`` zeroes the diagonal
            (Zhou et al.'s graph, the default of these functions).

    Returns:
        ``(N, N)`` affinity ``W`` (zero diagonal unless ``self_loops``).
    """
    n = z.shape[0]
    zs = z / sigma
    w = torch.exp(-(zs.unsqueeze(1) - zs.unsqueeze(0)).pow(2).mean(-1) / 2)
    if not self_loops:
        w = w * (1 - torch.eye(n, dtype=w.dtype, device=w.device))
    limit = n if self_loops else n - 1
    k = min(topk, limit)
    if k < limit:
        idx = w.topk(k, dim=1).indices
        keep = torch.zeros_like(w).scatter(1, idx, 1.0)
        keep = torch.maximum(keep, keep.transpose(0, 1))
        w = w * keep
    return w


def label_propagation(
    z: Tensor,
    y_support: Tensor,
    sigma: Tensor,
    num_classes: int,
    *,
    alpha: float = 0.99,
    topk: int = 20,
    self_loops: bool = False,
) -> Tensor:
    """Propagate support labels to queries: ``F = (I - alpha S)^{-1} Y``.

    Args:
        z: ``(N_s + N_q, D)`` embeddings, support rows first.
        y_support: ``(N_s,)`` int64 support labels in ``[0, num_classes)``.
        sigma: ``(N_s + N_q, 1)`` per-sample scales (e.g. from ``RelationNet``).
        num_classes: ``C``.
        alpha: propagation strength in ``(0, 1)``.
        topk: neighbours per row of the affinity.
        self_loops: keep the affinity's diagonal (see ``gaussian_affinity``).

    Returns:
        ``(N_s + N_q, C)`` propagated scores ``F`` (rows of the queries give pseudo-labels).
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n, n_s = z.shape[0], y_support.shape[0]
    w = gaussian_affinity(z, sigma, topk, self_loops=self_loops)
    d_inv_sqrt = w.sum(1).clamp_min(1e-12).rsqrt()
    s = d_inv_sqrt.unsqueeze(1) * w * d_inv_sqrt.unsqueeze(0)
    y = F.one_hot(y_support, num_classes).to(z.dtype)
    y = torch.cat([y, y.new_zeros(n - n_s, num_classes)])
    eye = torch.eye(n, dtype=z.dtype, device=z.device)
    return torch.linalg.solve(eye - alpha * s, y)


def class_mass_normalize(scores: Tensor) -> Tensor:
    """Class mass normalisation (Zhu, Ghahramani and Lafferty, ICML 2003) for balanced tasks.

    Divides every class column by its total mass, so a class whose support sample is central
    in the graph no longer wins every row. With ``alpha`` near 1, ``(I - alpha S)^{-1} Y`` is
    dominated by the graph's leading eigenvector and the raw ``argmax`` tends to give one class
    to all queries.

    Args:
        scores: ``(N, C)`` non-negative propagated scores (e.g. the query rows of ``F``).

    Returns:
        ``(N, C)`` scores whose columns each sum to 1.
    """
    return scores / scores.sum(0, keepdim=True).clamp_min(1e-12)
