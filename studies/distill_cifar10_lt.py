"""Distillation on long-tailed CIFAR-10 (ρ = 100): CE, KD, CLKD and TRG students.

Protocol: the distillation study's split (5,000 class-balanced validation images, seed 0; the
other 45,000 train), of which a CIFAR-10-LT training set is drawn with the Cao et al. profile,
ρ = 100 and 4,500 images of the largest class (4,500 / 2,697 / 1,617 / 969 / 581 / 348 / 208
/ 125 / 75 / 45: 11,165 images). The teacher (``cifar_resnet20``, cross-entropy, cosine, 60
epochs) and the students (``cifar_resnet8``, 30 epochs, CE weight 1, teacher cache K = 8) train
on that set; the balanced validation split is scored overall and over the many- (> 1,000
training images: 3 classes), medium- (200–1,000: 4) and few-shot (< 200: 3) classes. The
thresholds are a design choice: the usual 100 / 20 of ImageNet-LT leave CIFAR-10-LT at
ρ = 100 without a few-shot class. Teacher and students run in channels-last memory layout.

    python studies/distill_cifar10_lt.py --jobs 2
"""

from __future__ import annotations

from distill_cifar10 import student_kwargs, teacher_run
from harness import (
    RESULTS,
    Row,
    Store,
    plot_curves,
    seeds,
    study_main,
    summarise,
    write_report,
)

STUDY = "distill_cifar10_lt"
LONGTAIL = {"imbalance_ratio": 100.0, "lt_n_max": 4500, "many_shot": 1000, "few_shot": 200}
TEACHER = teacher_run(60, **LONGTAIL, channels_last=True)
STUDENT = student_kwargs(TEACHER, **LONGTAIL)
SEEDS = (0, 1, 2)
SPLITS = ("all", "many", "medium", "few")


def _rows(split: str) -> list[Row]:
    def metric(record: dict) -> float:
        return record["result"][f"val_top1_{split}"]

    methods = [
        ("CE", "clkd", "ce"),
        ("KD", "clkd", "kd"),
        ("CLKD", "clkd", "clkd"),
        ("TRG", "trg-kd", "trg"),
    ]
    return [
        Row(f"{name} ({split})", seeds(trainer, {**STUDENT, "method": m}, SEEDS), metric=metric)
        for name, trainer, m in methods
    ]


ROWS = [
    Row("teacher resnet20 (CE, all)", [TEACHER], metric=lambda r: r["result"]["val_top1_all"]),
    *(row for split in SPLITS for row in _rows(split)),
]


def report(store: Store, command: str) -> None:
    tables = {split: summarise(_rows(split), store, baseline=f"KD ({split})") for split in SPLITS}
    teacher = store.record(TEACHER)
    curves = plot_curves(_rows("all"), store, RESULTS / f"{STUDY}_curves.png", "epoch")
    write_report(
        STUDY,
        title="Distillation on long-tailed CIFAR-10 (ρ = 100, 11,165 training images)",
        protocol={
            "train_images": 11165,
            "val_images": 5000,
            "imbalance_ratio": 100,
            "teacher": "cifar_resnet20",
            "teacher_epochs": TEACHER.kwargs["epochs"],
            "student": "cifar_resnet8",
            "epochs": STUDENT["epochs"],
            "splits": "many > 1000, medium 200-1000, few < 200 training images",
            "ce_weight": 1,
        },
        rows=[row for split in SPLITS for row in tables[split]],
        baseline="KD",
        command=command,
        text=__doc__.split("\n\n")[1],
        curves=curves,
        extra={
            "teacher_val_acc": {s: teacher["result"][f"val_top1_{s}"] for s in SPLITS}
            if teacher
            else None
        },
    )


if __name__ == "__main__":
    raise SystemExit(study_main(STUDY, ROWS, report, description=__doc__))
