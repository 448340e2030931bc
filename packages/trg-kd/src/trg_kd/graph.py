"""Chunked k-nearest-neighbour token graph and its edge distances.

Nodes are token vectors ``(M, D)``. Both computations run in blocks whose size ``chunk_size``
bounds the peak memory, in the forward and the backward pass, at about ``chunk_size × M``
values whatever ``k`` and ``D`` are:

- the k-NN search takes ``chunk_size`` query rows at a time: a ``(chunk_size, M)`` block of
  squared distances ``‖q‖² + ‖x‖² − 2 q·x`` and its top-k;
- the edge distances ``‖q_i − x_j‖²`` of the ``(Q, k)`` selected pairs take
  ``max(1, chunk_size · M // (k · D))`` query rows at a time, so the gathered neighbours of a
  block, ``(rows, k, D)``, never exceed ``chunk_size × M`` values; the backward pass recomputes
  them block by block instead of keeping a ``(Q, k, D)`` tensor for autograd.

The results do not depend on ``chunk_size``: each row's neighbours are a top-k of that row
alone, and each edge distance is computed from the differences of its own pair (exact and
non-negative). The nodes' gradient is accumulated with ``index_add_``, which is deterministic
on the CPU (and on CUDA under ``torch.use_deterministic_algorithms``), never with
``index_put_(accumulate=True)`` — the backward of ``nodes[index]`` — whose multi-threaded CPU
kernel adds duplicated indices in a varying order.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.autograd.function import once_differentiable

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


def _edge_block_rows(nodes: torch.Tensor, index: torch.Tensor, chunk_size: int) -> int:
    """Query rows per block so that a block's ``(rows, k, D)`` neighbours hold ``<= chunk_size·M``."""
    per_row = max(1, index.shape[1] * nodes.shape[1])
    return max(1, chunk_size * nodes.shape[0] // per_row)


def _gather_rows(nodes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``nodes[index]`` as a new ``(*index.shape, D)`` tensor (``index_select``: no autograd)."""
    return nodes.index_select(0, index.reshape(-1)).view(*index.shape, nodes.shape[1])


class _PairSqDists(torch.autograd.Function):
    """``d[i, j] = Σ_D (q_i − x_{index[i, j]})²`` in blocks of rows, recomputed for backward."""

    @staticmethod
    def forward(
        ctx: Any, queries: torch.Tensor, nodes: torch.Tensor, index: torch.Tensor, rows: int
    ) -> torch.Tensor:
        out = queries.new_empty(index.shape)
        for start in range(0, queries.shape[0], rows):
            block = slice(start, start + rows)
            diff = _gather_rows(nodes, index[block])  # (r, k, D)
            diff.sub_(queries[block].unsqueeze(1))
            out[block] = diff.pow_(2).sum(-1)
        ctx.save_for_backward(queries, nodes, index)
        ctx.rows = rows
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        queries, nodes, index = ctx.saved_tensors
        need_q, need_x = ctx.needs_input_grad[:2]
        grad_q = torch.empty_like(queries) if need_q else None
        grad_x = torch.zeros_like(nodes) if need_x else None
        for start in range(0, queries.shape[0], ctx.rows):
            block = slice(start, start + ctx.rows)
            idx = index[block]
            g = _gather_rows(nodes, idx)  # (r, k, D): x_j − q_i, then 2 · grad · (x_j − q_i)
            g.sub_(queries[block].unsqueeze(1)).mul_(2.0 * grad[block].unsqueeze(-1))
            if grad_q is not None:
                grad_q[block] = -g.sum(1)
            if grad_x is not None:
                grad_x.index_add_(0, idx.reshape(-1), g.reshape(-1, g.shape[-1]))
        return grad_q, grad_x, None, None


def pair_sq_dists(
    queries: torch.Tensor, nodes: torch.Tensor, index: torch.Tensor, *, chunk_size: int = 1024
) -> torch.Tensor:
    """Squared distances ``‖q_i − x_{index[i, j]}‖²`` of given pairs, ``(Q, k)``.

    ``queries`` is ``(Q, D)``, ``nodes`` ``(M, D)``, ``index`` ``(Q, k)`` int64. Computed from
    the differences (not ``‖a‖² + ‖b‖² − 2ab``): exact, non-negative, and differentiable in
    ``queries`` and ``nodes`` (float64 passes gradcheck). Runs in blocks of at most
    ``chunk_size × M`` gathered values, forward and backward (see the module docstring); the
    values do not depend on ``chunk_size``.
    """
    if queries.ndim != 2 or nodes.ndim != 2 or queries.shape[1] != nodes.shape[1]:
        raise ValueError(
            f"expected queries (Q, D) and nodes (M, D) of one width D, got "
            f"{tuple(queries.shape)} and {tuple(nodes.shape)}"
        )
    if index.ndim != 2 or index.shape[0] != queries.shape[0]:
        raise ValueError(
            f"index must be (Q, k) = ({queries.shape[0]}, k), got {tuple(index.shape)}"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _PairSqDists.apply(queries, nodes, index, _edge_block_rows(nodes, index, chunk_size))


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
        chunk_size: bounds the peak memory of the search and of the edge distances at about
            ``chunk_size × M`` values (query rows per block of the distance matrix).

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
    return TokenGraph(
        index=index, sq_dist=pair_sq_dists(queries, nodes, index, chunk_size=chunk_size)
    )
