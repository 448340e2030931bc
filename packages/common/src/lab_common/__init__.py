"""Small shared utilities for the lavit, clkd, trg-kd and gp-maml packages.

The core (this package; torch, numpy and scipy only): seeding, device/autocast selection,
accuracy and confidence intervals, benchmark timing and tables, metrics logging and progress,
atomic checkpoints, torch.distributed helpers, dataset and cache locations. Layers on top:
:mod:`lab_common.cli` (the trainer dialect and run-folder rules), :mod:`lab_common.testing`
(pytest conventions), :mod:`lab_common.data` (image-dataset readers; extra ``vision``) and
:mod:`lab_common.distill` (the distillation engine, ``Distiller``, the KD baseline and the
CIFAR zoo; extra ``distill``).
"""

from __future__ import annotations

from .benchmarking import (
    Measurement,
    machine_description,
    markdown_table,
    measure,
    measure_interleaved,
    write_benchmark,
)
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .device import autocast, resolve_device
from .distributed import (
    DistContext,
    all_reduce_mean,
    average_gradients,
    barrier,
    cleanup_distributed,
    init_distributed,
    is_main_process,
)
from .logging import MetricsLogger, plot_metrics, progress, read_metrics
from .metrics import mean_confidence_interval, topk_accuracy
from .paths import cache_dir, shared_datasets_root
from .seeding import get_rng_state, seed_everything, set_rng_state

__version__ = "0.3.0"

__all__ = [
    "CheckpointError",
    "DistContext",
    "Measurement",
    "MetricsLogger",
    "all_reduce_mean",
    "autocast",
    "average_gradients",
    "barrier",
    "cache_dir",
    "cleanup_distributed",
    "get_rng_state",
    "init_distributed",
    "is_main_process",
    "load_checkpoint",
    "machine_description",
    "markdown_table",
    "mean_confidence_interval",
    "measure",
    "measure_interleaved",
    "plot_metrics",
    "progress",
    "read_metrics",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
    "shared_datasets_root",
    "topk_accuracy",
    "write_benchmark",
]
