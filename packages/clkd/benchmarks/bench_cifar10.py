"""Validation-split study: CE / KD / DKD / CLKD / TRG students at the same CE weight (CPU-sized).

The data are the training images only (CIFAR-10's 50,000 JPEGs from
``../shared/datasets/cifar10``, or Fashion-MNIST's 60,000 training images): a class-balanced
validation split (``--val-fraction``, seed 0) is carved out first and every number reported
here is validation accuracy; defaults were chosen on this split, never on a test set.

Protocol (sized for a loaded 2-core CPU, so small on purpose):

- teacher ``cifar_resnet20`` trained with cross-entropy on ``--teacher-images`` training-split
  images (random crop + flip), cached in ``--work-dir``;
- students ``cifar_resnet8`` on a class-balanced ``--student-images`` subset of those images,
  ``--epochs`` epochs, SGD lr 0.05 / momentum 0.9 / wd 5e-4, the protocol's lr drops scaled to
  the epochs, batch 64, horizontal-flip augmentation. The teacher's logits and feature maps are
  computed once for both flips of every student image (the teacher is frozen, so this equals
  running it every step) — that is what makes the study fit the CPU;
- every method uses CE weight 1 (the rows say so); seeds 0, 1, 2 (student init and batch
  order); mean ± 95 % CI (Student t) and the paired difference to KD (same seed) with its CI.

    OMP_NUM_THREADS=1 python packages/clkd/benchmarks/bench_cifar10.py --dataset cifar10
    OMP_NUM_THREADS=1 python packages/clkd/benchmarks/bench_cifar10.py --dataset fashion-mnist

Long-tailed variant (``--imbalance-ratio 100``): teacher and students train on one
long-tailed subset of the training split (Cao et al. profile, ``--lt-n-max`` images of the
largest class; the teacher sees exactly the students' images) and the balanced validation split
is scored overall and on the many- (> 100 training images), medium- and few-shot (< 20) classes:

    OMP_NUM_THREADS=1 python packages/clkd/benchmarks/bench_cifar10.py --imbalance-ratio 100 \
        --lt-n-max 1000 --teacher-epochs 40 --epochs 8 --methods ce kd clkd trg dkd

Finished runs are cached in ``--work-dir`` (one JSON per method/seed), so an interrupted study
continues where it stopped; ``--methods`` picks rows (see :data:`METHODS`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clkd import CLKDLoss, DKDLoss, dkd_beta_for
from lab_common import cache_dir, mean_confidence_interval, seed_everything, write_benchmark
from lab_common.data import (
    DATASET_STATS,
    class_balanced_split,
    load_cifar10_tensors,
    load_fashion_mnist_tensors,
)
from lab_common.data.longtail import longtail_indices, shot_splits, split_accuracy
from lab_common.distill import KDLoss, create_model, default_milestones
from lab_common.distill.kd import KD_DEFAULTS
from trg_kd import TRGLoss

RESULTS = Path(__file__).parent / "results"
TEACHER, STUDENT = "cifar_resnet20", "cifar_resnet8"
STATS = {name: DATASET_STATS[name] for name in ("cifar10", "fashion-mnist")}


# --------------------------------------------------------------------------- data
def load_split(dataset: str, val_fraction: float) -> dict[str, torch.Tensor]:
    """Normalised float ``train`` / ``val`` images and labels of the validation split (seed 0)."""
    if dataset == "cifar10":
        x, y, _ = load_cifar10_tensors()
    else:
        x, y = load_fashion_mnist_tensors(None, train=True)
        x = x.unsqueeze(1)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in STATS[dataset])
    xf = (x.float() / 255 - mean) / std
    tr, va = class_balanced_split(y, val_fraction, seed=0)
    return {"x_train": xf[tr], "y_train": y[tr], "x_val": xf[va], "y_val": y[va]}


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n // C`` examples of every class (a fixed draw from ``seed``)."""
    classes = torch.unique(labels)
    keep = len(classes) * (n // len(classes))
    _, picked = class_balanced_split(labels, keep / len(labels), seed=seed)
    return picked


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random ``pad``-pixel translation (zero padding) and horizontal flip of a ``(B, C, H, W)``."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx, dy = torch.randint(0, 2 * pad + 1, (2, b), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(b)])
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


# ------------------------------------------------------------------------ training
def sgd(params, epochs: int, steps_per_epoch: int, lr: float = 0.05):
    """SGD (momentum 0.9, wd 5e-4) and the protocol's lr drops scaled to ``epochs`` (per step)."""
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    drops = [m * steps_per_epoch for m in default_milestones(epochs)]
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, drops, gamma=0.1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """``(N,)`` predicted classes of ``x`` (eval mode)."""
    model.eval()
    return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (predict(model, x) == y).float().mean().item()


def train_teacher(data: dict, idx: torch.Tensor, epochs: int, work: Path) -> nn.Module:
    """The CE-trained teacher (cached in ``work``), on the training-split images ``idx``."""
    in_chans = data["x_train"].shape[1]
    teacher = create_model(TEACHER, num_classes=10, in_chans=in_chans)
    path = work / "teacher.pt"
    if path.is_file():
        teacher.load_state_dict(torch.load(path)["model"])
        return teacher.eval()
    seed_everything(0)
    x, y = data["x_train"][idx], data["y_train"][idx]
    steps = len(x) // 64
    opt, sched = sgd(teacher.parameters(), epochs, steps)
    gen = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        teacher.train()
        perm = torch.randperm(len(x), generator=gen)
        for s in range(steps):
            b = perm[s * 64 : (s + 1) * 64]
            loss = F.cross_entropy(teacher(random_crop_flip(x[b], gen)), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"teacher epoch {epoch + 1}/{epochs}", flush=True)
    preds = predict(teacher, data["x_val"])
    acc = 100.0 * (preds == data["y_val"]).float().mean().item()
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"model": teacher.state_dict(), "val_acc": acc, "val_preds": preds}, path)
    print(f"teacher val acc {acc:.2f}", flush=True)
    return teacher.eval()


