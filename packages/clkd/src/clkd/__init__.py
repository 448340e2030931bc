"""CLKD: Class-aware Logit Knowledge Distillation — loss, baselines (KD, DKD) and trainer.

Losses follow one contract: ``loss(student_logits (B, C), teacher_logits (B, C), target (B,))``
returns a dict of already weighted ``loss_*`` terms whose sum is the training loss; use them
with ``lab_common.distiller.Distiller`` or in any training loop.
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
from .dkd import DKDConfig, DKDLoss, dkd_loss
from .kd import KDConfig, KDLoss, kd_loss

__version__ = "0.2.0"

__all__ = [
    "CLKDConfig",
    "CLKDLoss",
    "DKDConfig",
    "DKDLoss",
    "KDConfig",
    "KDLoss",
    "class_correlation_loss",
    "class_correlation_matrix",
    "class_loss",
    "clkd_loss",
    "dkd_loss",
    "instance_loss",
    "kd_loss",
]
