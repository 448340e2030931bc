"""TRG: Knowledge Distillation via Token-level Relationship Graph — losses, token extraction and trainer.

The Hinton-KD baseline is ``lab_common.distill.KDLoss`` (``trg-kd-train --method kd`` passes
CE 1, KD λ = ``kd_weight``, T = ``kd_temperature``: at the defaults λ = 1, T = 4 this is the
project's one KD weighting ``lab_common.distill.kd.KD_DEFAULTS``, the same loss as
``clkd-train --method kd``).
"""

from lab_common.data.longtail import (  # the long-tailed data and splits, shared with clkd
    longtail_counts,
    longtail_indices,
    longtail_subset,
    shot_splits,
    split_accuracy,
)
from trg_kd.contextual import contextual_loss, token_self_similarity
from trg_kd.contrastive import TemperatureSchedule, global_relation_loss
from trg_kd.extraction import TokenExtractor
from trg_kd.graph import TokenGraph, gaussian_kernel, knn_graph
from trg_kd.local import local_preserving_loss
from trg_kd.tokens import (
    TokenProjector,
    align_token_grids,
    drop_prefix_tokens,
    sample_token_index,
    to_tokens,
)
from trg_kd.trg import TRGConfig, TRGLoss
from trg_kd.visualize import plot_tsne

__version__ = "0.3.0"

__all__ = [
    "TRGConfig",
    "TRGLoss",
    "TemperatureSchedule",
    "TokenExtractor",
    "TokenGraph",
    "TokenProjector",
    "align_token_grids",
    "contextual_loss",
    "drop_prefix_tokens",
    "gaussian_kernel",
    "global_relation_loss",
    "knn_graph",
    "local_preserving_loss",
    "longtail_counts",
    "longtail_indices",
    "longtail_subset",
    "plot_tsne",
    "sample_token_index",
    "shot_splits",
    "split_accuracy",
    "to_tokens",
    "token_self_similarity",
]
