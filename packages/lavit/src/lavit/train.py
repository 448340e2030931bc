"""Train a LaViT (or any timm) classifier: ``python -m lavit.train`` / ``lavit-train``.

Single process or ``torchrun --nproc_per_node N`` (DistributedDataParallel; gloo on CPU, nccl
on CUDA). AdamW, cosine schedule with warm-up, timm augmentation, mixup/cutmix, label
smoothing, drop path, optional EMA, AMP, the diagonality-preserving loss
(``total = CE + dp_loss_weight * loss_dp``), an atomic checkpoint after every epoch and exact
``--resume`` (model, optimizer, scheduler, EMA, scaler, RNG states, epoch and step).

Example (Fashion-MNIST subset, 2 epochs on CPU)::

    python -m lavit.train --dataset fashion-mnist --data-root ../shared/datasets \
        --model lavit_tiny --img-size 32 --model-kwargs '{"sr_ratios": [2, 1, 1, 1]}' \
        --epochs 2 --max-train-samples 2000 --output runs/fm
"""

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import transforms

from lab_common import (
    MetricsLogger,
    all_reduce_mean,
    autocast,
    barrier,
    build_image_dataset,
    cleanup_distributed,
    dataset_num_classes,
    init_distributed,
    load_checkpoint,
    plot_metrics,
    progress,
    save_checkpoint,
    seed_everything,
)

from .losses import DP_LOSS_VARIANTS

__all__ = ["build_parser", "main", "train"]


