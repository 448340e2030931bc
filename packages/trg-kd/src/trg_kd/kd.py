"""Hinton knowledge distillation on logits."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lab_common import softened_kl_div

__all__ = ["KDLoss", "kd_loss"]


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    """``T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))`` averaged over the batch.

    Args:
        student_logits: ``(B, C)``.
        teacher_logits: ``(B, C)``; detached.
        temperature: ``T > 0``.
    """
    return softened_kl_div(student_logits, teacher_logits, temperature)


class KDLoss(nn.Module):
    """``ce_weight·CE + kd_weight·KD`` as a Distiller loss returning ``{"loss_ce", "loss_kd"}``.

    The logit-only baseline of :class:`~trg_kd.TRGLoss` (same terms with α = β = γ = 0, without
    running the feature extraction).
    """

    def __init__(self, ce_weight: float = 1.0, kd_weight: float = 1.0, temperature: float = 4.0):
        super().__init__()
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        s, t = student_logits.float(), teacher_logits.float()
        return {
            "loss_ce": self.ce_weight * F.cross_entropy(s, target),
            "loss_kd": self.kd_weight * kd_loss(s, t, self.temperature),
        }
