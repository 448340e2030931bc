"""Input checks and float32 promotion shared by the logit-distillation losses."""

from __future__ import annotations

import torch

__all__ = ["prepare_logits"]


def _check_finite(name: str, x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        examples = x[bad][:3].tolist()
        raise ValueError(
            f"{name} has {int(bad.sum())} non-finite values (e.g. {examples}) in shape "
            f"{tuple(x.shape)}; check the model outputs or lower the learning rate"
        )


def prepare_logits(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None,
    *,
    min_batch: int,
    method: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(B, C)`` logits and ``(B,)`` targets; return float32+ copies, teacher detached.

    Half-precision inputs (e.g. from autocast) are promoted to float32; float64 stays float64.
    Raises ValueError naming the shapes or values for: a batch smaller than ``min_batch``,
    fewer than 2 classes, mismatched shapes, non-integer or mis-sized targets, non-finite logits.
    """
    s_shape, t_shape = tuple(student_logits.shape), tuple(teacher_logits.shape)
    if student_logits.ndim != 2 or teacher_logits.ndim != 2:
        raise ValueError(
            f"{method} expects (B, C) logits, got student {s_shape} and teacher {t_shape}"
        )
    if s_shape != t_shape:
        raise ValueError(
            f"{method}: student logits {s_shape} and teacher logits {t_shape} differ; student "
            "and teacher need the same batch and number of classes"
        )
    batch, classes = s_shape
    if classes < 2:
        raise ValueError(f"{method} needs at least 2 classes, got logits of shape {s_shape}")
    if batch < min_batch:
        why = (
            "; the class-level and correlation terms are undefined for one sample (use "
            "drop_last=True in the DataLoader)"
        )
        raise ValueError(
            f"{method} needs a batch of at least {min_batch}, got logits of shape {s_shape}"
            + (why if min_batch > 1 else "")
        )
    if target is not None:
        if target.shape != (batch,) or target.is_floating_point() or target.is_complex():
            raise ValueError(
                f"{method}: target must be integer class indices of shape ({batch},), got "
                f"{target.dtype} {tuple(target.shape)}"
            )
    _check_finite("student_logits", student_logits)
    _check_finite("teacher_logits", teacher_logits)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    return student_logits.to(dtype), teacher_logits.detach().to(dtype)
