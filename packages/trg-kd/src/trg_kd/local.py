"""Local-preserving loss on the teacher's token graph (the form of Yang et al., CVPR 2020).

For each query node ``i`` with teacher neighbours ``N(i)`` (k-NN, Euclidean), the local structure
is a softmax over the neighbours of the Gaussian edge weights ``w_ij = exp(−‖t_i − t_j‖² / (2σ))``:
``LS_i = softmax_j∈N(i)(w_ij)``. The student's structure uses the same edges with the student's
tokens. ``L_local = Σ_i KL(LS_i^teacher ‖ LS_i^student)`` (or the mean over nodes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trg_kd.graph import TokenGraph, gaussian_kernel, knn_graph, pair_sq_dists

__all__ = ["local_preserving_loss"]


def local_preserving_loss(
    student_nodes: torch.Tensor,
    teacher_nodes: torch.Tensor,
    k: int,
    *,
    sigma: float = 1.0,
    query_index: torch.Tensor | None = None,
    chunk_size: int = 1024,
    reduction: str = "sum",
    graph: TokenGraph | None = None,
) -> torch.Tensor:
    """KL between teacher and student neighbourhood distributions on the teacher's k-NN graph.

    Args:
        student_nodes: ``(M, D)`` student token features; any width works (only distances
            are compared).
        teacher_nodes: ``(M, D_t)`` teacher token features; treated as constants (detached).
        k: neighbours per node.
        sigma: Gaussian kernel width ``σ`` in ``exp(−d² / (2σ))``.
        query_index: ``(Q,)`` rows whose neighbourhoods enter the loss (default all ``M``).
        chunk_size: query rows per block of the k-NN search and of the edge distances (their
            peak memory, forward and backward, is ``chunk_size × M``).
        reduction: ``"sum"`` over query nodes (the paper's form) or ``"mean"``.
        graph: a precomputed teacher graph (skips the k-NN search).

    Returns:
        A scalar.
    """
    if student_nodes.ndim != 2 or teacher_nodes.ndim != 2:
        raise ValueError(
            f"expected student (M, D) and teacher (M, D_t) nodes, got "
            f"{tuple(student_nodes.shape)} and {tuple(teacher_nodes.shape)}"
        )
    if student_nodes.shape[0] != teacher_nodes.shape[0]:
        raise ValueError(
            f"student has {student_nodes.shape[0]} nodes but teacher has {teacher_nodes.shape[0]}"
        )
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    teacher_nodes = teacher_nodes.detach()
    if graph is None:
        graph = knn_graph(teacher_nodes, k, query_index=query_index, chunk_size=chunk_size)
    if query_index is None:
        query_index = torch.arange(student_nodes.shape[0], device=student_nodes.device)
    teacher_w = gaussian_kernel(graph.sq_dist, sigma)  # (Q, k)
    student_w = gaussian_kernel(
        pair_sq_dists(
            student_nodes[query_index], student_nodes, graph.index, chunk_size=chunk_size
        ),
        sigma,
    )
    log_p_t = F.log_softmax(teacher_w, dim=1)
    log_p_s = F.log_softmax(student_w, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)  # (Q,)
    return kl.sum() if reduction == "sum" else kl.mean()
