"""Hinton knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
Network", 2015): the project's one KD baseline and its temperature-softened KL divergence.

``clkd`` and ``trg-kd`` both use :class:`KDLoss` with the one default weighting
:data:`KD_DEFAULTS` (``CE 1 + KD 1`` at ``T = 4``, the KL already ``T²``-scaled: Hinton's
reading, the CE weight shared with DKD and TRG so that comparisons run at one CE weight).
``clkd-train --method kd`` and ``trg-kd-train --method kd`` both train it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_logits_targets

__all__ = ["KD_DEFAULTS", "KDLoss", "kd_loss", "softened_kl_div"]

#: The project's one KD weighting: CE 1, KD 1 (the softened KL times T²), T 4.
KD_DEFAULTS = {"ce_weight": 1.0, "kd_weight": 1.0, "temperature": 4.0}


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


def _check_weights(ce_weight: float, kd_weight: float, temperature: float) -> None:
    if ce_weight < 0 or kd_weight < 0:
        raise ValueError(
            f"KD weights must be >= 0, got ce_weight={ce_weight}, kd_weight={kd_weight}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ce_weight: float,
    kd_weight: float,
    temperature: float,
) -> dict[str, torch.Tensor]:
    """Weighted KD terms for logits ``(B, C)`` and integer targets ``(B,)`` in ``[0, C)``.

    Inputs are checked by :func:`~lab_common.distill.check_logits_targets` (ValueError for
    bad shapes, NaN/inf logits, an empty batch, float or out-of-range targets).

    ``loss_ce = ce_weight · CE(z_s, y)`` and
    ``loss_kd = kd_weight · T² · mean_b KL(softmax(z_t/T) ‖ softmax(z_s/T))``, computed outside
    autocast in at least float32 (float64 stays float64), the teacher logits detached.
    """
    _check_weights(ce_weight, kd_weight, temperature)
    target = check_logits_targets(student_logits, teacher_logits, target, loss="kd_loss")
    loss_kd = kd_weight * softened_kl_div(student_logits, teacher_logits, temperature)
    s = student_logits.to(torch.promote_types(student_logits.dtype, torch.float32))
    with torch.autocast(s.device.type, enabled=False):
        loss_ce = ce_weight * F.cross_entropy(s, target)
    return {"loss_ce": loss_ce, "loss_kd": loss_kd}


class KDLoss(nn.Module):
    """:func:`kd_loss` as a Distiller loss; ``KDLoss()`` is :data:`KD_DEFAULTS` (CE 1, KD 1, T 4).

    ``forward(student_logits (B, C), teacher_logits (B, C), target (B,))`` returns
    ``{"loss_ce", "loss_kd"}``, already weighted; their sum is the training loss.
    """

    def __init__(
        self,
        *,
        ce_weight: float = KD_DEFAULTS["ce_weight"],
        kd_weight: float = KD_DEFAULTS["kd_weight"],
        temperature: float = KD_DEFAULTS["temperature"],
    ) -> None:
        super().__init__()
        _check_weights(ce_weight, kd_weight, temperature)
        self.ce_weight, self.kd_weight, self.temperature = ce_weight, kd_weight, temperature

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return kd_loss(
            student_logits,
            teacher_logits,
            target,
            ce_weight=self.ce_weight,
            kd_weight=self.kd_weight,
            temperature=self.temperature,
        )

    def extra_repr(self) -> str:
        return f"ce_weight={self.ce_weight}, kd_weight={self.kd_weight}, temperature={self.temperature}"
