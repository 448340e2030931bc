"""Real-data benchmark: CE-only vs KD vs DKD vs CLKD (both variants), mean ± std over seeds.

Default (quick, CPU): Fashion-MNIST from ``../shared/datasets/fashion-mnist`` as in-memory
tensors (random-crop + flip augmentation), a training subset, a ``cifar_resnet20`` teacher
(``in_chans=1``, trained once with cross-entropy and cached in ``--work-dir``) and a
``cifar_resnet8`` student, the protocol schedule scaled to ``--epochs``. Every run goes
through ``clkd.train.train`` (the ``lab_common.distill`` engine), resuming where a run left
checkpoints, so an
interrupted benchmark continues where it stopped.

    nice -n 10 python packages/clkd/benchmarks/bench_fashion_mnist.py

``--full`` runs the CIFAR-100 protocol (240 epochs, 4 teacher/student pairs, 3 seeds) for users
with a GPU and the data (``--data-root`` holding torchvision's ``cifar-100-python``); it was not
run on the development machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from clkd.train import TrainConfig, train
from lab_common import cache_dir, load_checkpoint, write_benchmark
from lab_common.data import DATASET_STATS, load_fashion_mnist_tensors
from lab_common.distill import TensorImageDataset

RESULTS = Path(__file__).parent / "results"
#: benchmark row -> the TrainConfig fields of its method
METHODS = {
    "ce": {"method": "ce"},
    "kd": {"method": "kd"},
    "kd-ce1": {"method": "kd", "ce_weight": 1.0},  # ablation: λ_ce 1 for KD as well
    "dkd": {"method": "dkd"},
    # CLKD defaults (mse variant, Pearson class correlation)
    "clkd-pearson": {"method": "clkd", "clkd_variant": "mse"},
    "clkd-softmax-pearson": {"method": "clkd", "clkd_variant": "softmax"},
    # the literal reconstruction: covariance of raw logits (quartic in the logit scale)
    "clkd-covariance": {"method": "clkd", "clkd_correlation": "covariance"},
    "clkd-softmax-covariance": {
        "method": "clkd",
        "clkd_variant": "softmax",
        "clkd_correlation": "covariance",
    },
    # ablation: a 10× larger label weight (λ_ce 1, as DKD uses)
    "clkd-pearson-ce1": {"method": "clkd", "ce_weight": 1.0},
    # ablation: λ_ce 1 and μ 5 (the MSE terms summed over classes instead of averaged, C = 10)
    "clkd-pearson-ce1-mu5": {"method": "clkd", "ce_weight": 1.0, "logit_weight": 5.0},
    # ablation of the covariance form: a 10× smaller ν
    "clkd-covariance-nu0.04": {
        "method": "clkd",
        "clkd_correlation": "covariance",
        "correlation_weight": 0.04,
    },
}
# CIFAR-100 top-1 published in the DKD paper (teacher / student / KD / DKD), for --full.
PAIRS = {
    ("cifar_resnet32x4", "cifar_resnet8x4"): (79.42, 72.50, 73.33, 76.32),
    ("cifar_wrn_40_2", "cifar_wrn_16_2"): (75.61, 73.26, 74.92, 76.23),
    ("cifar_resnet56", "cifar_resnet20"): (72.34, 69.06, 70.66, 71.97),
    ("cifar_vgg13", "cifar_vgg8"): (74.64, 70.36, 72.98, 74.68),
}
FASHION_MEAN, FASHION_STD = DATASET_STATS["fashion-mnist"]


def _started(out: Path) -> bool:
    """Whether a run in ``out`` left a checkpoint to resume from."""
    return any((Path(out) / f"{phase}_last.pt").is_file() for phase in ("teacher", "student"))


def _subset(n_total: int, n: int | None, seed: int) -> torch.Tensor:
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def fashion_datasets(root: str | None, n_train: int | None, n_test: int | None):
    """``(train, test, 10, 1)`` in-memory Fashion-MNIST subsets (fixed draw, seed 0 / 1)."""
    (xtr, ytr), (xte, yte) = (load_fashion_mnist_tensors(root, train=t) for t in (True, False))
    itr, ite = _subset(len(ytr), n_train, 0), _subset(len(yte), n_test, 1)
    train_ds = TensorImageDataset(
        xtr[itr].unsqueeze(1),
        ytr[itr],
        FASHION_MEAN,
        FASHION_STD,
        augment=True,
        padding=2,
        num_classes=10,
    )
    test_ds = TensorImageDataset(
        xte[ite].unsqueeze(1), yte[ite], FASHION_MEAN, FASHION_STD, num_classes=10
    )
    return train_ds, test_ds, 10, 1


def _mean_std(values: list[float]) -> str:
    """``mean ± std`` of the finite values (NaN marks a run that diverged)."""
    ok = [v for v in values if v == v]
    if not ok:
        return "diverged"
    std = statistics.stdev(ok) if len(ok) > 1 else 0.0
    failed = len(values) - len(ok)
    return f"{statistics.fmean(ok):.2f} ± {std:.2f}" + (f" ({failed} diverged)" if failed else "")


def run_quick(a: argparse.Namespace) -> None:
    data = fashion_datasets(a.data_root, a.train_subset, a.test_subset)
    work = Path(a.work_dir)
    teacher_ckpt = work / "teacher.pt"
    shared = {
        "teacher": a.teacher,
        "student": a.student,
        "epochs": a.epochs,
        "teacher_epochs": a.teacher_epochs,
        "batch_size": a.batch_size,
        "workers": 0,
        "progress": False,
        "device": a.device,
        "teacher_checkpoint": teacher_ckpt,
        "dkd_warmup": a.dkd_warmup,
    }
    accs: dict[str, list[float]] = {}
    tic = time.perf_counter()
    for name in a.methods:
        for seed in a.seeds:
            cfg = TrainConfig(**shared, **METHODS[name], seed=seed, out=work / name / f"seed{seed}")
            try:
                acc = train(cfg, datasets=data, resume=_started(cfg.out)).metrics["test_acc"]
            except (ValueError, FloatingPointError) as err:  # non-finite logits / loss
                if "non-finite" not in str(err):
                    raise
                acc = float("nan")
                print(f"{name} seed {seed} diverged: {err}", flush=True)
            accs.setdefault(name, []).append(acc)
            so_far = time.perf_counter() - tic
            print(f"{name} seed {seed}: {acc:.2f}% ({so_far:.0f}s so far)", flush=True)
    wall = time.perf_counter() - tic
    teacher_acc = load_checkpoint(teacher_ckpt)["test_acc"] if teacher_ckpt.is_file() else None
    kd_ok = [v for v in accs.get("kd", []) if v == v]
    kd_mean = statistics.fmean(kd_ok) if kd_ok else None
    rows = []
    if teacher_acc is not None:
        rows.append(
            {
                "method": f"teacher {a.teacher} (CE)",
                "test acc (%)": f"{teacher_acc:.2f}",
                "per seed": "trained once",
                "vs KD": "",
            }
        )
    for name, values in accs.items():
        ok = [v for v in values if v == v]
        delta = "" if kd_mean is None or not ok else f"{statistics.fmean(ok) - kd_mean:+.2f}"
        per_seed = ", ".join("NaN" if v != v else f"{v:.2f}" for v in values)
        rows.append(
            {
                "method": f"{name} ({a.student})",
                "test acc (%)": _mean_std(values),
                "per seed": per_seed,
                "vs KD": delta,
            }
        )
    title = (
        f"Fashion-MNIST, {len(data[0])} train / {len(data[1])} test images, {a.epochs} student "
        f"epochs ({a.teacher_epochs} teacher epochs), batch {a.batch_size}, seeds {a.seeds}, "
        f"DKD warm-up {a.dkd_warmup} epoch(s); wall time {wall / 60:.1f} min"
    )
    print(write_benchmark(rows, a.out_dir, "fashion_mnist", title=title))


def run_full(a: argparse.Namespace) -> None:
    work = Path(a.work_dir) / "cifar100"
    rows = []
    for (teacher, student), published in PAIRS.items():
        for name in a.methods:
            accs = []
            for seed in a.seeds:
                cfg = TrainConfig(
                    dataset="cifar100",
                    data_root=a.data_root,
                    teacher=teacher,
                    student=student,
                    device=a.device,
                    seed=seed,
                    amp=True,
                    teacher_checkpoint=work / "teachers" / f"{teacher}.pt",
                    out=work / f"{teacher}-{student}" / name / f"seed{seed}",
                    **METHODS[name],
                )
                accs.append(train(cfg, resume=_started(cfg.out)).metrics["test_acc"])
            rows.append(
                {
                    "pair": f"{teacher} -> {student}",
                    "method": name,
                    "top-1 (%)": _mean_std(accs),
                    "published T / S / KD / DKD": " / ".join(map(str, published)),
                }
            )
    print(write_benchmark(rows, a.out_dir, "cifar100_full", title="CIFAR-100, 240-epoch protocol"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="CIFAR-100 protocol (GPU, hours)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--teacher", default="cifar_resnet20")
    p.add_argument("--student", default="cifar_resnet8")
    p.add_argument("--train-subset", type=int, default=1000)
    p.add_argument("--test-subset", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--dkd-warmup", type=int, default=1, help="DKD warm-up epochs (20 of 240 in the paper)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--work-dir",
        default=str(cache_dir() / "clkd-bench"),
        help="checkpoints and the cached teacher (outside the repository)",
    )
    p.add_argument("--out-dir", default=str(RESULTS), help="where the result tables go")
    a = p.parse_args()
    if a.full:
        run_full(a)
    else:
        run_quick(a)


if __name__ == "__main__":
    main()
