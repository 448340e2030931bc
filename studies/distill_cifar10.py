"""Distillation on all of CIFAR-10's training images: CE, KD, DKD, CLKD and TRG students.

Protocol: the 50,000 training images of ``../shared/datasets/cifar10``; a class-balanced
validation split of 5,000 (seed 0) is every number's evaluation split, the other 45,000 train.
The teacher (``cifar_resnet20``) trains with cross-entropy and a cosine schedule for 80 epochs
(40 gave 87.26 % validation top-1, below the 88 % the study asks of its teacher: record
``clkd-dd1a33aa60f4``, kept in ``studies/records``); the students
(``cifar_resnet8``) train at every method's defaults, CE weight 1 in every row, reading the
teacher's outputs for K = 8 fixed augmented views of every image (``teacher_cache``: computed
once; the views are the same random crop + flip the live teacher would see). "KD, live
teacher" checks the cache against KD with the teacher run on every batch (same seeds); CLKD's
two open readings (the correlation over the batch, β 2) are decided against the default on
this split. The students run in channels-last memory layout (``channels_last``: the same
numbers up to rounding, a 1.25× faster student epoch on this CPU,
``packages/common/benchmarks/bench_teacher_cache.py --layouts default channels-last``); the
teacher, started before that option existed, in the default layout.

    python studies/distill_cifar10.py --jobs 2
"""

from __future__ import annotations

from typing import Any

from harness import (
    RESULTS,
    Output,
    Row,
    Run,
    Store,
    plot_curves,
    seeds,
    study_main,
    summarise,
    write_report,
)

STUDY = "distill_cifar10"
DATA = {"dataset": "cifar10", "val_images": 5000, "val_seed": 0, "workers": 0}


def teacher_run(epochs: int, **extra: Any) -> Run:
    """The CE-trained ``cifar_resnet20`` teacher (cosine schedule, batch 128, lr 0.1);
    ``extra``: further trainer settings (the long-tailed data, the memory layout)."""
    kwargs = {
        **DATA,
        **extra,
        "method": "ce",
        "student": "cifar_resnet20",
        "epochs": epochs,
        "batch_size": 128,
        "lr": 0.1,
        "schedule": "cosine",
    }
    return Run("clkd", kwargs, seed=0, keep=("student.pt",))


def student_kwargs(teacher: Run, **data: Any) -> dict[str, Any]:
    """A ``cifar_resnet8`` student of ``teacher``: 30 epochs, cosine, teacher cache K = 8,
    channels-last layout."""
    return {
        **DATA,
        **data,
        "teacher": "cifar_resnet20",
        "teacher_checkpoint": Output(teacher, "student.pt"),
        "student": "cifar_resnet8",
        "epochs": 30,
        "batch_size": 64,
        "lr": 0.05,
        "schedule": "cosine",
        "teacher_cache": 8,
        "channels_last": True,
    }


TEACHER = teacher_run(80)
STUDENT = student_kwargs(TEACHER)
SEEDS = (0, 1, 2)

ROWS = [
    Row("teacher resnet20 (CE)", [TEACHER], note="80 epochs, cosine, batch 128, lr 0.1"),
    Row("CE", seeds("clkd", {**STUDENT, "method": "ce"}, SEEDS)),
    Row("KD", seeds("clkd", {**STUDENT, "method": "kd"}, SEEDS)),
    Row("DKD", seeds("clkd", {**STUDENT, "method": "dkd"}, SEEDS)),
    Row("CLKD", seeds("clkd", {**STUDENT, "method": "clkd"}, SEEDS)),
    Row("TRG", seeds("trg-kd", {**STUDENT, "method": "trg"}, SEEDS)),
    Row(
        "KD, live teacher",
        seeds("clkd", {**STUDENT, "method": "kd", "teacher_cache": 0}, SEEDS),
        note="the cache check: KD with the teacher run on every batch",
    ),
    Row(
        "CLKD, B×B correlation",
        seeds("clkd", {**STUDENT, "method": "clkd", "clkd_correlation_axis": "batch"}, SEEDS),
        note="the correlation over the batch, as the other re-implementation",
    ),
    Row(
        "CLKD, β 2",
        seeds("clkd", {**STUDENT, "method": "clkd", "class_weight": 2.0}, SEEDS),
        note="the class-level weight of both public re-implementations",
    ),
]


def report(store: Store, command: str) -> None:
    rows = summarise(ROWS, store, baseline="KD")
    teacher = store.record(TEACHER)
    curves = plot_curves(ROWS[1:], store, RESULTS / f"{STUDY}_curves.png", "epoch")
    write_report(
        STUDY,
        title="Distillation on CIFAR-10 (45,000 training images, 5,000 validation)",
        protocol={
            "train_images": 45000,
            "val_images": 5000,
            "teacher": "cifar_resnet20",
            "teacher_epochs": TEACHER.kwargs["epochs"],
            "student": "cifar_resnet8",
            "epochs": STUDENT["epochs"],
            "teacher_cache_views": STUDENT["teacher_cache"],
            "ce_weight": 1,
        },
        rows=rows,
        baseline="KD",
        command=command,
        text=__doc__.split("\n\n")[1],
        curves=curves,
        extra={"teacher_val_acc": teacher["acc"] if teacher else None},
    )


if __name__ == "__main__":
    raise SystemExit(study_main(STUDY, ROWS, report, description=__doc__))
