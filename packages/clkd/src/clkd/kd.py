"""Hinton knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
Network", 2015): cross-entropy plus the temperature-softened KL to the teacher."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lab_common import softened_kl_div

from ._validation import prepare_logits

__all__ = ["KDConfig", "KDLoss", "kd_loss"]


@dataclass(frozen=True)
class KDConfig:
    """Weights of the KD terms; defaults are mdistiller's CIFAR-100 KD settings."""

    ce_weight: float = 0.1
    kd_weight: float = 0.9
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.ce_weight < 0 or self.kd_weight < 0:
            raise ValueError(f"weights must be >= 0, got {self.ce_weight}, {self.kd_weight}")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ce_weight: float = 0.1,
    kd_weight: float = 0.9,
    temperature: float = 4.0,
) -> dict[str, torch.Tensor]:
    """Weighted KD terms for logits ``(B, C)`` and targets ``(B,)``.

    ``loss_ce = ce_weight · CE(z_s, y)``;
    ``loss_kd = kd_weight · T² · mean_b KL(softmax(z_t/T) ‖ softmax(z_s/T))``.
    """
    s, t = prepare_logits(student_logits, teacher_logits, target, min_batch=1, method="kd_loss")
    with torch.autocast(s.device.type, enabled=False):
        loss_ce = ce_weight * F.cross_entropy(s, target)
    return {"loss_ce": loss_ce, "loss_kd": kd_weight * softened_kl_div(s, t, temperature)}


class KDLoss(nn.Module):
    """:func:`kd_loss` as a module: ``KDLoss(temperature=4.0)`` or ``KDLoss(KDConfig(...))``."""

    def __init__(self, config: KDConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = replace(config or KDConfig(), **overrides)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return kd_loss(student_logits, teacher_logits, target, **asdict(self.config))

    def extra_repr(self) -> str:
        return repr(self.config)
