"""Accuracy study on real data: LaViT (paper layout) vs its ablations vs PVTv2- and DeiT-style.

The data are training images only (CIFAR-10's 50,000 JPEGs from ``../shared/datasets/cifar10``
or Fashion-MNIST's 60,000 training images): a class-balanced validation split
(``--val-fraction``, seed 0) is carved out first, models train on a fixed class-balanced
``--train-images`` subset of the rest, and every number is validation accuracy.

Same recipe for every model (CPU-sized): 32x32 inputs (Fashion-MNIST zero-padded from 28x28),
random crop (padding 4) + horizontal flip, AdamW (lr 2e-3, wd 0.05), cosine schedule with
linear warm-up, label smoothing 0.1, batch 128, fp32, 1 thread. Three stages (token grids
8/4/2, widths 32/64/128), parameters matched within ~10 % (printed). Rows:

- ``LaViT``: the paper's layout — one VA then one LA block in every stage, square maps (no key
  reduction), the first LA block of a stage transforms the softmax attention, DP loss 0.1;
- ablations: all-VA (no LA blocks), no DP loss, no attention residual, ``la_input="logits"``,
  the 0.1 layout (LA only in stages 2-3, spatial-reduction keys in stage 1, logits input);
- ``LaViT + dwconv MLP``: LaViT with PVTv2's depthwise 3x3 conv in the MLP (``mlp_dwconv``),
  the one block-design difference to PVTv2 besides the position embeddings;
- ``PVTv2-style`` (timm ``PyramidVisionTransformerV2``, same stages) and ``DeiT-style`` (timm
  ``VisionTransformer``, patch 4).

Mean ± 95 % CI (Student t) over seeds and the paired difference to LaViT (same seed). Finished
runs are cached in ``--work-dir`` (one JSON per model/seed, seed-0 weights kept for the
attention-saturation analysis, ``--saturation``), so an interrupted study continues.

    OMP_NUM_THREADS=1 python packages/lavit/benchmarks/bench_accuracy.py --dataset cifar10
"""

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.stats
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import PyramidVisionTransformerV2, VisionTransformer
from timm.scheduler import CosineLRScheduler

from lab_common import (
    cache_dir,
    mean_confidence_interval,
    seed_everything,
    write_benchmark,
)
from lab_common.data import (
    DATASET_STATS,
    class_balanced_split,
    load_cifar10_tensors,
    load_fashion_mnist_tensors,
)
from lavit import LaViT

RESULTS = Path(__file__).parent / "results"
STATS = {name: DATASET_STATS[name] for name in ("cifar10", "fashion-mnist")}
STAGES = dict(depths=(2, 2, 2), embed_dims=(32, 64, 128), num_heads=(1, 2, 4), mlp_ratios=(4,) * 3)


def lavit_32(in_chans: int, **overrides) -> LaViT:
    """LaViT for 32x32 in the paper's layout: VA then LA in every stage, square maps."""
    args = dict(
        img_size=32,
        in_chans=in_chans,
        num_classes=10,
        la_depths=(1, 1, 1),
        sr_ratios=(1, 1, 1),
        la_input="softmax",
        **STAGES,
    )
    return LaViT(**{**args, **overrides})


def pvt_32(in_chans: int) -> nn.Module:
    """PVTv2 (timm) with the same stages, widths and heads (full-resolution keys)."""
    return PyramidVisionTransformerV2(
        in_chans=in_chans, num_classes=10, sr_ratios=(1, 1, 1), **STAGES
    )


def deit_32(in_chans: int) -> nn.Module:
    """Plain ViT/DeiT (timm), patch 4 (64 tokens), width chosen to match the parameter count."""
    return VisionTransformer(
        img_size=32,
        patch_size=4,
        in_chans=in_chans,
        num_classes=10,
        embed_dim=96,
        depth=5,
        num_heads=3,
    )


