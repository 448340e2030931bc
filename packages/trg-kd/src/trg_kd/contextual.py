"""Contextual (inner-image) loss: match each image's token self-similarity.

For the ``N`` tokens ``F ∈ R^{N×D}`` of one image, ``A = softmax(F Fᵀ / sqrt(D))`` (row-wise) is an
``N × N`` attention-like map. ``L_inner = MSE(A_student, A_teacher)`` averaged over the batch. The
two widths may differ: each side is scaled by its own ``sqrt(D)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["token_self_similarity", "contextual_loss"]


def token_self_similarity(tokens: torch.Tensor) -> torch.Tensor:
    """Row-softmax self-similarity ``softmax(F Fᵀ / sqrt(D))``: ``(B, N, D)`` → ``(B, N, N)``."""
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, N, D), got shape {tuple(tokens.shape)}")
    scores = tokens @ tokens.transpose(1, 2) / math.sqrt(tokens.shape[-1])
    return scores.softmax(dim=-1)


def contextual_loss(student_tokens: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """MSE between student and teacher token self-similarity maps.

    Args:
        student_tokens: ``(B, N, D_s)``.
        teacher_tokens: ``(B, N, D_t)``; detached.

    Returns:
        A scalar: the mean over ``B·N·N`` entries.
    """
    if student_tokens.ndim != 3 or teacher_tokens.ndim != 3:
        raise ValueError(
            f"expected (B, N, D) tokens, got {tuple(student_tokens.shape)} and "
            f"{tuple(teacher_tokens.shape)}"
        )
    if student_tokens.shape[:2] != teacher_tokens.shape[:2]:
        raise ValueError(
            f"student (B, N) = {tuple(student_tokens.shape[:2])} != teacher (B, N) = "
            f"{tuple(teacher_tokens.shape[:2])}; align the token grids first"
        )
    return F.mse_loss(
        token_self_similarity(student_tokens), token_self_similarity(teacher_tokens.detach())
    )