class ToRGB:
    """Convert any PIL image to 3-channel RGB (grayscale datasets such as Fashion-MNIST)."""

    def __call__(self, img: Any) -> Any:
        return img.convert("RGB")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lavit-train", description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--dataset", required=True, help="fashion-mnist, mnist, cifar10, cifar100 or a folder path")
    a("--data-root", default=None, help="folder holding the named dataset")
    a("--model", default="lavit_tiny", help="any timm model name (lavit_* after import lavit)")
    a(
        "--model-kwargs",
        default="{}",
        help='JSON dict passed to timm.create_model, e.g. {"depths": [1,1,1,1]}',
    )
    a("--img-size", type=int, default=224)
    a("--epochs", type=int, default=300)
    a("--batch-size", type=int, default=128, help="per process")
    a("--lr", type=float, default=1e-3, help="peak learning rate (for the global batch)")
    a("--min-lr", type=float, default=1e-5)
    a("--warmup-lr", type=float, default=1e-6)
    a("--warmup-epochs", type=int, default=5)
    a("--weight-decay", type=float, default=0.05)
    a("--clip-grad", type=float, default=None, help="max grad norm (off by default)")
    a("--drop-path", type=float, default=0.1)
    a("--smoothing", type=float, default=0.1)
    a("--mixup", type=float, default=0.8)
    a("--cutmix", type=float, default=1.0)
    a("--aa", default=None, help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1")
    a("--scale", type=float, nargs=2, default=(0.08, 1.0), help="random-resized-crop scale")
    a("--hflip", type=float, default=0.5)
    a("--reprob", type=float, default=0.0, help="random erasing probability")
    a("--dp-loss-weight", type=float, default=0.1, help="lambda_DP (0 disables the DP loss)")
    a("--dp-loss-variant", default="intended", choices=DP_LOSS_VARIANTS)
    a("--ema-decay", type=float, default=0.0, help="EMA decay (0 disables EMA), e.g. 0.9998")
    a("--amp", action="store_true", help="mixed precision (bf16 on CPU, fp16 on CUDA)")
    a("--device", default="auto")
    a("--workers", type=int, default=2)
    a("--seed", type=int, default=0)
    a("--max-train-samples", type=int, default=None, help="random subset for quick runs")
    a("--max-val-samples", type=int, default=None)
    a("--output", default="runs/lavit", help="checkpoint.pth, metrics.jsonl, curves.png go here")
    a("--resume", default=None, help="checkpoint.pth to continue from exactly")
    a(
        "--stop-after-epoch",
        type=int,
        default=None,
        help="exit after this epoch (time-limited jobs)",
    )
    a("--no-progress", action="store_true")
    return p


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(ds, idx.tolist())


def _datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset, int]:
    common = dict(
        input_size=args.img_size,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
    )
    train_tf = create_transform(
        is_training=True,
        scale=tuple(args.scale),
        hflip=args.hflip,
        auto_augment=args.aa,
        re_prob=args.reprob,
        **common,
    )
    val_tf = create_transform(is_training=False, crop_pct=1.0, **common)
    train_ds = build_image_dataset(
        args.dataset, args.data_root, True, transforms.Compose([ToRGB(), train_tf])
    )
    val_ds = build_image_dataset(
        args.dataset, args.data_root, False, transforms.Compose([ToRGB(), val_tf])
    )
    num_classes = dataset_num_classes(train_ds)
    train_ds = _subset(train_ds, args.max_train_samples, args.seed)
    val_ds = _subset(val_ds, args.max_val_samples, args.seed + 1)
    return train_ds, val_ds, num_classes


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002 (the global state Mixup draws from)
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002 (timm Mixup uses it)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> dict:
    """Loss and top-1 accuracy (%) over this rank's shard, summed across ranks."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast(device, enabled=amp):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct = (logits.argmax(-1) == y).sum()
        totals += torch.stack([loss.cpu().double(), correct.cpu().double(), torch.tensor(len(y))])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        totals = all_reduce_mean(totals.to(device)).cpu()  # mean of sums: ratios unchanged
    n = max(totals[2].item(), 1.0)
    return {"loss": totals[0].item() / n, "top1": 100.0 * totals[1].item() / n}


def train(args: argparse.Namespace) -> nn.Module:
    """Run training as configured by ``args`` (see :func:`build_parser`); returns the model."""
    ctx = init_distributed(device=args.device)
    device = ctx.device
    seed_everything(args.seed + ctx.rank)
    out = Path(args.output)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "args.json").write_text(json.dumps(vars(args), indent=2))
    try:
        model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model-kwargs must be a JSON dict, got {args.model_kwargs!r}") from err

    train_ds, val_ds, num_classes = _datasets(args)
    if len(train_ds) < args.batch_size * ctx.world_size:
        raise ValueError(
            f"{len(train_ds)} training samples are fewer than one global batch "
            f"({args.batch_size} x {ctx.world_size}); lower --batch-size"
        )
    sampler = DistributedSampler(
        train_ds,
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=args.seed,
        drop_last=True,
    )
    train_loader = DataLoader(
        train_ds, args.batch_size, sampler=sampler, num_workers=args.workers, drop_last=True
    )
    val_shard = Subset(val_ds, list(range(ctx.rank, len(val_ds), ctx.world_size)))
    val_loader = DataLoader(val_shard, args.batch_size, num_workers=args.workers)

    is_lavit = args.model.startswith("lavit")
    if is_lavit:  # LaViT is built for one input size and knows the DP loss variant
        model_kwargs = dict(
            img_size=args.img_size, dp_loss_variant=args.dp_loss_variant, **model_kwargs
        )
    model = timm.create_model(
        args.model, num_classes=num_classes, drop_path_rate=args.drop_path, **model_kwargs
    ).to(device)
    use_dp = is_lavit and args.dp_loss_weight > 0
    ema = ModelEmaV3(model, decay=args.ema_decay) if args.ema_decay > 0 else None
    optimizer = create_optimizer_v2(model, opt="adamw", lr=args.lr, weight_decay=args.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=args.epochs,
        min_lr=args.min_lr,
        warmup_lr=args.warmup_lr,
        warmup_epochs=args.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=len(train_loader),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and device.type == "cuda")
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=args.mixup,
            cutmix_alpha=args.cutmix,
            label_smoothing=args.smoothing,
            num_classes=num_classes,
        )
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif args.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(args.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    start_epoch, step = 0, 0
    if args.resume:
        state = load_checkpoint(args.resume, map_location="cpu")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{args.resume} holds no EMA state but --ema-decay > 0")
            ema.load_state_dict(state["ema"])
        start_epoch, step = state["epoch"], state["step"]
        _set_rng_state(state["rng"][ctx.rank] if ctx.rank < len(state["rng"]) else state["rng"][0])

    ddp = DistributedDataParallel(model) if ctx.distributed else model
    logger = MetricsLogger(out / "metrics.jsonl", enabled=ctx.is_main)
    for epoch in range(start_epoch, args.epochs):
        ddp.train()
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64)
        bar = progress(
            train_loader, enabled=ctx.is_main and not args.no_progress, desc=f"epoch {epoch}"
        )
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            if mixup is not None:
                x, y = mixup(x, y)
            with autocast(device, enabled=args.amp):
                if use_dp:
                    logits, aux = ddp(x, return_aux=True)
                    loss_dp = aux["loss_dp"]
                else:
                    logits, loss_dp = ddp(x), torch.zeros((), device=device)
                loss_ce = criterion(logits.float(), y)
                loss = loss_ce + args.dp_loss_weight * loss_dp
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at epoch {epoch} step {step}"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if args.clip_grad is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            scheduler.step_update(num_updates=step)
            if ema is not None:
                ema.update(model, step=step)
            sums += torch.tensor([loss_ce.item(), float(loss_dp.item()), 1.0], dtype=torch.float64)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(
                    loss=f"{loss_ce.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}"
                )
        scheduler.step(epoch + 1)
        sums = all_reduce_mean(sums.to(device)).cpu()
        record = dict(
            epoch=epoch + 1,
            step=step,
            lr=optimizer.param_groups[0]["lr"],
            train_loss=sums[0].item() / sums[2].item(),
            train_loss_dp=sums[1].item() / sums[2].item(),
            epoch_time_s=time.perf_counter() - t0,
        )
        record.update(
            {f"val_{k}": v for k, v in evaluate(model, val_loader, device, args.amp).items()}
        )
        if ema is not None:
            ema_metrics = evaluate(ema.module, val_loader, device, args.amp)
            record.update({f"val_ema_{k}": v for k, v in ema_metrics.items()})
        rng = [_rng_state()]
        if ctx.distributed:
            rng = [None] * ctx.world_size
            torch.distributed.all_gather_object(rng, _rng_state())
        if ctx.is_main:
            logger.log(**record)
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "epoch": epoch + 1,
                    "step": step,
                    "rng": rng,
                    "args": vars(args),
                },
                out / "checkpoint.pth",
            )
        barrier()
        if args.stop_after_epoch is not None and epoch + 1 >= args.stop_after_epoch:
            break
    if ctx.is_main and (out / "metrics.jsonl").exists():
        final = ema.module if ema is not None else model
        save_checkpoint(final.state_dict(), out / "model.pth")
        plot_metrics(out / "metrics.jsonl", out / "curves.png")
    cleanup_distributed()
    return model


def main(argv: list[str] | None = None) -> None:
    train(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
