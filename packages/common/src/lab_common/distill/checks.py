"""The one input check of every loss that takes logits and class targets.

``KDLoss``, ``clkd.CLKDLoss``, ``clkd.DKDLoss``, ``trg_kd.TRGLoss`` and the cross-entropy of
:class:`~lab_common.distill.SupervisedModel` call :func:`check_logits_targets` first, so a bad
input gives the same clear ``ValueError`` in all of them instead of a NaN loss or a raw torch
error from inside the loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["check_logits_targets"]


def _raise_if_not_finite(loss: str, name: str, x: torch.Tensor) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        examples = x[bad][:3].tolist()
        raise ValueError(
            f"{loss}: {name} has {int(bad.sum())} non-finite values (e.g. {examples}) in shape "
            f"{tuple(x.shape)}; check the model outputs or lower the learning rate"
        )


def check_logits_targets(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    target: torch.Tensor,
    *,
    loss: str,
    min_batch: int = 1,
    finite: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Check ``(B, C)`` logits and ``(B,)`` class-index targets; return the targets as int64.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``, the same shape (None: a loss without a teacher).
        target: ``(B,)`` class indices in ``[0, C)``, any integer dtype (int32, uint8, ... are
            cast to the int64 that torch's losses need).
        loss: the loss's name, which starts every message.
        min_batch: the smallest batch the loss is defined for (1: only an empty batch fails).
        finite: further inputs (e.g. features) to check for NaN/inf in the same pass.

    The shape and dtype checks read no values. The value checks (all logits and ``finite``
    tensors finite, all targets in range) are one fused reduction and a single host sync per
    call; the slow path that names the bad input runs only when one fails.

    Raises:
        ValueError: naming ``loss``, the input and its shape or bad values: logits that are not
            ``(B, C)`` (e.g. 1-D) or differ between student and teacher, fewer than 2 classes,
            a batch smaller than ``min_batch`` (an empty one included), targets that are not
            integer class indices of shape ``(B,)`` (float, bool or complex) or lie outside
            ``[0, C)``, NaN/inf in the logits or the ``finite`` tensors.
    """
    named = {"student_logits": student_logits}
    if teacher_logits is not None:
        named["teacher_logits"] = teacher_logits
    for name, logits in named.items():
        if logits.ndim != 2:
            raise ValueError(
                f"{loss}: expected (B, C) logits, got shape {tuple(logits.shape)} for {name}"
            )
    shape = tuple(student_logits.shape)
    if teacher_logits is not None and tuple(teacher_logits.shape) != shape:
        raise ValueError(
            f"{loss}: student logits {shape} and teacher logits {tuple(teacher_logits.shape)} "
            "differ; student and teacher need the same batch and number of classes"
        )
    batch, classes = shape
    if classes < 2:
        raise ValueError(f"{loss} needs at least 2 classes, got logits of shape {shape}")
    if batch < min_batch:
        hint = (
            "; statistics over the batch need at least 2 samples (use drop_last=True in the "
            "DataLoader)"
            if min_batch > 1
            else ""
        )
        raise ValueError(
            f"{loss} needs a batch of at least {min_batch}, got logits of shape {shape}{hint}"
        )
    if (
        target.shape != (batch,)
        or target.is_floating_point()
        or target.is_complex()
        or target.dtype == torch.bool
    ):
        raise ValueError(
            f"{loss}: target must be integer class indices of shape ({batch},), got "
            f"{target.dtype} {tuple(target.shape)}"
        )
    named.update(finite or {})
    ok = ((target >= 0) & (target < classes)).all()
    for x in named.values():
        ok = ok & torch.isfinite(x).all()
    if not bool(ok):  # the one host sync; find what failed
        for name, x in named.items():
            _raise_if_not_finite(loss, name, x)
        raise ValueError(
            f"{loss}: target class indices must be in [0, {classes}) for logits with {classes} "
            f"classes, got values from {int(target.min())} to {int(target.max())}"
        )
    return target.long()