#: row name -> (builder(in_chans), DP-loss weight)
MODELS: dict[str, tuple[Callable[[int], nn.Module], float]] = {
    "LaViT": (lavit_32, 0.1),
    "all-VA": (lambda c: lavit_32(c, la_depths=(0, 0, 0)), 0.0),
    "no DP loss": (lavit_32, 0.0),
    "no attn residual": (lambda c: lavit_32(c, attn_residual=False), 0.1),
    "la_input=logits": (lambda c: lavit_32(c, la_input="logits"), 0.1),
    "0.1 layout": (
        lambda c: lavit_32(c, la_depths=(0, 1, 1), sr_ratios=(2, 1, 1), la_input="logits"),
        0.1,
    ),
    "LaViT + dwconv MLP": (lambda c: lavit_32(c, mlp_dwconv=True), 0.1),
    "PVTv2-style": (pvt_32, 0.0),
    "DeiT-style": (deit_32, 0.0),
}


def load_split(dataset: str, val_fraction: float, train_images: int, val_images: int) -> dict:
    """Normalised ``(N, C, 32, 32)`` train/val tensors of the class-balanced validation split."""
    if dataset == "cifar10":
        x, y, _ = load_cifar10_tensors()
    else:
        x, y = load_fashion_mnist_tensors(None, train=True)
        x = F.pad(x, (2, 2, 2, 2)).unsqueeze(1)
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in STATS[dataset])
    tr, va = class_balanced_split(y, val_fraction, seed=0)
    _, tr_pick = class_balanced_split(y[tr], train_images / len(tr), seed=0)
    _, va_pick = class_balanced_split(y[va], val_images / len(va), seed=0)
    tr, va = tr[tr_pick], va[va_pick]
    prep = lambda idx: (x[idx].float() / 255 - mean) / std  # noqa: E731
    return {"x_train": prep(tr), "y_train": y[tr], "x_val": prep(va), "y_val": y[va]}


def _augment(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random translation (zero padding ``pad``) and horizontal flip of ``(B, C, 32, 32)``."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4)
    dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=g).tolist()
    x = padded[:, :, dy : dy + h, dx : dx + w]
    flip = torch.rand(b, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def train_one(name: str, seed: int, data: dict, args: argparse.Namespace) -> tuple[dict, dict]:
    """Train one row's model with one seed; returns ``(result row, state dict)``."""
    builder, dp_weight = MODELS[name]
    seed_everything(seed)
    model = builder(data["x_train"].shape[1])
    params = sum(p.numel() for p in model.parameters())
    xtr, ytr = data["x_train"], data["y_train"]
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
    t0, step = time.perf_counter(), 0
    curve = []
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
        curve.append(evaluate(model, data))
    row = dict(
        model=name,
        seed=seed,
        params_M=params / 1e6,
        val_acc=curve[-1],
        curve=curve,
        train_s=time.perf_counter() - t0,
    )
    print(json.dumps(row), flush=True)
    return row, model.state_dict()


@torch.no_grad()
def evaluate(model: nn.Module, data: dict) -> float:
    """Top-1 (%) on the validation images."""
    model.eval()
    x, y = data["x_val"], data["y_val"]
    correct = sum(
        (model(x[i : i + 500]).argmax(-1) == y[i : i + 500]).sum().item()
        for i in range(0, len(x), 500)
    )
    return 100.0 * correct / len(x)


def seeds_to_separate(diffs: list[float], cap: int = 10_000) -> str:
    """The fewest seeds whose paired 95 % CI would exclude 0 if the observed mean difference
    and spread held (``t(n-1) * sd / sqrt(n) < |mean|``); ``f">{cap}"`` beyond ``cap``."""
    d = np.asarray(diffs, dtype=np.float64)
    mean, sd = abs(float(d.mean())), float(d.std(ddof=1))
    for n in range(2, cap + 1):
        if scipy.stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n) < mean:
            return str(n)
    return f">{cap}"


