"""Small shared utilities for the lavit, clkd, trg-kd and gp-maml packages.

Only what at least two of those packages need: seeding, device/autocast selection,
accuracy and confidence intervals, benchmark timing and tables, metrics logging,
atomic checkpoints, torch.distributed helpers, dataset location, the softened KL of
distillation, the teacher-student ``Distiller`` and (``lab_common.zoo``) the CIFAR
distillation model zoo.
"""

from .benchmarking import Measurement, machine_description, markdown_table, measure, write_benchmark
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .datasets import (
    DATASET_NAMES,
    build_image_dataset,
    cache_dir,
    dataset_num_classes,
    load_fashion_mnist_tensors,
    shared_datasets_root,
)
from .device import autocast, resolve_device
from .distiller import Distiller, features_and_logits
from .distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    is_main_process,
)
from .logging import MetricsLogger, plot_metrics, progress, read_metrics
from .losses import softened_kl_div
from .metrics import mean_confidence_interval, topk_accuracy
from .seeding import seed_everything

__version__ = "0.2.0"

__all__ = [
    "CheckpointError",
    "DATASET_NAMES",
    "Distiller",
    "DistContext",
    "Measurement",
    "MetricsLogger",
    "all_reduce_mean",
    "autocast",
    "barrier",
    "build_image_dataset",
    "cache_dir",
    "cleanup_distributed",
    "dataset_num_classes",
    "features_and_logits",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "load_fashion_mnist_tensors",
    "machine_description",
    "markdown_table",
    "mean_confidence_interval",
    "measure",
    "plot_metrics",
    "progress",
    "read_metrics",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "shared_datasets_root",
    "softened_kl_div",
    "topk_accuracy",
    "write_benchmark",
]
