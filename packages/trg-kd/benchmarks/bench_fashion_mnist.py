"""Real-data benchmark: CE / KD / TRG / TRG without each term on (long-tailed) Fashion-MNIST.

A CNN teacher is distilled into a smaller CNN and into a small ViT, on a balanced subset of
Fashion-MNIST and on a long-tailed subset (ρ = 100, Cao et al. profile), test accuracy on a
balanced test subset (mean ± std over seeds; many/medium/few-shot accuracy for the long-tailed
runs). Everything stays in memory (``lab_common.data.load_fashion_mnist_tensors``) and the models are
small so that the whole benchmark fits a few CPU minutes; it is a sanity check of the method at
toy scale, not a reproduction of the paper's CIFAR-100/ImageNet numbers.

    nice -n 10 python packages/trg-kd/benchmarks/bench_fashion_mnist.py          # full (≈15 min)
    python packages/trg-kd/benchmarks/bench_fashion_mnist.py --quick             # smoke run

Results: ``benchmarks/results/fashion_mnist.{md,json}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from lab_common import seed_everything, write_benchmark
from lab_common.data import DATASET_STATS, load_fashion_mnist_tensors
from lab_common.data.longtail import longtail_indices, shot_splits, split_accuracy
from lab_common.distill import Distiller, KDLoss
from trg_kd import TokenExtractor, TRGConfig, TRGLoss

RESULTS = Path(__file__).parent / "results"
(MEAN,), (STD,) = DATASET_STATS["fashion-mnist"]


class SmallCNN(nn.Module):
    """Plain conv net with timm's interface: ``forward_features`` → ``(B, C, 7, 7)`` for 28×28."""

    def __init__(self, widths: tuple[int, ...], num_classes: int = 10) -> None:
        super().__init__()
        layers, in_chs = [], 1
        for i, w in enumerate(widths):
            stride = 2 if i in (1, 2) else 1  # 28 -> 14 -> 7
            layers += [nn.Conv2d(in_chs, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            in_chs = w
        self.features = nn.Sequential(*layers)
        self.num_features = in_chs
        self.fc = nn.Linear(in_chs, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def make_model(name: str) -> nn.Module:
    if name == "teacher_cnn":  # 4 convs, 32-64-128-128 channels, ~0.27 M parameters
        return SmallCNN((32, 64, 128, 128))
    if name == "student_cnn":  # 3 convs, 16-32-32 channels, ~14 k parameters
        return SmallCNN((16, 32, 32))
    if name == "student_vit":  # 7x7 patch grid of 4x4 patches, width 64, 2 blocks, ~0.1 M
        return timm.create_model(
            "vit_tiny_patch16_224",
            pretrained=False,
            img_size=28,
            patch_size=4,
            in_chans=1,
            embed_dim=64,
            depth=2,
            num_heads=2,
            mlp_ratio=2.0,
            num_classes=10,
        )
    raise ValueError(f"unknown model {name!r}")


def load_data(n_train_per_class: int, n_test_per_class: int, longtail: bool, n_max: int):
    """Balanced (or ρ = 100 long-tailed) train subset and a balanced test subset, normalised."""
    xtr, ytr = load_fashion_mnist_tensors(None, train=True)
    xte, yte = load_fashion_mnist_tensors(None, train=False)
    g = torch.Generator().manual_seed(0)

    def balanced(y: torch.Tensor, n: int) -> torch.Tensor:
        idx = [(y == c).nonzero().flatten() for c in range(10)]
        return torch.cat([i[torch.randperm(len(i), generator=g)[:n]] for i in idx]).sort().values

    tr = (
        longtail_indices(ytr, 100, n_max=n_max, seed=0)
        if longtail
        else balanced(ytr, n_train_per_class)
    )
    te = balanced(yte, n_test_per_class)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return ((x.float() / 255 - MEAN) / STD).unsqueeze(1)

    return norm(xtr[tr]), ytr[tr], norm(xte[te]), yte[te]


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    adamw: bool = False,
    batch_size: int = 64,
) -> nn.Module:
    """Train ``model`` (a classifier, or a Distiller ``(x, y) -> (logits, losses)``).

    SGD (lr 0.05, momentum 0.9, wd 5e-4) or, for the ViT, AdamW (lr 2e-3, wd 0.05); one-cycle
    schedule.
    """
    params = (
        list(model.trainable_parameters())
        if isinstance(model, Distiller)
        else list(model.parameters())
    )
    if adamw:
        lr, opt = 2e-3, torch.optim.AdamW(params, lr=2e-3, weight_decay=0.05)
    else:
        lr, opt = 0.05, torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    steps = epochs * (len(y) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(epochs):
        if isinstance(model, Distiller):
            model.set_epoch(epoch, epochs)
        perm = torch.randperm(len(y), generator=g)
        for i in range(len(y) // batch_size):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            if isinstance(model, Distiller):
                _, losses = model(x[idx], y[idx])
                loss = sum(losses.values())
            else:
                loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])


def distill(
    method: str,
    cfg: TRGConfig,
    teacher: nn.Module,
    student_name: str,
    data,
    *,
    epochs: int,
    seed: int,
) -> dict[str, float]:
    """Train one student with ``method`` ("ce", "kd", or "trg" with ``cfg``); accuracies in %."""
    xtr, ytr, xte, yte = data
    seed_everything(seed)
    student = make_model(student_name)
    ext = TokenExtractor()
    if method == "ce":
        model: nn.Module = student
    else:
        if method == "kd":
            loss: nn.Module = KDLoss(
                ce_weight=1.0, kd_weight=cfg.kd_weight, temperature=cfg.kd_temperature
            )
        else:
            dims = [ext.token_shape(m, (1, 28, 28))[1] for m in (student, teacher)]
            loss = TRGLoss(*dims, replace(cfg, seed=seed))
        model = Distiller(student, teacher, loss, student_features=ext, teacher_features=ext)
    train(model, xtr, ytr, epochs=epochs, seed=seed, adamw=student_name == "student_vit")
    counts = torch.bincount(ytr, minlength=10)
    return split_accuracy(predict(student, xte), yte, shot_splits(counts))


ABLATIONS = {
    "TRG": {},
    "TRG − inner (α=0)": {"inner_weight": 0.0},
    "TRG − local (β=0)": {"local_weight": 0.0},
    "TRG − global (γ=0)": {"global_weight": 0.0},
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-per-class", type=int, default=150)
    p.add_argument("--lt-n-max", type=int, default=500, help="largest class of the ρ=100 set")
    p.add_argument("--test-per-class", type=int, default=300)
    p.add_argument("--epochs", type=int, default=5, help="student epochs (balanced set)")
    p.add_argument("--lt-epochs", type=int, default=12, help="student epochs (long-tailed set)")
    p.add_argument("--teacher-epochs", type=int, default=8, help="teacher epochs (balanced set)")
    p.add_argument("--lt-teacher-epochs", type=int, default=24, help="teacher epochs (LT set)")
    p.add_argument("--settings", nargs="+", choices=("balanced", "lt"), default=["balanced", "lt"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="tiny smoke run (1 seed, 1 epoch)")
    p.add_argument("--out-name", default="fashion_mnist")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.lt_epochs = [0], 1, 1
        args.teacher_epochs = args.lt_teacher_epochs = 1
        args.out_name += "_quick"
    torch.set_num_threads(args.threads)
    cfg = TRGConfig()
    rows, tic = [], time.perf_counter()
    for longtail in [s == "lt" for s in args.settings]:
        data = load_data(args.train_per_class, args.test_per_class, longtail, args.lt_n_max)
        epochs = args.lt_epochs if longtail else args.epochs
        seed_everything(100)
        t_epochs = args.lt_teacher_epochs if longtail else args.teacher_epochs
        teacher = train(make_model("teacher_cnn"), data[0], data[1], epochs=t_epochs, seed=100)
        t_acc = split_accuracy(
            predict(teacher, data[2]), data[3], shot_splits(torch.bincount(data[1], minlength=10))
        )
        setting = "Fashion-MNIST-LT ρ=100" if longtail else "Fashion-MNIST"
        print(f"{setting}: {len(data[1])} train images, teacher {t_acc['all']:.2f}%", flush=True)
        for student_name in ("student_cnn", "student_vit"):
            methods = {"CE": ("ce", {}), "KD": ("kd", {})}
            # the ablation runs on the balanced set with the CNN student only (time budget)
            ablations = ABLATIONS if student_name == "student_cnn" and not longtail else {"TRG": {}}
            methods.update({k: ("trg", v) for k, v in ablations.items()})
            for label, (method, overrides) in methods.items():
                accs = [
                    distill(
                        method,
                        replace(cfg, **overrides),
                        teacher,
                        student_name,
                        data,
                        epochs=epochs,
                        seed=s,
                    )
                    for s in args.seeds
                ]
                row = {
                    "setting": setting,
                    "teacher → student": f"CNN ({t_acc['all']:.1f}%) → "
                    + student_name.split("_")[1].upper(),
                    "method": label,
                }
                keys = ("all", "many", "medium", "few") if longtail else ("all",)
                for k in keys:
                    vals = [a[k] for a in accs]
                    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                    row[f"top-1 {k}" if longtail else "top-1"] = (
                        f"{statistics.mean(vals):.2f} ± {sd:.2f}"
                    )
                row["seeds"] = " ".join(f"{a['all']:.2f}" for a in accs)
                rows.append(row)
                print(row, f"[{time.perf_counter() - tic:.0f}s]", flush=True)
    md = write_benchmark(rows, RESULTS, args.out_name, title="Fashion-MNIST: CE / KD / TRG")
    note = (
        f"\n{len(args.seeds)} seeds {args.seeds}; settings {args.settings}; balanced: "
        f"{args.train_per_class}/class train, {args.epochs} student / {args.teacher_epochs} teacher "
        f"epochs; LT: ρ=100, n_max={args.lt_n_max}, {args.lt_epochs} student / "
        f"{args.lt_teacher_epochs} teacher epochs; test {args.test_per_class}/class; "
        f"{args.threads} thread(s); wall {time.perf_counter() - tic:.0f} s\n"
    )
    (RESULTS / f"{args.out_name}.md").write_text(md + note)
    print(md + note)


if __name__ == "__main__":
    sys.exit(main())
