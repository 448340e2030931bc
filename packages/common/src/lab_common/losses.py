"""The temperature-softened KL divergence of Hinton-style distillation, shared by clkd and trg-kd."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["softened_kl_div"]


def softened_kl_div(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """``T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))`` summed over classes, averaged over rows.

    Args:
        student_logits: ``(B, C)`` student scores (each row a distribution over ``C``).
        teacher_logits: ``(B, C)`` teacher scores; detached.
        temperature: ``T > 0``; the ``T²`` factor keeps gradient magnitudes comparable across
            temperatures (Hinton et al., 2015).

    Returns:
        Scalar loss, computed outside autocast in at least float32.
    """
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(
            f"expected student and teacher logits of the same (B, C) shape, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # float16/bf16 -> float32
    with torch.autocast(student_logits.device.type, enabled=False):
        log_ps = F.log_softmax(student_logits.to(dtype) / temperature, dim=1)
        log_pt = F.log_softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
        kl = F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True)
    return temperature**2 * kl
