"""The distillation layer (``pip install 'lab-common[distill]'``: timm, torchvision).

What ``clkd`` and ``trg-kd`` share, one job per module:

- :mod:`~lab_common.distill.config`: :class:`DistillConfig` (a frozen dataclass: data,
  models, optimisation and run fields) and :func:`add_distill_arguments` (its options);
- :mod:`~lab_common.distill.data`: :func:`build_datasets`, :class:`TensorImageDataset`;
- :mod:`~lab_common.distill.models`: :func:`create_model` (zoo or timm), :data:`ZOO_HINT`,
  :func:`default_lr`;
- :mod:`~lab_common.distill.distiller`: :class:`Distiller` (student + frozen teacher + loss),
  :class:`SupervisedModel` (cross-entropy with the same call signature);
- :mod:`~lab_common.distill.teacher_cache`: :class:`TeacherCache` (the teacher's outputs for
  K fixed views of every training image, ``--teacher-cache K``), :class:`CachedViews`;
- :mod:`~lab_common.distill.evaluate`: :func:`evaluate`;
- :mod:`~lab_common.distill.engine`: :func:`run_distillation` (teacher caching, the training
  loop, DDP, exact resume), :class:`DistillResult` and :func:`distill_main` (a method
  package's command line: parse, train, print the summary line);
- :mod:`~lab_common.distill.checks`: :func:`check_logits_targets`, the input check of every
  loss that takes logits and class targets;
- :mod:`~lab_common.distill.kd`: the one Hinton-KD baseline :class:`KDLoss` / :func:`kd_loss`
  and :func:`softened_kl_div`;
- :mod:`~lab_common.distill.zoo`: the CIFAR model zoo, registered with timm as ``cifar_*``
  when this package is imported.
"""

from . import zoo
from .checks import check_logits_targets
from .config import DistillConfig, add_distill_arguments, default_milestones
from .data import DistillDatasets, SeededSamples, TensorImageDataset, build_datasets
from .distiller import Distiller, FeatureFn, SupervisedModel, features_and_logits
from .engine import RUN_ONLY_SETTINGS, DistillResult, LossFactory, distill_main, run_distillation
from .evaluate import evaluate
from .kd import KDLoss, kd_loss, softened_kl_div
from .models import ZOO_HINT, create_model, default_lr
from .teacher_cache import CachedViews, CacheError, TeacherCache

__all__ = [
    "ZOO_HINT",
    "CacheError",
    "CachedViews",
    "DistillConfig",
    "DistillDatasets",
    "DistillResult",
    "Distiller",
    "FeatureFn",
    "KDLoss",
    "LossFactory",
    "RUN_ONLY_SETTINGS",
    "SeededSamples",
    "SupervisedModel",
    "TeacherCache",
    "TensorImageDataset",
    "add_distill_arguments",
    "build_datasets",
    "check_logits_targets",
    "create_model",
    "default_lr",
    "default_milestones",
    "evaluate",
    "features_and_logits",
    "kd_loss",
    "distill_main",
    "run_distillation",
    "softened_kl_div",
    "zoo",
]
