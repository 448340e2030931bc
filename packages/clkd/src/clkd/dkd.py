"""Decoupled knowledge distillation (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

KD split into a target-class term (TCKD: KL between the binary target / non-target
distributions) and a non-target term (NCKD: KL between the distributions over the non-target
classes), weighted by α and β, with a linear warm-up of both over the first epochs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._validation import prepare_logits

__all__ = ["DKD_BETAS", "DKDConfig", "DKDLoss", "dkd_beta_for", "dkd_loss"]

#: β of mdistiller's CIFAR-100 DKD configs (``configs/cifar100/dkd/*.yaml``; a config without
#: ``DKD.BETA`` uses mdistiller's default 8), teacher → student by zoo name. α is 1 and the CE
#: weight 1 in all of them. (mdistiller's ResNet50 → MobileNetV2, β 8, has no zoo teacher.)
DKD_BETAS: dict[tuple[str, str], float] = {
    ("cifar_resnet56", "cifar_resnet20"): 2.0,
    ("cifar_resnet110", "cifar_resnet32"): 2.0,
    ("cifar_resnet32x4", "cifar_resnet8x4"): 8.0,
    ("cifar_resnet32x4", "cifar_shufflenetv1"): 8.0,
    ("cifar_resnet32x4", "cifar_shufflenetv2"): 8.0,
    ("cifar_wrn_40_2", "cifar_wrn_16_2"): 6.0,
    ("cifar_wrn_40_2", "cifar_wrn_40_1"): 6.0,
    ("cifar_wrn_40_2", "cifar_shufflenetv1"): 8.0,
    ("cifar_vgg13", "cifar_vgg8"): 6.0,
    ("cifar_vgg13", "cifar_mobilenetv2"): 6.0,
}
#: pairs whose teacher and student are both ``cifar_resnet<depth>`` (16/32/64 wide) and not in
#: the table take the β of that family in mdistiller (resnet56→20, resnet110→32).
_THIN_RESNET_BETA = 2.0


def dkd_beta_for(teacher: str, student: str, default: float = 8.0) -> float:
    """β for a pair: :data:`DKD_BETAS`, else the pair's family, else ``default``.

    Thin CIFAR ResNet pairs (``cifar_resnet20`` → ``cifar_resnet8``, ...) take 2 like
    mdistiller's resnet56 → resnet20 and resnet110 → resnet32; anything else ``default`` (8, the
    value of most of mdistiller's pairs and of the DKD paper's ResNet32×4 → ResNet8×4).
    """
    if (teacher, student) in DKD_BETAS:
        return DKD_BETAS[teacher, student]
    thin = [
        name.startswith("cifar_resnet") and name.removeprefix("cifar_resnet").isdigit()
        for name in (teacher, student)
    ]
    return _THIN_RESNET_BETA if all(thin) else default


@dataclass(frozen=True)
class DKDConfig:
    """DKD weights; defaults are the paper's CIFAR-100 settings.

    β depends on the teacher → student pair in mdistiller's configs (2, 6 or 8): take it from
    :func:`dkd_beta_for` (``clkd-train --method dkd`` does when ``--dkd-beta`` is unset); the
    default 8 is that of most pairs (ResNet32×4 → ResNet8×4).
    """

    ce_weight: float = 1.0
    alpha: float = 1.0
    beta: float = 8.0
    temperature: float = 4.0
    warmup_epochs: int = 20

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if min(self.ce_weight, self.alpha, self.beta) < 0:
            raise ValueError(
                f"weights must be >= 0, got ce_weight={self.ce_weight}, alpha={self.alpha}, "
                f"beta={self.beta}"
            )
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ce_weight: float = 1.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    warmup_factor: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Weighted DKD terms for logits ``(B, C)`` and targets ``(B,)``.

    With ``p = softmax(z/T)``, ``b = (p_y, 1 − p_y)`` and ``p̂`` the softmax of ``z/T`` over the
    ``C − 1`` non-target classes: ``loss_tckd = w·α·T²·mean_b KL(b_t ‖ b_s)``,
    ``loss_nckd = w·β·T²·mean_b KL(p̂_t ‖ p̂_s)`` with ``w = warmup_factor``, and
    ``loss_ce = ce_weight · CE(z_s, y)``.
    """
    s, t, target = prepare_logits(
        student_logits, teacher_logits, target, min_batch=1, method="dkd_loss"
    )
    with torch.autocast(s.device.type, enabled=False):
        is_target = F.one_hot(target, s.shape[1]).bool()  # (B, C)
        tckd = _binary_kl(t / temperature, s / temperature, is_target)
        b, c = s.shape
        s_rest = s[~is_target].view(b, c - 1) / temperature
        t_rest = t[~is_target].view(b, c - 1) / temperature
        nckd = F.kl_div(
            F.log_softmax(s_rest, 1),
            F.log_softmax(t_rest, 1),
            reduction="batchmean",
            log_target=True,
        )
        scale = warmup_factor * temperature**2
        return {
            "loss_ce": ce_weight * F.cross_entropy(s, target),
            "loss_tckd": scale * alpha * tckd,
            "loss_nckd": scale * beta * nckd,
        }


def _binary_kl(t: torch.Tensor, s: torch.Tensor, is_target: torch.Tensor) -> torch.Tensor:
    """Mean KL between the (target, rest) probability pairs of ``softmax(t)`` and ``softmax(s)``."""

    def log_pair(z: torch.Tensor) -> torch.Tensor:  # (B, 2): log p_y, log(1 - p_y), stably
        b = z.shape[0]
        rest = torch.logsumexp(z[~is_target].view(b, -1), dim=1)
        return F.log_softmax(torch.stack([z[is_target], rest], dim=1), dim=1)

    return F.kl_div(log_pair(s), log_pair(t), reduction="batchmean", log_target=True)


class DKDLoss(nn.Module):
    """:func:`dkd_loss` as a module with the epoch warm-up.

    Call :meth:`set_epoch` at the start of every epoch (``Distiller.set_epoch`` and the
    ``lab_common.distill`` engine do); the distillation terms are scaled by
    ``min((epoch + 1) / warmup_epochs, 1)``. Before the first call the factor is 1.
    """

    def __init__(self, config: DKDConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = replace(config or DKDConfig(), **overrides)
        self.epoch: int | None = None

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """``epoch`` is 0-based; ``num_epochs`` is unused (warm-up is in absolute epochs)."""
        self.epoch = epoch

    @property
    def warmup_factor(self) -> float:
        if self.epoch is None or self.config.warmup_epochs == 0:
            return 1.0
        return min((self.epoch + 1) / self.config.warmup_epochs, 1.0)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        kwargs = asdict(self.config)
        del kwargs["warmup_epochs"]
        return dkd_loss(
            student_logits, teacher_logits, target, warmup_factor=self.warmup_factor, **kwargs
        )

    def extra_repr(self) -> str:
        return f"{self.config!r}, epoch={self.epoch}"
