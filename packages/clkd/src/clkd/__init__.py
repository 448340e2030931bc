"""CLKD: Class-aware Logit Knowledge Distillation — loss, DKD baseline and trainer.

Losses follow one contract: ``loss(student_logits (B, C), teacher_logits (B, C), target (B,))``
returns a dict of already weighted ``loss_*`` terms whose sum is the training loss; use them
with ``lab_common.distill.Distiller`` or in any training loop. The Hinton-KD baseline is
``lab_common.distill.KDLoss`` (``clkd-train --method kd`` passes CE 0.1, KD 0.9, T 4).
"""

from .clkd import (
    CLKDConfig,
    CLKDLoss,
    class_correlation_loss,
    class_correlation_matrix,
    class_loss,
    clkd_loss,
    instance_loss,
)
from .dkd import DKD_BETAS, DKDConfig, DKDLoss, dkd_beta_for, dkd_loss

__version__ = "0.2.0"

__all__ = [
    "DKD_BETAS",
    "CLKDConfig",
    "CLKDLoss",
    "DKDConfig",
    "DKDLoss",
    "class_correlation_loss",
    "class_correlation_matrix",
    "class_loss",
    "clkd_loss",
    "dkd_beta_for",
    "dkd_loss",
    "instance_loss",
]