@torch.no_grad()
def teacher_outputs(teacher: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Teacher logits ``(2, N, 10)`` and feature maps ``(2, N, D, h, w)`` of ``x`` and its flip."""
    logits, feats = [], []
    for view in (x, x.flip(3)):
        out_l, out_f = [], []
        for i in range(0, len(view), 250):
            f = teacher.forward_features(view[i : i + 250])
            out_f.append(f)
            out_l.append(teacher.forward_head(f))
        logits.append(torch.cat(out_l))
        feats.append(torch.cat(out_f))
    return {"logits": torch.stack(logits), "features": torch.stack(feats)}


#: study row -> (description, loss factory(epochs) or None for CE alone). Every row: CE weight 1.
METHODS: dict[str, tuple[str, Callable[[int], nn.Module | None]]] = {
    "ce": ("student alone, CE 1", lambda e: None),
    "kd": ("KD, CE 1 + KD 1 (T 4, T²-scaled)", lambda e: KDLoss(**KD_DEFAULTS)),
    "dkd": (
        f"DKD, CE 1, α 1, β {dkd_beta_for(TEACHER, STUDENT)} (per-pair table), warm-up 1 epoch",
        lambda e: DKDLoss(beta=dkd_beta_for(TEACHER, STUDENT), warmup_epochs=1),
    ),
    "clkd": (
        "CLKD batchmean, μ 0.5, β 1, ν 0.4, CE 1",
        lambda e: CLKDLoss(reduction="batchmean", logit_weight=0.5, correlation_weight=0.4),
    ),
    "clkd-mu0.15": (
        "CLKD batchmean, μ 0.15, ν 0.4 (gradient ≈ KD's at init), CE 1",
        lambda e: CLKDLoss(logit_weight=0.15),
    ),
    "clkd-mu1": (
        "CLKD batchmean, μ 1, β 1, ν 0.4, CE 1",
        lambda e: CLKDLoss(logit_weight=1.0),
    ),
    "clkd-mean": (
        "CLKD 0.1 reading (mean reduction, μ 0.5, ν 0.4) with CE 1",
        lambda e: CLKDLoss(reduction="mean", logit_weight=0.5, correlation_weight=0.4),
    ),
    "trg": (
        "TRG, γ 0 (global term off), α 500, β 50, CE 1, KD 1",
        lambda e: TRGLoss(64, 64, global_weight=0.0),
    ),
    "trg-g5": (
        "TRG, γ 5 (global term's gradient ≈ the others' at init), CE 1, KD 1",
        lambda e: TRGLoss(64, 64, global_weight=5.0),
    ),
}


def train_student(
    data: dict, teach: dict, idx: torch.Tensor, method: str, seed: int, epochs: int
) -> torch.Tensor:
    """One student run; returns its ``(N_val,)`` validation predictions after the last epoch."""
    seed_everything(seed)
    in_chans = data["x_train"].shape[1]
    student = create_model(STUDENT, num_classes=10, in_chans=in_chans)
    loss_fn = METHODS[method][1](epochs)
    params = list(student.parameters()) + (list(loss_fn.parameters()) if loss_fn else [])
    x, y = data["x_train"][idx], data["y_train"][idx]  # teach is indexed like x
    steps = len(x) // 64
    opt, sched = sgd(params, epochs, steps)
    gen = torch.Generator().manual_seed(1000 + seed)
    for epoch in range(epochs):
        student.train()
        if hasattr(loss_fn, "set_epoch"):
            loss_fn.set_epoch(epoch, epochs)
        perm = torch.randperm(len(x), generator=gen)
        for s in range(steps):
            b = perm[s * 64 : (s + 1) * 64]
            flip = (torch.rand(len(b), generator=gen) < 0.5).long()
            xb = torch.where(flip.view(-1, 1, 1, 1).bool(), x[b].flip(3), x[b])
            feats = student.forward_features(xb)
            logits = student.forward_head(feats)
            if loss_fn is None:
                loss = F.cross_entropy(logits, y[b])
            else:
                t_logits = teach["logits"][flip, b]
                kwargs = {}
                if getattr(loss_fn, "needs_features", False):
                    kwargs = {
                        "student_features": feats,
                        "teacher_features": teach["features"][flip, b],
                    }
                loss = sum(loss_fn(logits, t_logits, y[b], **kwargs).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return predict(student, data["x_val"])


def ci(values: list[float]) -> str:
    mean, half = mean_confidence_interval(values)
    return f"{mean:.2f} ± {half:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=tuple(STATS), default="cifar10")
    p.add_argument(
        "--methods", nargs="+", default=["ce", "kd", "dkd", "clkd", "clkd-mu0.15", "trg", "trg-g5"]
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-images", type=int, default=2000, help="validation images scored")
    p.add_argument("--teacher-images", type=int, default=4000)
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--student-images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--imbalance-ratio", type=float, default=1.0, help="ρ > 1: long-tailed")
    p.add_argument("--lt-n-max", type=int, default=1000, help="long-tailed: largest class")
    p.add_argument("--work-dir", default=None, help="default: <cache>/kd02-study/<dataset>")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--teacher-only", action="store_true")
    p.add_argument("--report-only", action="store_true", help="table of the finished runs only")
    a = p.parse_args()
    unknown = set(a.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}")
    longtail = a.imbalance_ratio > 1
    work = Path(a.work_dir or cache_dir() / "kd02-study" / a.dataset)
    if longtail:
        work = work / f"lt-rho{a.imbalance_ratio:g}-n{a.lt_n_max}-t{a.teacher_epochs}"
    data = load_split(a.dataset, a.val_fraction)
    keep = balanced_subset(data["y_val"], a.val_images, seed=2)
    data["x_val"], data["y_val"] = data["x_val"][keep], data["y_val"][keep]
    tic = time.perf_counter()
    if longtail:  # teacher and students share one long-tailed subset
        idx = longtail_indices(data["y_train"], a.imbalance_ratio, n_max=a.lt_n_max, seed=1)
        counts = torch.bincount(data["y_train"][idx], minlength=10)
        splits = shot_splits(counts)
        print(f"long-tailed counts {counts.tolist()}; splits {splits}", flush=True)
    else:  # the students' images are a subset of the teacher's
        idx = balanced_subset(data["y_train"], a.teacher_images, seed=1)
    teacher = train_teacher(data, idx, a.teacher_epochs, work)
    teacher_state = torch.load(work / "teacher.pt")
    teacher_acc = teacher_state["val_acc"]
    print(
        f"teacher {TEACHER}: val {teacher_acc:.2f} ({time.perf_counter() - tic:.0f}s)", flush=True
    )
    if a.teacher_only:
        return
    if not longtail:
        idx = idx[balanced_subset(data["y_train"][idx], a.student_images, seed=3)]
    teach_path = work / f"teacher_outputs_n{len(idx) if longtail else a.student_images}.pt"
    if teach_path.is_file():
        teach = torch.load(teach_path)
    else:
        teach = teacher_outputs(teacher, data["x_train"][idx])  # the student images, both flips
        torch.save(teach, teach_path)
    accs: dict[str, dict[int, float]] = {}
    by_split: dict[str, dict[int, dict[str, float]]] = {}
    for seed in a.seeds:  # seeds outer: an interrupted study has whole seeds of every method
        for method in a.methods:
            done = work / "runs" / f"{method}-e{a.epochs}-n{a.student_images}-s{seed}.json"
            if done.is_file():
                record = json.loads(done.read_text())
            elif a.report_only:
                continue
            else:
                t0 = time.perf_counter()
                preds = train_student(data, teach, idx, method, seed, a.epochs)
                record = {"val_acc": 100.0 * (preds == data["y_val"]).float().mean().item()}
                if longtail:
                    record["splits"] = split_accuracy(preds, data["y_val"], splits)
                record["wall_s"] = time.perf_counter() - t0
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps(record))
            acc = record["val_acc"]
            accs.setdefault(method, {})[seed] = acc
            if longtail:
                by_split.setdefault(method, {})[seed] = record["splits"]
            print(f"{method} seed {seed}: {acc:.2f} ({time.perf_counter() - tic:.0f}s)", flush=True)
    n_teacher = len(idx) if longtail else a.teacher_images
    rows = [
        {
            "method": f"teacher {TEACHER} (CE 1)",
            "val acc (%)": f"{teacher_acc:.2f}",
            "per seed": f"trained once on {n_teacher} images",
            "Δ vs KD (paired)": "",
        }
    ]
    if longtail:
        t_split = split_accuracy(teacher_state["val_preds"], data["y_val"], splits)
        rows[0] |= {f"{k} (%)": f"{t_split[k]:.2f}" for k in ("many", "medium", "few")}
        rows[0]["Δ few vs KD"] = ""
    for method, by_seed in accs.items():
        values = list(by_seed.values())
        paired = [s for s in by_seed if s in accs.get("kd", {})]
        delta = ""
        if method != "kd" and paired:
            delta = ci([by_seed[s] - accs["kd"][s] for s in paired])
        row = {
            "method": f"{method}: {METHODS[method][0]}",
            "val acc (%)": ci(values),
            "per seed": ", ".join(f"{v:.2f}" for v in values),
            "Δ vs KD (paired)": delta,
        }
        if longtail:
            seeds = by_split[method]
            for k in ("many", "medium", "few"):
                row[f"{k} (%)"] = ci([seeds[s][k] for s in seeds])
            kd = by_split.get("kd", {})
            few = [seeds[s]["few"] - kd[s]["few"] for s in seeds if s in kd]
            row["Δ few vs KD"] = ci(few) if method != "kd" and few else ""
        rows.append(row)
    students = f"{len(idx)} long-tailed" if longtail else str(a.student_images)
    lt_note = (
        f"long-tailed ρ = {a.imbalance_ratio:g}, n_max {a.lt_n_max} (counts "
        f"{counts.tolist()}; many {splits['many']}, medium {splits['medium']}, few "
        f"{splits['few']}), "
        if longtail
        else ""
    )
    title = (
        f"{lt_note}{a.dataset} validation split ({len(data['y_val'])} of the held-out "
        f"{a.val_fraction:.0%} of the training images scored), {TEACHER} teacher "
        f"({a.teacher_epochs} epochs on {n_teacher} images) -> {STUDENT} students "
        f"({a.epochs} epochs on {students} images), seeds {a.seeds} (fewer where a row "
        "lists fewer), mean ± 95 % CI; "
        f"wall {(time.perf_counter() - tic) / 60:.1f} min"
    )
    name = f"study_{a.dataset}" + (f"_lt{a.imbalance_ratio:g}" if longtail else "")
    print(write_benchmark(rows, a.out_dir, name, title=title))


if __name__ == "__main__":
    main()
