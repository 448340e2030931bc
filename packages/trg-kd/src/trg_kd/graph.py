"""Chunked k-nearest-neighbour token graph.

Nodes are token vectors ``(M, D)``. Squared Euclidean distances and the k-NN search run over
blocks of ``chunk_size`` query rows, so peak memory grows with ``chunk_size × M`` instead of
``M²``; the result does not depend on ``chunk_size`` (each row's neighbours are a top-k of that
row alone, and the returned distances are recomputed exactly from the selected pairs).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["TokenGraph", "knn_graph", "gaussian_kernel", "pair_sq_dists"]


class TokenGraph(NamedTuple):
    """k-NN graph of ``Q`` query nodes among ``M`` nodes.

    Attributes:
        index: ``(Q, k)`` int64 neighbour indices into the ``M`` nodes, nearest first (exact
            ties in distance are broken by ``torch.topk``); a node is never its own neighbour.
        sq_dist: ``(Q, k)`` squared Euclidean distances to those neighbours.
    """

    index: torch.Tensor
    sq_dist: torch.Tensor


def pair_sq_dists(queries: torch.Tensor, nodes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Squared distances ``‖q_i − x_{index[i, j]}‖²`` of given pairs, ``(Q, k)``.

    Computed from the differences (not ``‖a‖² + ‖b‖² − 2ab``): exact, non-negative, and
    differentiable in float64 for gradcheck. ``queries`` is ``(Q, D)``, ``nodes`` ``(M, D)``.
    """
    neighbours = nodes[index]  # (Q, k, D)
    return (queries.unsqueeze(1) - neighbours).pow(2).sum(-1)


def gaussian_kernel(sq_dist: torch.Tensor, sigma: float) -> torch.Tensor:
    """Edge weights ``exp(−d² / (2σ))`` of squared distances ``d²`` (any shape)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return torch.exp(-sq_dist / (2.0 * sigma))


@torch.no_grad()
def _knn_index(
    queries: torch.Tensor, nodes: torch.Tensor, self_index: torch.Tensor, k: int, chunk_size: int
) -> torch.Tensor:
    node_sq = nodes.pow(2).sum(-1)  # (M,)
    out = []
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start : start + chunk_size]  # (c, D)
        d = q.pow(2).sum(-1, keepdim=True) + node_sq - 2.0 * q @ nodes.T  # (c, M)
        d.scatter_(1, self_index[start : start + chunk_size, None], float("inf"))
        out.append(d.topk(k, dim=1, largest=False, sorted=True).indices)
    return torch.cat(out)


def knn_graph(
    nodes: torch.Tensor,
    k: int,
    *,
    query_index: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> TokenGraph:
    """k nearest neighbours (Euclidean) of each query node among ``nodes``.

    Args:
        nodes: ``(M, D)`` node features.
        k: neighbours per node, ``1 <= k < M``.
        query_index: ``(Q,)`` rows of ``nodes`` to build neighbourhoods for (default: all ``M``);
            used for a per-rank slice of a graph gathered across ranks.
        chunk_size: query rows per block of the distance matrix (peak memory ``chunk_size × M``).

    Returns:
        A :class:`TokenGraph`; ``sq_dist`` carries gradients to ``nodes``.
    """
    if nodes.ndim != 2:
        raise ValueError(f"nodes must be (M, D), got shape {tuple(nodes.shape)}")
    m = nodes.shape[0]
    if not 1 <= k < m:
        raise ValueError(
            f"k={k} neighbours need at least k + 1 = {k + 1} nodes, got {m} nodes; "
            "lower k or sample more tokens per image / use a larger batch"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if query_index is None:
        query_index = torch.arange(m, device=nodes.device)
    queries = nodes[query_index]
    index = _knn_index(queries.detach(), nodes.detach(), query_index, k, chunk_size)
    return TokenGraph(index=index, sq_dist=pair_sq_dists(queries, nodes, index))
