"""``python -m clkd.train`` / ``clkd-train``: train (or load) a teacher, then distil a student.

Examples::

    # the CIFAR-100 protocol (240 epochs), resnet32x4 -> resnet8x4 with CLKD
    clkd-train --dataset cifar100 --data-root ~/data --teacher cifar_resnet32x4 \\
        --student cifar_resnet8x4 --method clkd --out-dir runs/r32x4_r8x4_clkd
    # two processes on one machine
    torchrun --nproc-per-node 2 -m clkd.train --method dkd ...

Shared options (data, models, schedule, AMP, resume, DDP) come from
``lab_common.distill_training``; this module adds ``--method`` and the loss hyperparameters.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from torch import nn

from lab_common.distill_training import DistillResult, build_parser, run_distillation

from .clkd import CLKDConfig, CLKDLoss
from .dkd import DKDConfig, DKDLoss
from .kd import KDConfig, KDLoss

__all__ = ["METHODS", "build_arg_parser", "main", "make_loss", "run"]

METHODS = ("ce", "kd", "dkd", "clkd")


def build_arg_parser() -> argparse.ArgumentParser:
    """The shared distillation options plus ``--method`` and the CLKD / KD / DKD weights."""
    p = build_parser("Class-aware logit knowledge distillation (CLKD) and KD/DKD baselines.")
    g = p.add_argument_group("method (unset weights take each method's defaults)")
    g.add_argument(
        "--method",
        choices=METHODS,
        default="clkd",
        help="ce = student alone; kd = Hinton KD; dkd = decoupled KD; clkd",
    )
    g.add_argument(
        "--ce-weight",
        type=float,
        default=None,
        help="CE weight (if unset: clkd 0.1, kd 0.1, dkd 1.0)",
    )
    g.add_argument(
        "--temperature", type=float, default=None, help="softmax temperature (if unset: 4)"
    )
    g.add_argument("--clkd-variant", choices=("mse", "softmax"), default="mse")
    g.add_argument(
        "--clkd-correlation",
        choices=("pearson", "covariance"),
        default="pearson",
        help="CLKD class-correlation matrix (covariance = literal reconstruction, unstable)",
    )
    g.add_argument("--logit-weight", type=float, default=None, help="CLKD μ (if unset: 0.5)")
    g.add_argument("--class-weight", type=float, default=None, help="CLKD β (if unset: 1)")
    g.add_argument("--correlation-weight", type=float, default=None, help="CLKD ν (if unset: 0.4)")
    g.add_argument("--kd-weight", type=float, default=None, help="KD weight (if unset: 0.9)")
    g.add_argument("--dkd-alpha", type=float, default=None, help="DKD α (if unset: 1)")
    g.add_argument("--dkd-beta", type=float, default=None, help="DKD β (if unset: 8)")
    g.add_argument("--dkd-warmup", type=int, default=None, help="DKD warm-up epochs (if unset: 20)")
    return p  # fmt: skip


# method -> (loss class, config class, {config field: command-line option})
_LOSSES = {
    "kd": (KDLoss, KDConfig, {"kd_weight": "kd_weight"}),
    "dkd": (DKDLoss, DKDConfig, {"alpha": "dkd_alpha", "beta": "dkd_beta", "warmup_epochs": "dkd_warmup"}),
    "clkd": (
        CLKDLoss,
        CLKDConfig,
        {"variant": "clkd_variant", "logit_weight": "logit_weight", "class_weight": "class_weight",
         "correlation_weight": "correlation_weight", "correlation": "clkd_correlation"},
    ),
}  # fmt: skip
_SHARED = {"ce_weight": "ce_weight", "temperature": "temperature"}


def make_loss(args: argparse.Namespace, num_classes: int) -> nn.Module | None:
    """The loss module for ``args.method`` (None for ``ce``: the student trains alone).

    Options left unset (None) take the method's own defaults (its config dataclass).
    """
    if args.method == "ce":
        return None
    if args.method not in _LOSSES:
        raise ValueError(f"unknown --method {args.method!r}; use one of {METHODS}")
    loss_cls, config_cls, options = _LOSSES[args.method]
    chosen = {
        field: getattr(args, dest)
        for field, dest in {**_SHARED, **options}.items()
        if getattr(args, dest) is not None
    }
    return loss_cls(config_cls(**chosen))


def run(argv: Sequence[str] | None = None) -> DistillResult:
    """Parse ``argv`` (default ``sys.argv[1:]``), train, and return the result."""
    return run_distillation(build_arg_parser().parse_args(argv), make_loss)


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``clkd-train``): :func:`run`, exit status 0."""
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
