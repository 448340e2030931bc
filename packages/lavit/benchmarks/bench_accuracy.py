"""LaViT vs PVTv2-style vs DeiT-style on real Fashion-MNIST (CPU, small images), plus ablations.

Same recipe for every model: 28x28 images zero-padded to 32x32 (1 channel), random crop
(padding 2) + horizontal flip, AdamW (lr 2e-3, wd 0.05), cosine schedule with linear warm-up,
label smoothing 0.1, batch 128, fp32. Models are built with matched parameter counts (printed).
Ablations of LaViT: all-VA (no LA blocks), no DP loss (lambda_DP = 0), no attention residual.
Reports test accuracy mean +- std over seeds and wall time per run.

Usage (the README numbers):
    nice -n 10 python benchmarks/bench_fashion_mnist.py --train-samples 6000 \
        --test-samples 2000 --epochs 2 --seeds 0 1 2
"""

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import PyramidVisionTransformerV2, VisionTransformer
from timm.scheduler import CosineLRScheduler

from lab_common import seed_everything, write_benchmark
from lab_common.data import load_fashion_mnist_tensors
from lavit import LaViT

MEAN, STD = 0.286, 0.353


def lavit_fm(**overrides) -> LaViT:
    """3-stage LaViT for 32x32: grids 8/4/2, keys 4x4/4x4/2x2, one LA block in stages 2-3."""
    args = dict(
        img_size=32,
        in_chans=1,
        num_classes=10,
        depths=(2, 2, 2),
        la_depths=(0, 1, 1),
        embed_dims=(32, 64, 128),
        num_heads=(1, 2, 4),
        mlp_ratios=(4, 4, 4),
        sr_ratios=(2, 1, 1),
    )
    return LaViT(**{**args, **overrides})


def pvt_fm() -> nn.Module:
    """PVTv2 (timm) with the same stages, widths and heads as ``lavit_fm``."""
    return PyramidVisionTransformerV2(
        in_chans=1,
        num_classes=10,
        depths=(2, 2, 2),
        embed_dims=(32, 64, 128),
        num_heads=(1, 2, 4),
        mlp_ratios=(4, 4, 4),
        sr_ratios=(2, 1, 1),
    )


def deit_fm() -> nn.Module:
    """Plain ViT/DeiT (timm), patch 4 (64 tokens), width chosen to match the parameter count."""
    return VisionTransformer(
        img_size=32,
        patch_size=4,
        in_chans=1,
        num_classes=10,
        embed_dim=96,
        depth=5,
        num_heads=3,
        mlp_ratio=4.0,
    )


# name -> (builder, lambda_DP)
MODELS: dict[str, tuple[Callable[[], nn.Module], float]] = {
    "LaViT": (lavit_fm, 0.1),
    "PVTv2-style": (pvt_fm, 0.0),
    "DeiT-style": (deit_fm, 0.0),
    "LaViT all-VA": (lambda: lavit_fm(la_depths=(0, 0, 0)), 0.0),
    "LaViT no DP loss": (lavit_fm, 0.0),
    "LaViT no attn residual": (lambda: lavit_fm(attn_residual=False), 0.1),
}


def _prep(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> normalised float ``(N, 1, 32, 32)``."""
    x = F.pad(images.float().div(255), (2, 2, 2, 2))
    return ((x - MEAN) / STD).unsqueeze(1)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random crop (padding 2) and horizontal flip of a batch ``(B, 1, 32, 32)``."""
    b = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=-MEAN / STD)
    dx, dy = torch.randint(0, 5, (2,), generator=g).tolist()
    x = padded[:, :, dy : dy + 32, dx : dx + 32]
    flip = torch.rand(b, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def run(name: str, seed: int, data: tuple, args: argparse.Namespace) -> dict:
    builder, dp_weight = MODELS[name]
    seed_everything(seed)
    model = builder()
    params = sum(p.numel() for p in model.parameters())
    xtr, ytr, xte, yte = data
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps_per_epoch = len(xtr) // args.batch_size
    total = steps_per_epoch * args.epochs
    sched = CosineLRScheduler(
        opt,
        t_initial=total,
        lr_min=1e-5,
        warmup_t=total // 10,
        warmup_lr_init=1e-5,
        t_in_epochs=False,
    )
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    step = 0
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(steps_per_epoch):
            idx = perm[i * args.batch_size : (i + 1) * args.batch_size]
            x, y = _augment(xtr[idx], g), ytr[idx]
            if isinstance(model, LaViT) and dp_weight > 0:
                logits, aux = model(x, return_aux=True)
                loss = F.cross_entropy(logits, y, label_smoothing=0.1) + dp_weight * aux["loss_dp"]
            else:
                loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
    train_s = time.perf_counter() - t0
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(xte), 500):
            correct += (model(xte[i : i + 500]).argmax(-1) == yte[i : i + 500]).sum().item()
    acc = 100.0 * correct / len(xte)
    row = dict(model=name, seed=seed, params_M=params / 1e6, test_acc=acc, train_s=train_s)
    print(row, flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=None, help="folder holding fashion-mnist/")
    p.add_argument("--train-samples", type=int, default=6000)
    p.add_argument("--test-samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy box)"
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    xtr, ytr = load_fashion_mnist_tensors(args.data_root, train=True)
    xte, yte = load_fashion_mnist_tensors(args.data_root, train=False)
    g = torch.Generator().manual_seed(0)  # one fixed subset for every model and seed
    tr = torch.randperm(len(xtr), generator=g)[: args.train_samples]
    te = torch.randperm(len(xte), generator=g)[: args.test_samples]
    data = (_prep(xtr[tr]), ytr[tr], _prep(xte[te]), yte[te])

    runs = [run(name, seed, data, args) for name in args.models for seed in args.seeds]
    summary = []
    for name in args.models:
        rs = [r for r in runs if r["model"] == name]
        accs = [r["test_acc"] for r in rs]
        summary.append(
            dict(
                model=name,
                params_M=rs[0]["params_M"],
                test_acc_mean=statistics.fmean(accs),
                test_acc_std=statistics.stdev(accs) if len(accs) > 1 else 0.0,
                train_s_mean=statistics.fmean(r["train_s"] for r in rs),
                seeds=len(rs),
            )
        )
    setup = (
        f"Fashion-MNIST {args.train_samples} train / {args.test_samples} test, 32x32, "
        f"{args.epochs} epochs, batch {args.batch_size}, seeds {args.seeds}, "
        f"{args.threads} torch thread(s)"
    )
    print(write_benchmark(summary, args.out, "fashion_mnist", title=setup))
    write_benchmark(runs, args.out, "fashion_mnist_runs", title=setup)


if __name__ == "__main__":
    main()
