"""Input checks and float32 promotion shared by the logit-distillation losses (CLKD, DKD)."""

from __future__ import annotations

import torch

from lab_common.distill import check_logits_targets

__all__ = ["prepare_logits"]


def prepare_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    min_batch: int,
    method: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check ``(B, C)`` logits and ``(B,)`` targets; return float32+ logits and int64 targets.

    The checks are :func:`lab_common.distill.check_logits_targets` (ValueError naming the
    shapes or values for: a batch smaller than ``min_batch``, fewer than 2 classes, mismatched
    shapes, non-integer, mis-sized or out-of-range targets, non-finite logits; int32 targets
    are cast to int64). Half-precision logits (e.g. from autocast) are promoted to float32;
    float64 stays float64; the teacher's are detached.
    """
    target = check_logits_targets(
        student_logits, teacher_logits, target, loss=method, min_batch=min_batch
    )
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    return student_logits.to(dtype), teacher_logits.detach().to(dtype), target
