"""``clkd-train`` / ``python -m clkd.train``: train (or load) a teacher, then distil a student.

The library entry point is :func:`train`, which takes a frozen :class:`TrainConfig` (the
shared :class:`lab_common.distill.DistillConfig` plus ``method`` and the loss weights); the
command line only builds that config::

    from clkd.train import TrainConfig, train
    result = train(TrainConfig(dataset="cifar100", method="dkd", out="runs/dkd", epochs=240))

Examples::

    # the CIFAR-100 protocol (240 epochs), resnet32x4 -> resnet8x4 with CLKD
    clkd-train --dataset cifar100 --data-root ~/data --teacher cifar_resnet32x4 \\
        --student cifar_resnet8x4 --method clkd --out runs/r32x4_r8x4_clkd
    # two processes on one machine: --batch-size is per process (2 × 64 images a step)
    torchrun --nproc-per-node 2 -m clkd.train --method dkd ...

Shared options (data, models, schedule, AMP, resume, DDP) come from
:func:`lab_common.distill.add_distill_arguments`; this module adds ``--method`` and the loss
hyperparameters. Unset weights (None) take each method's defaults: CLKD and DKD from
:class:`~clkd.CLKDConfig` / :class:`~clkd.DKDConfig`, KD from :data:`KD_DEFAULTS`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from lab_common.cli import (
    HelpFormatter,
    config_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    run_console,
)
from lab_common.distill import (
    DistillConfig,
    DistillDatasets,
    DistillResult,
    KDLoss,
    add_distill_arguments,
    distill_main,
    run_distillation,
)
from lab_common.distill.kd import KD_DEFAULTS  # --method kd when unset: CE 1, KD 1, T 4

from .clkd import CLKDConfig, CLKDLoss
from .dkd import DKDConfig, DKDLoss, dkd_beta_for

__all__ = [
    "KD_DEFAULTS",
    "METHODS",
    "TrainConfig",
    "build_parser",
    "cli",
    "main",
    "make_loss",
    "parse_config",
    "train",
]

METHODS = ("ce", "kd", "dkd", "clkd")
Method = Literal["ce", "kd", "dkd", "clkd"]


@dataclass(frozen=True)
class TrainConfig(DistillConfig):
    """A ``clkd-train`` run: :class:`~lab_common.distill.DistillConfig` plus the method.

    Attributes:
        method: ``ce`` (student alone), ``kd`` (Hinton KD), ``dkd`` (decoupled KD) or ``clkd``.
        ce_weight, temperature: shared by the methods (None: the method's default).
        clkd_variant, clkd_correlation, clkd_correlation_axis, clkd_reduction, logit_weight,
            class_weight, correlation_weight: CLKD's ``variant``, ``correlation``,
            ``correlation_axis``, ``reduction``, μ, β, ν.
        kd_weight: KD's weight of the softened KL (None: 1, :data:`KD_DEFAULTS`).
        dkd_alpha, dkd_beta, dkd_warmup: DKD's α, β and warm-up epochs.
    """

    method: Method = "clkd"
    ce_weight: float | None = None
    temperature: float | None = None
    clkd_variant: Literal["mse", "softmax"] = "mse"
    clkd_correlation: Literal["pearson", "covariance"] = "pearson"
    clkd_correlation_axis: Literal["class", "batch"] = "class"
    clkd_reduction: Literal["batchmean", "mean"] = "batchmean"
    logit_weight: float | None = None
    class_weight: float | None = None
    correlation_weight: float | None = None
    kd_weight: float | None = None
    dkd_alpha: float | None = None
    dkd_beta: float | None = None
    dkd_warmup: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; use one of {METHODS}")
        choices = {
            "clkd_variant": ("mse", "softmax"),
            "clkd_correlation": ("pearson", "covariance"),
            "clkd_correlation_axis": ("class", "batch"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        weights = ("ce_weight", "logit_weight", "class_weight", "correlation_weight")
        weights += ("kd_weight", "dkd_alpha", "dkd_beta", "dkd_warmup")
        for name in weights:
            value = getattr(self, name)
            if value is not None and value < 0:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{name} ({flag}) must be >= 0, got {value}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature (--temperature) must be > 0, got {self.temperature}")


# config field of each loss config -> TrainConfig field
_SHARED = {"ce_weight": "ce_weight", "temperature": "temperature"}
_OPTIONS = {
    "kd": {"kd_weight": "kd_weight"},
    "dkd": {"alpha": "dkd_alpha", "beta": "dkd_beta", "warmup_epochs": "dkd_warmup"},
    "clkd": {
        "variant": "clkd_variant",
        "correlation": "clkd_correlation",
        "correlation_axis": "clkd_correlation_axis",
        "reduction": "clkd_reduction",
        "logit_weight": "logit_weight",
        "class_weight": "class_weight",
        "correlation_weight": "correlation_weight",
    },
}


def make_loss(config: TrainConfig, num_classes: int) -> nn.Module | None:
    """The loss module for ``config.method`` (None for ``ce``: the student trains alone).

    Weights left unset (None) take the method's own defaults.
    """
    if config.method == "ce":
        return None
    chosen = {
        field: getattr(config, name)
        for field, name in {**_SHARED, **_OPTIONS[config.method]}.items()
        if getattr(config, name) is not None
    }
    if config.method == "kd":
        return KDLoss(**{**KD_DEFAULTS, **chosen})
    if config.method == "dkd":
        chosen.setdefault("beta", dkd_beta_for(config.teacher, config.student))
        return DKDLoss(DKDConfig(**chosen))
    return CLKDLoss(CLKDConfig(**chosen))


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changed: Sequence[str] = (),
    datasets: DistillDatasets | None = None,
) -> DistillResult:
    """Train (or load) the teacher, then distil the student with ``config.method``.

    ``resume`` continues exactly from the checkpoints in ``config.out``, refusing settings
    that differ from theirs unless ``allow_changed`` names them; a fresh run refuses a
    non-empty ``config.out`` unless ``overwrite`` (``--resume``, ``--allow-changed``,
    ``--overwrite``). ``datasets = (train, test, num_classes, in_chans)`` replaces loading
    ``config.dataset``. Outputs go to ``config.out`` (see
    :func:`lab_common.distill.run_distillation`).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a clkd.train.TrainConfig, got {type(config).__name__}")
    return run_distillation(
        config,
        lambda k: make_loss(config, k),
        resume=resume,
        overwrite=overwrite,
        allow_changed=allow_changed,
        datasets=datasets,
    )


def build_parser() -> argparse.ArgumentParser:
    """The shared distillation options plus ``--method`` and the CLKD / KD / DKD weights."""
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="clkd-train",
        description="Class-aware logit knowledge distillation (CLKD) and KD/DKD baselines.",
        formatter_class=HelpFormatter,
    )
    add_distill_arguments(p, TrainConfig())
    g = p.add_argument_group("method (unset weights take each method's defaults)")
    g.add_argument(
        "--method",
        choices=METHODS,
        default="clkd",
        help="ce = student alone; kd = Hinton KD; dkd = decoupled KD; clkd",
    )
    g.add_argument(
        "--ce-weight",
        type=non_negative_float,
        default=None,
        help="CE weight (if unset: 1 for every method)",
    )
    g.add_argument(
        "--temperature", type=positive_float, default=None, help="softmax temperature (if unset: 4)"
    )
    g.add_argument("--clkd-variant", choices=("mse", "softmax"), default="mse")
    g.add_argument("--clkd-reduction", choices=("batchmean", "mean"), default="batchmean")
    g.add_argument(
        "--clkd-correlation",
        choices=("pearson", "covariance"),
        default="pearson",
        help="CLKD class-correlation matrix (covariance = literal reconstruction, unstable)",
    )
    g.add_argument(
        "--clkd-correlation-axis",
        choices=("class", "batch"),
        default="class",
        help="CLKD correlation over the classes (C x C) or over the batch (B x B)",
    )
    weights = {
        "--logit-weight": "CLKD μ (if unset: 0.5)",
        "--class-weight": "CLKD β (if unset: 1)",
        "--correlation-weight": "CLKD ν (if unset: 0.4)",
        "--kd-weight": "KD weight (if unset: 1)",
        "--dkd-alpha": "DKD α (if unset: 1)",
        "--dkd-beta": "DKD β (if unset: the pair's, clkd.DKD_BETAS; else 8)",
    }
    for option, help_text in weights.items():
        g.add_argument(option, type=non_negative_float, default=None, help=help_text)
    g.add_argument(
        "--dkd-warmup",
        type=non_negative_int,
        default=None,
        help="DKD warm-up epochs (if unset: 20)",
    )
    return p


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` that the command line ``argv`` (default ``sys.argv[1:]``) describes."""
    return config_from_args(TrainConfig, build_parser().parse_args(argv))


def main(argv: Sequence[str] | None = None) -> DistillResult:
    """Parse ``argv`` and :func:`train`, print the summary line; returns the engine's result."""
    return distill_main("clkd-train", build_parser(), TrainConfig, train, argv)


def cli() -> int:
    """Console-script entry point (``clkd-train``): exit status 0 on success."""
    return run_console(main, prog="clkd-train")


if __name__ == "__main__":
    raise SystemExit(cli())
