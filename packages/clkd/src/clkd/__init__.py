"""CLKD: Class-aware Logit Knowledge Distillation — loss, DKD baseline and trainer.

Losses follow one contract: ``loss(student_logits (B, C), teacher_logits (B, C), target (B,))``
returns a dict of already weighted ``loss_*`` terms whose sum is the training loss; use them
with ``lab_common.distill.Distiller`` or in any training loop. The Hinton-KD baseline is
``lab_common.distill.KDLoss`` at the project's one weighting, CE 1 + KD 1 at T 4
(``lab_common.distill.kd.KD_DEFAULTS``); every default here uses CE weight 1 as well.
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

__version__ = "0.3.0"

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