def summarise(runs: list[dict], names: list[str]) -> list[dict]:
    """One row per model: mean ± CI, the paired difference to LaViT (same seeds) and the seeds
    that difference would need for its CI to exclude 0."""
    base = {r["seed"]: r["val_acc"] for r in runs if r["model"] == "LaViT"}
    rows = []
    for name in names:
        rs = sorted((r for r in runs if r["model"] == name), key=lambda r: r["seed"])
        if not rs:
            continue
        mean, h = mean_confidence_interval([r["val_acc"] for r in rs])
        diffs = [r["val_acc"] - base[r["seed"]] for r in rs if r["seed"] in base]
        row = {
            "model": name,
            "params (M)": round(rs[0]["params_M"], 3),
            "val acc (%)": f"{mean:.2f} ± {h:.2f}",
            "per seed": ", ".join(f"{r['val_acc']:.2f}" for r in rs),
            "Δ vs LaViT (paired)": "",
            "seeds to separate": "",
            "train s/run": round(sum(r["train_s"] for r in rs) / len(rs)),
        }
        if name != "LaViT" and len(diffs) > 1:
            d, dh = mean_confidence_interval(diffs)
            row["Δ vs LaViT (paired)"] = f"{d:+.2f} ± {dh:.2f}"
            row["seeds to separate"] = seeds_to_separate(diffs)
        rows.append(row)
    return rows


def saturation(data: dict, work: Path, out: Path, dataset: str) -> list[dict]:
    """Consecutive-layer attention cosine of the trained seed-0 LaViTs, PVTv2- and DeiT-style."""
    from matplotlib.figure import Figure

    from lavit.analysis import capture_attention, consecutive_similarity

    images = data["x_val"][:64]
    rows, fig = [], Figure(figsize=(6.5, 3.5))
    ax = fig.subplots()
    names = ("LaViT", "LaViT + dwconv MLP", "PVTv2-style", "DeiT-style")
    for name, marker in zip(names, "o^sD", strict=True):
        path = work / f"{name}_seed0.pt"
        if not path.exists():
            continue
        model = MODELS[name][0](images.shape[1])
        model.load_state_dict(torch.load(path, weights_only=True))
        sims = consecutive_similarity(capture_attention(model, images))
        cos = [s["cosine"] for s in sims]
        ax.plot(cos, marker=marker, label=name)
        rows.append(
            dict(
                model=name,
                pairs=len(cos),
                mean_cosine=sum(cos) / len(cos),
                per_pair=", ".join(f"{c:.3f}" for c in cos),
            )
        )
    ax.set_xlabel("consecutive attention-layer pair (within a stage)")
    ax.set_ylabel("cosine of attention maps")
    ax.set_title(f"Attention saturation, trained on {dataset} (seed 0)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / f"saturation_{dataset}.png", dpi=110)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=tuple(STATS), default="cifar10")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--val-images", type=int, default=2000)
    p.add_argument("--train-images", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work-dir", default=None, help="default: <cache>/lavit-accuracy/<dataset>")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--report-only", action="store_true", help="table of the finished runs only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tag = f"{args.dataset}-{args.train_images}x{args.epochs}"
    work = Path(args.work_dir or cache_dir() / "lavit-accuracy" / tag)
    work.mkdir(parents=True, exist_ok=True)
    data = load_split(args.dataset, args.val_fraction, args.train_images, args.val_images)
    t0 = time.perf_counter()
    runs = []
    for seed in args.seeds:  # seed-major: an interrupted study has every model on early seeds
        for name in args.models:
            cached = work / f"{name}_seed{seed}.json"
            if cached.exists():
                runs.append(json.loads(cached.read_text()))
                continue
            if args.report_only:
                continue
            row, state = train_one(name, seed, data, args)
            if seed == 0:
                torch.save(state, work / f"{name}_seed0.pt")
            cached.write_text(json.dumps(row))
            runs.append(row)
    out = Path(args.out)
    setup = (
        f"{args.dataset} validation split ({len(data['y_val'])} of the held-out "
        f"{args.val_fraction:.0%} of the training images), {args.train_images} training images, "
        f"{args.epochs} epochs, batch {args.batch_size}, seeds {args.seeds} (fewer where a row "
        f"lists fewer), mean ± 95 % CI; {args.threads} thread(s); this call "
        f"{(time.perf_counter() - t0) / 60:.1f} min"
    )
    print(
        write_benchmark(summarise(runs, args.models), out, f"accuracy_{args.dataset}", title=setup)
    )
    (out / f"accuracy_{args.dataset}_runs.json").write_text(json.dumps(runs, indent=1))
    sat = saturation(data, work, out, args.dataset)
    if sat:
        print(write_benchmark(sat, out, f"saturation_{args.dataset}", title=f"saturation, {setup}"))


if __name__ == "__main__":
    main()
