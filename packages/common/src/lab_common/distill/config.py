"""The settings of a distillation run: one frozen dataclass, and the options that build it.

:class:`DistillConfig` holds the data, model, optimisation and run fields the engine
(:func:`lab_common.distill.run_distillation`) reads; a method package subclasses it with its
loss fields (``clkd.train.TrainConfig``, ``trg_kd.train.TrainConfig``). ``asdict(config)`` is
saved in every checkpoint. :func:`add_distill_arguments` adds the matching command-line
options (the shared trainer dialect of :mod:`lab_common.cli` plus the distillation ones), so a
console script only does ``config_from_args(TrainConfig, parser.parse_args(argv))``.

Defaults are the mdistiller/CRD CIFAR protocol: SGD lr 0.05 (0.01 for MobileNet/ShuffleNet
students), momentum 0.9, weight decay 5e-4, batch 64 per process, 240 epochs with the lr
×0.1 at epochs 150/180/210 (scaled to ``epochs`` when ``milestones`` is None).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass

from ..cli import (
    add_run_arguments,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

__all__ = [
    "PROTOCOL_EPOCHS",
    "PROTOCOL_MILESTONES",
    "SCHEDULES",
    "DistillConfig",
    "add_distill_arguments",
    "default_milestones",
]

PROTOCOL_EPOCHS = 240
PROTOCOL_MILESTONES = (150, 180, 210)
#: Learning-rate schedules of a phase: the protocol's step drops, or cosine decay to 0.
SCHEDULES = ("step", "cosine")


def default_milestones(epochs: int) -> list[int]:
    """The protocol's 150/180/210-of-240 learning-rate drops scaled to ``epochs``."""
    return sorted({max(1, round(m * epochs / PROTOCOL_EPOCHS)) for m in PROTOCOL_MILESTONES})


@dataclass(frozen=True)
class DistillConfig:
    """A teacher→student distillation run (paths may be given as ``os.PathLike``; kept as str).

    Data:
        dataset: ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100`` or the path of an
            image folder with ``train/`` and ``val/`` class sub-folders.
        data_root: folder holding the named dataset (None: the shared datasets folder).
        image_size: input size for image folders (the named datasets keep their own).
        train_subset / test_subset: use N images (a fixed draw from ``subset_seed``).
        imbalance_ratio: ρ = n_max / n_min of a long-tailed training set drawn from the
            training split (Cao et al. 2019 profile; None: balanced); ``lt_n_max`` images of
            the largest class (None: the smallest class size); the evaluation then adds the
            accuracy over the many- (> ``many_shot`` training images), medium- and few-shot
            (< ``few_shot``) classes.
        download: fetch a missing named dataset with torchvision (into ``data_root``).
        val_images: hold out N class-balanced training images (a fixed draw from
            ``val_seed``) and evaluate on them instead of the test split, which is then not
            read (choose settings on this split, never on the test split). None: the test split.
        workers: DataLoader worker processes per training process.
    Models:
        teacher / student: zoo (``cifar_*``) or any timm model name.
        teacher_checkpoint: load the teacher from this file if it exists, else train it and
            save it here (None: ``<out>/teacher.pt``).
        teacher_epochs / teacher_lr: the teacher's cross-entropy training (epochs None:
            ``epochs``).
    Optimisation:
        epochs, batch_size (per process: a ``torchrun`` job of P processes takes
        ``P × batch_size`` images a step), lr (None: 0.05, or 0.01 for MobileNet/ShuffleNet
        students), momentum, weight_decay, milestones (epochs where lr ×= ``lr_decay``; None:
        the protocol's, scaled to ``epochs``), schedule (``step``: those drops; ``cosine``:
        cosine decay from ``lr`` to 0 over the phase's epochs, stepped per epoch), amp
        (autocast: bf16 on CPU, fp16 on CUDA), channels_last (teacher, student and input
        batches in channels-last memory layout: faster convolutions on CPUs and tensor-core
        GPUs, the same numbers up to rounding).
        teacher_cache: K > 0 computes the teacher's outputs once for K augmented views of every
        training image (:class:`~lab_common.distill.TeacherCache`, stored beside the teacher
        checkpoint) and lets each student epoch read them for one view per image instead of
        running the teacher; 0 runs the teacher live on every batch.
    Run:
        out: output folder; stop_after: run at most N epochs of each phase in this call (e.g.
        a job time limit; continue with ``resume=True``); seed; deterministic (deterministic
        torch kernels); device; progress. How a run is started (``resume``, ``overwrite``,
        ``allow_changed``) is not a setting of the run: those are keyword arguments of
        :func:`~lab_common.distill.run_distillation` (``--resume``, ``--overwrite``,
        ``--allow-changed``).
    """

    dataset: str = "cifar100"
    data_root: str | None = None
    image_size: int = 32
    train_subset: int | None = None
    test_subset: int | None = None
    subset_seed: int = 0
    val_images: int | None = None
    val_seed: int = 0
    download: bool = False
    imbalance_ratio: float | None = None
    lt_n_max: int | None = None
    many_shot: int = 100
    few_shot: int = 20
    workers: int = 2
    teacher: str = "cifar_resnet32x4"
    student: str = "cifar_resnet8x4"
    teacher_checkpoint: str | None = None
    teacher_epochs: int | None = None
    teacher_lr: float = 0.05
    epochs: int = PROTOCOL_EPOCHS
    batch_size: int = 64
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] | None = None
    lr_decay: float = 0.1
    schedule: str = "step"
    teacher_cache: int = 0
    amp: bool = False
    channels_last: bool = False
    out: str = "runs/distill"
    stop_after: int | None = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("data_root", "teacher_checkpoint", "out"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, os.fspath(value))
        if self.milestones is not None:
            object.__setattr__(self, "milestones", tuple(self.milestones))
            if any(not isinstance(m, int) or m < 1 for m in self.milestones):
                raise ValueError(f"milestones must be epochs >= 1, got {self.milestones}")
        at_least_one = ("image_size", "epochs", "batch_size")
        at_least_one += ("train_subset", "test_subset", "teacher_epochs", "stop_after")
        at_least_one += ("val_images", "lt_n_max")
        for name in at_least_one:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.imbalance_ratio is not None and self.imbalance_ratio < 1:
            raise ValueError(
                f"imbalance_ratio (--imbalance-ratio) must be >= 1 (n_max / n_min), got "
                f"{self.imbalance_ratio}"
            )
        if not 0 <= self.few_shot <= self.many_shot:
            raise ValueError(
                f"need 0 <= few_shot <= many_shot (--few-shot, --many-shot), got "
                f"{self.few_shot} and {self.many_shot}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        names = ("workers", "seed", "subset_seed", "val_seed", "momentum", "weight_decay")
        for name in (*names, "teacher_cache"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "teacher_lr", "lr_decay"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")


def add_distill_arguments(
    parser: argparse.ArgumentParser, defaults: DistillConfig
) -> argparse.ArgumentParser:
    """Add the options of every :class:`DistillConfig` field to ``parser``, defaults from ``defaults``.

    The shared run options come from :func:`lab_common.cli.add_run_arguments` (``--out``,
    ``--resume``, ``--overwrite``, ``--allow-changed``, ``--epochs``, ``--batch-size``,
    ``--seed``, ``--device``, ``--amp``, ``--workers``, ``--no-progress``, ``--data-root``).
    ``--resume``,
    ``--overwrite`` and ``--allow-changed`` are no config fields: pass them to the trainer as
    keyword arguments. Returns ``parser``.
    """
    if not isinstance(defaults, DistillConfig):
        raise TypeError(f"defaults must be a DistillConfig, got {type(defaults).__name__}")
    d = parser.add_argument_group("data")
    d.add_argument(
        "--dataset",
        default=defaults.dataset,
        help="fashion-mnist, mnist, cifar10, cifar100, or an image folder with train/ and val/",
    )
    d.add_argument(
        "--image-size", type=positive_int, default=defaults.image_size, help="for image folders"
    )
    d.add_argument(
        "--train-subset", type=positive_int, default=defaults.train_subset, help="N training images"
    )
    d.add_argument(
        "--test-subset", type=positive_int, default=defaults.test_subset, help="N test images"
    )
    d.add_argument("--subset-seed", type=non_negative_int, default=defaults.subset_seed)
    d.add_argument(
        "--val-images",
        type=positive_int,
        default=defaults.val_images,
        help="hold out N class-balanced training images as the evaluation split (the test "
        "split is then not read); unset: evaluate on the test split",
    )
    d.add_argument(
        "--val-seed", type=non_negative_int, default=defaults.val_seed, help="of --val-images"
    )
    lt = parser.add_argument_group("long-tailed training set (Cao et al. 2019 profile)")
    lt.add_argument(
        "--imbalance-ratio",
        type=positive_float,
        default=defaults.imbalance_ratio,
        help="ρ = n_max / n_min; off when not given",
    )
    lt.add_argument(
        "--lt-n-max",
        type=positive_int,
        default=defaults.lt_n_max,
        help="images of the largest class (default: smallest class size)",
    )
    lt.add_argument(
        "--many-shot",
        type=non_negative_int,
        default=defaults.many_shot,
        help="many-shot: > this many images",
    )
    lt.add_argument(
        "--few-shot",
        type=non_negative_int,
        default=defaults.few_shot,
        help="few-shot: < this many images",
    )
    m = parser.add_argument_group("models")
    m.add_argument("--teacher", default=defaults.teacher, help="zoo (cifar_*) or any timm model")
    m.add_argument("--student", default=defaults.student, help="zoo (cifar_*) or any timm model")
    m.add_argument(
        "--teacher-checkpoint",
        default=defaults.teacher_checkpoint,
        help="load the teacher from here if the file exists, else train it and save it "
        "here (default: <out>/teacher.pt)",
    )
    m.add_argument(
        "--teacher-epochs",
        type=positive_int,
        default=defaults.teacher_epochs,
        help="default: --epochs",
    )
    m.add_argument("--teacher-lr", type=positive_float, default=defaults.teacher_lr)
    m.add_argument(
        "--teacher-cache",
        type=non_negative_int,
        default=defaults.teacher_cache,
        metavar="K",
        help="compute the teacher's outputs once for K augmented views of every training image "
        "and read them in the student epochs instead of running the teacher (0: live teacher)",
    )
    o = parser.add_argument_group("optimisation (mdistiller/CRD CIFAR protocol by default)")
    o.add_argument(
        "--lr",
        type=positive_float,
        default=defaults.lr,
        help="default 0.05, or 0.01 for MobileNet/ShuffleNet students",
    )
    o.add_argument("--momentum", type=non_negative_float, default=defaults.momentum)
    o.add_argument("--weight-decay", type=non_negative_float, default=defaults.weight_decay)
    o.add_argument(
        "--milestones",
        type=positive_int,
        nargs="*",
        default=defaults.milestones,
        help="epochs where lr ×= --lr-decay (default 150/180/210 of 240, scaled to --epochs)",
    )
    o.add_argument("--lr-decay", type=positive_float, default=defaults.lr_decay)
    o.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=defaults.schedule,
        help="step: the --milestones drops; cosine: decay to 0 over the epochs",
    )
    add_run_arguments(parser, defaults)
    r = parser.add_argument_group("run (distillation)")
    r.add_argument(
        "--stop-after",
        type=positive_int,
        default=defaults.stop_after,
        help="run at most N epochs of each phase in this invocation, e.g. to fit a job "
        "time limit (continue later with --resume)",
    )
    r.add_argument("--deterministic", action="store_true", help="deterministic torch kernels")
    return parser
