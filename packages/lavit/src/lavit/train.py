"""Train a LaViT (or any timm) classifier: ``python -m lavit.train`` / ``lavit-train``.

Single process or ``torchrun --nproc_per_node N`` (DistributedDataParallel; gloo on CPU, nccl
on CUDA). AdamW, cosine schedule with warm-up, timm augmentation, mixup/cutmix, label
smoothing, drop path, optional EMA, AMP, the diagonality-preserving loss
(``total = CE + dp_loss_weight * loss_dp``), an atomic checkpoint ``<out>/last.pt`` after
every epoch and exact ``--resume`` (model, optimizer, EMA, scaler, RNG states, epoch and
step; the learning-rate schedule is recomputed from the settings at the resumed step, so a
setting changed with ``--allow-changed`` applies from there on).

The library entry point is :func:`train`, which takes a :class:`TrainConfig`; the command
line only builds that config (the run options are the project's trainer dialect,
:mod:`lab_common.cli`). ``--batch-size`` is per process: under ``torchrun`` with ``P``
processes a step sees ``P × batch_size`` images, and ``--lr`` is used as given (not scaled).

Example (Fashion-MNIST subset, 2 epochs on CPU)::

    python -m lavit.train --dataset fashion-mnist --data-root ../shared/datasets \
        --model lavit_tiny --img-size 32 --augment crop-flip --val-images 5000 \
        --epochs 2 --max-train-samples 2000 --out runs/fm
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from lab_common import (
    all_reduce_mean,
    autocast,
    progress,
    seed_everything,
)
from lab_common.cli import (
    HelpFormatter,
    add_run_arguments,
    check_model_name,
    config_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_console,
    start_options,
)
from lab_common.data import (
    DATASET_STATS,
    SeededSamples,
    build_image_dataset,
    dataset_num_classes,
    tensor_datasets,
    validation_split,
)
from lab_common.runs import (
    TrainingRun,
    load_optimizer_state,
    optimizer_step,
    print_summary,
    summary_line,
)

from .losses import DP_LOSS_VARIANTS

__all__ = ["MODELS_HINT", "TrainConfig", "build_parser", "cli", "main", "train"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (``asdict(cfg)`` is stored in every checkpoint).

    Sizes are per process: ``batch_size`` images per step and rank, ``workers`` DataLoader
    processes per rank. ``lr`` is the peak learning rate, used as given whatever the number of
    processes.
    """

    #: ``fashion-mnist``, ``mnist``, ``cifar10``, ``cifar100`` or an ImageNet-style folder.
    dataset: str = "fashion-mnist"
    #: folder holding the named dataset (``None``: the shared datasets folder).
    data_root: str | None = None
    #: any timm model name (``lavit_*`` once ``lavit`` is imported).
    model: str = "lavit_tiny"
    #: extra keyword arguments for ``timm.create_model``, e.g. ``{"depths": (1, 1, 1, 1)}``.
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    img_size: int = 224
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 5
    weight_decay: float = 0.05
    #: max gradient norm (``None``: no clipping).
    clip_grad: float | None = None
    drop_path: float = 0.1
    smoothing: float = 0.1
    mixup: float = 0.8
    cutmix: float = 1.0
    #: timm auto-augment policy, e.g. ``"rand-m9-mstd0.5-inc1"`` (``None``: off).
    aa: str | None = None
    #: random-resized-crop area range.
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    #: random-erasing probability.
    reprob: float = 0.0
    #: λ_DP, the weight of the diagonality-preserving loss (0 disables it).
    dp_loss_weight: float = 0.1
    dp_loss_variant: str = "intended"
    #: EMA decay (0 disables EMA), e.g. 0.9998.
    ema_decay: float = 0.0
    amp: bool = False
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    #: hold out this many class-balanced training images (a fixed draw from ``val_seed``) as
    #: the evaluation split; the test split is then not read (``None``: evaluate on it).
    val_images: int | None = None
    val_seed: int = 0
    #: fetch a missing named dataset with torchvision into ``data_root``.
    download: bool = False
    #: ``"timm"``: timm's training transform on PIL images (random-resized crop, flip, ``aa``,
    #: ``reprob``) at ``img_size``; ``"crop-flip"``: the named datasets as in-memory tensors,
    #: zero-padded from their own size to ``img_size``, random crop with 1/8 zero padding and
    #: horizontal flip, normalised with the dataset's statistics (small-image studies).
    augment: str = "timm"
    #: train on a fixed random subset of this many images (``None``: all).
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    #: output folder: ``last.pt``, ``config.json``, ``metrics.jsonl``, ``curves.png``,
    #: ``model.pth``.
    out: str = "runs/lavit"
    #: stop cleanly after this epoch (time-limited jobs; continue with ``resume=True``).
    stop_after_epoch: int | None = None
    #: progress bar on a terminal, a progress line every 30 s in a log.
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("img_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_epochs", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_train_samples", "max_val_samples", "stop_after_epoch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None (no limit), got {value}")
        if not isinstance(self.model_kwargs, Mapping):
            raise ValueError(
                f"model_kwargs must be a dict of timm.create_model arguments, "
                f"got {type(self.model_kwargs).__name__}: {self.model_kwargs!r}"
            )
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.val_images is not None and self.val_images < 1:
            raise ValueError(
                f"val_images must be >= 1 or None (the test split), got {self.val_images}"
            )
        if self.dp_loss_variant not in DP_LOSS_VARIANTS:
            raise ValueError(
                f"dp_loss_variant must be one of {DP_LOSS_VARIANTS}, got {self.dp_loss_variant!r}"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) (0 disables EMA), got {self.ema_decay}")


class ToRGB:
    """Convert any PIL image to 3-channel RGB (grayscale datasets such as Fashion-MNIST)."""

    def __call__(self, img: Any) -> Any:
        return img.convert("RGB")


#: Training augmentations (``TrainConfig.augment``).
AUGMENTS = ("timm", "crop-flip")
#: Settings a resumed run may change freely: where and how it runs, not what it computes.
_RUN_ONLY = ("device", "workers", "progress", "out", "stop_after_epoch", "download")
#: Settings a resumed run may not change: the checkpoint holds that model, trained on that data,
#: and its RNG states continue the seed's streams (which also picks the ``max_*_samples`` subsets).
_FIXED = ("dataset", "model", "model_kwargs", "img_size", "seed", "val_images", "val_seed")
#: What a run writes in ``out``: what ``overwrite`` deletes.
RUN_FILES = ("last.pt", "last.prev.pt", "config.json", "metrics.jsonl", "curves.png", "model.pth")


#: How an unknown-model error lists the LaViT variants (:func:`lab_common.cli.check_model_name`).
MODELS_HINT = "timm.list_models('lavit*') lists the LaViT variants (after import lavit)"


def json_dict(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON dict such as '{{\"depths\": [1, 1, 1, 1]}}', got {text!r}"
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``lavit-train`` parser; :func:`main` turns its namespace into a :class:`TrainConfig`."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="lavit-train",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    add_run_arguments(p, d, duration="epochs")
    g = p.add_argument_group("data and model")
    a = g.add_argument
    a(
        "--dataset",
        required=True,
        help="fashion-mnist, mnist, cifar10, cifar100 or an ImageNet-style folder (train/, val/)",
    )
    a("--model", default=d.model, help="any timm model name (lavit_* after import lavit)")
    a(
        "--model-kwargs",
        type=json_dict,
        default=d.model_kwargs,
        help="JSON dict passed to timm.create_model, e.g. '{\"depths\": [1,1,1,1]}'",
    )
    a("--img-size", type=positive_int, default=d.img_size)
    a(
        "--val-images",
        type=positive_int,
        default=None,
        help="hold out N class-balanced training images as the evaluation split (the test "
        "split is then not read); default: evaluate on the test split",
    )
    a("--val-seed", type=non_negative_int, default=d.val_seed, help="of --val-images")
    a(
        "--augment",
        default=d.augment,
        choices=AUGMENTS,
        help="timm: timm's transform at --img-size; crop-flip: the named datasets in memory, "
        "zero-padded to --img-size, random crop (1/8 padding) + flip",
    )
    a("--max-train-samples", type=positive_int, default=None, help="random subset for quick runs")
    a("--max-val-samples", type=positive_int, default=None)
    g = p.add_argument_group("optimisation")
    a = g.add_argument
    a("--lr", type=positive_float, default=d.lr, help="peak learning rate, used as given")
    a("--min-lr", type=non_negative_float, default=d.min_lr)
    a("--warmup-lr", type=non_negative_float, default=d.warmup_lr)
    a("--warmup-epochs", type=non_negative_int, default=d.warmup_epochs)
    a("--weight-decay", type=non_negative_float, default=d.weight_decay)
    a("--clip-grad", type=positive_float, default=None, help="max grad norm (off by default)")
    a("--drop-path", type=non_negative_float, default=d.drop_path)
    a("--smoothing", type=non_negative_float, default=d.smoothing)
    a("--ema-decay", type=non_negative_float, default=d.ema_decay, help="0 disables EMA")
    a(
        "--dp-loss-weight",
        type=non_negative_float,
        default=d.dp_loss_weight,
        help="lambda_DP (0 disables the DP loss)",
    )
    a("--dp-loss-variant", default=d.dp_loss_variant, choices=DP_LOSS_VARIANTS)
    a(
        "--stop-after-epoch",
        type=positive_int,
        default=None,
        help="exit after this epoch (time-limited jobs; continue with --resume)",
    )
    g = p.add_argument_group("augmentation (timm.data)")
    a = g.add_argument
    a("--mixup", type=non_negative_float, default=d.mixup)
    a("--cutmix", type=non_negative_float, default=d.cutmix)
    a("--aa", default=None, help="timm auto-augment policy, e.g. rand-m9-mstd0.5-inc1")
    a("--scale", type=positive_float, nargs=2, default=d.scale, help="random-resized-crop scale")
    a("--hflip", type=non_negative_float, default=d.hflip)
    a("--reprob", type=non_negative_float, default=d.reprob, help="random erasing probability")
    return p


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(ds, idx.tolist())


def _datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset, int, int]:
    """``(train, eval, num_classes, in_chans)``: the evaluation split is the test split, or
    ``cfg.val_images`` class-balanced training images; training items are drawn per index
    and epoch (:class:`~lab_common.data.SeededSamples`), whatever the number of workers."""
    if cfg.augment == "crop-flip":
        if cfg.dataset.lower().replace("_", "-") not in DATASET_STATS:
            raise ValueError(
                f"augment='crop-flip' (--augment) needs a named dataset ({', '.join(DATASET_STATS)}), "
                f"got {cfg.dataset!r}; use --augment timm for image folders"
            )
        train_ds, val_ds, num_classes, in_chans = tensor_datasets(
            cfg.dataset,
            cfg.data_root,
            val_images=cfg.val_images,
            val_seed=cfg.val_seed,
            size=cfg.img_size,
            download=cfg.download,
        )
    else:
        common = dict(
            input_size=cfg.img_size,
            interpolation="bicubic",
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
        )
        train_tf = create_transform(
            is_training=True,
            scale=cfg.scale,
            hflip=cfg.hflip,
            auto_augment=cfg.aa,
            re_prob=cfg.reprob,
            **common,
        )
        val_tf = transforms.Compose(
            [ToRGB(), create_transform(is_training=False, crop_pct=1.0, **common)]
        )
        train_tf = transforms.Compose([ToRGB(), train_tf])
        get = partial(build_image_dataset, cfg.dataset, cfg.data_root, download=cfg.download)
        train_ds = get(True, train_tf)
        num_classes, in_chans = dataset_num_classes(train_ds), 3
        if cfg.val_images is not None:
            plain = get(True, val_tf)
            train_idx, val_idx = validation_split(train_ds.targets, cfg.val_images, cfg.val_seed)
            train_ds, val_ds = Subset(train_ds, train_idx.tolist()), Subset(plain, val_idx.tolist())
        else:
            val_ds = get(False, val_tf)
    train_ds = _subset(train_ds, cfg.max_train_samples, cfg.seed)
    val_ds = _subset(val_ds, cfg.max_val_samples, cfg.seed + 1)
    return SeededSamples(train_ds), val_ds, num_classes, in_chans


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


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changed: Sequence[str] = (),
) -> nn.Module:
    """Train as configured by ``cfg``; returns the trained model (not the EMA copy).

    Every epoch writes ``<out>/last.pt`` atomically (the epoch before stays as
    ``last.prev.pt``); ``resume=True`` continues exactly from it (an interrupted run resumed
    ends bit-identical to an uninterrupted one), falling back to ``last.prev.pt`` with a warning
    when ``last.pt`` is unreadable. At the end ``<out>/model.pth`` holds the EMA weights if EMA
    is on, else the model's, loadable by timm. The output-folder and resume rules are
    :mod:`lab_common.runs`' rules: a fresh run refuses a non-empty ``out`` unless ``overwrite``
    (which deletes :data:`RUN_FILES` only); a resume refuses settings that differ from the
    checkpoint's unless ``allow_changed`` names them (never ``dataset``, ``model``,
    ``model_kwargs``, ``img_size`` or ``seed``), and a changed setting applies from the resume
    on (``lr``, ``min_lr``, ``warmup_*``, ``epochs`` reshape the schedule at the resumed step).
    A resume with nothing left to train leaves the folder as it is.

    Raises:
        ValueError: an unknown model name, a dataset smaller than one global batch, a
            ``last.pt`` that is corrupt when resuming, changed or fixed settings, or ``epochs``
            below the checkpoint's epoch.
        FileExistsError / FileNotFoundError: the output-folder rules above.
        FloatingPointError: a non-finite loss (the last epoch's checkpoint is kept).
    """
    check_model_name(cfg.model, timm.is_model, "--model", MODELS_HINT)
    run = TrainingRun.open(
        cfg, RUN_FILES, resume=resume, overwrite=overwrite, keep=(cfg.dataset, cfg.data_root)
    )
    ctx, device = run.ctx, run.ctx.device
    seed_everything(cfg.seed + ctx.rank)
    model_kwargs = dict(cfg.model_kwargs)

    train_ds, val_ds, num_classes, in_chans = _datasets(cfg)
    sampler = run.sampler(train_ds, cfg.seed, cfg.batch_size)
    train_loader = DataLoader(
        train_ds, cfg.batch_size, sampler=sampler, num_workers=cfg.workers, drop_last=True
    )
    val_shard = Subset(val_ds, list(range(ctx.rank, len(val_ds), ctx.world_size)))
    val_loader = DataLoader(val_shard, cfg.batch_size, num_workers=cfg.workers)

    is_lavit = cfg.model.startswith("lavit")
    if is_lavit:  # LaViT is built for one input size and knows the DP loss variant
        model_kwargs = dict(
            img_size=cfg.img_size, dp_loss_variant=cfg.dp_loss_variant, **model_kwargs
        )
    if cfg.augment == "crop-flip":  # the dataset's own channels (timm's path makes RGB)
        model_kwargs.setdefault("in_chans", in_chans)
    model = timm.create_model(
        cfg.model, num_classes=num_classes, drop_path_rate=cfg.drop_path, **model_kwargs
    ).to(device)
    use_dp = is_lavit and cfg.dp_loss_weight > 0
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=cfg.epochs,
        min_lr=cfg.min_lr,
        warmup_lr=cfg.warmup_lr,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=len(train_loader),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(
            mixup_alpha=cfg.mixup,
            cutmix_alpha=cfg.cutmix,
            label_smoothing=cfg.smoothing,
            num_classes=num_classes,
        )
        criterion: nn.Module = SoftTargetCrossEntropy()
    elif cfg.smoothing > 0:
        criterion = LabelSmoothingCrossEntropy(cfg.smoothing)
    else:
        criterion = nn.CrossEntropyLoss()

    step = 0
    if resume:
        state = run.restore(
            asdict(cfg), allow_changed=allow_changed, always_allowed=_RUN_ONLY, fixed=_FIXED
        )
        step = state["step"]
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.step_update(num_updates=step)  # this run's schedule, at the resumed step
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{run.last} holds no EMA state but ema_decay > 0 (--ema-decay)")
            ema.load_state_dict(state["ema"])
    eval_split = "val" if cfg.val_images is not None else "test"
    ddp = run.begin(model, asdict(cfg), eval_split)
    for epoch in run.remaining():
        ddp.train()
        sampler.set_epoch(epoch)
        train_ds.set_epoch(cfg.seed * 1_000_003 + epoch)
        t0 = time.perf_counter()
        sums = torch.zeros(3, dtype=torch.float64)
        bar = progress(
            train_loader,
            enabled=ctx.is_main and cfg.progress,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
        )
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            if mixup is not None:
                x, y = mixup(x, y)
            with autocast(device, enabled=cfg.amp):
                if use_dp:
                    logits, aux = ddp(x, return_aux=True)
                    loss_dp = aux["loss_dp"]
                else:
                    logits, loss_dp = ddp(x), torch.zeros((), device=device)
                loss_ce = criterion(logits.float(), y)
                loss = loss_ce + cfg.dp_loss_weight * loss_dp
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at epoch {epoch + 1} step {step}: the weights "
                    "diverged; lower --lr or add --clip-grad and start again"
                )
            clip = None if cfg.clip_grad is None else (model, cfg.clip_grad)
            optimizer_step(loss, optimizer, scaler, clip)
            step += 1
            scheduler.step_update(num_updates=step)
            if ema is not None:
                ema.update(model, step=step)
            sums += torch.tensor([loss_ce.item(), float(loss_dp.item()), 1.0], dtype=torch.float64)
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
            {f"val_{k}": v for k, v in evaluate(model, val_loader, device, cfg.amp).items()}
        )
        if ema is not None:
            ema_metrics = evaluate(ema.module, val_loader, device, cfg.amp)
            record.update({f"val_ema_{k}": v for k, v in ema_metrics.items()})
        diverged = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if diverged:
            raise FloatingPointError(
                f"epoch {epoch + 1}: non-finite {', '.join(diverged)} (the weights diverged); "
                f"the checkpoint of epoch {epoch} is kept; lower --lr or add --clip-grad"
            )
        run.end_epoch(
            record,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "epoch": epoch + 1,
                "step": step,
                "config": asdict(cfg),
            },
        )
    run.finish((ema.module if ema is not None else model).state_dict())
    run.close()
    return model


def main(argv: Sequence[str] | None = None) -> nn.Module:
    """``lavit-train`` without the exit status: parse ``argv``, build the config, train, print
    the summary line."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(TrainConfig, args)
    model = train(cfg, **start_options(args))
    out = Path(cfg.out)
    print_summary(summary_line("lavit-train", out / "metrics.jsonl", out / "model.pth"))
    return model


def cli() -> int:
    """Console script ``lavit-train``: 0 on success, 2 with one line on a user error, 1 with
    one line on a non-finite loss."""
    return run_console(main, prog="lavit-train")


if __name__ == "__main__":
    raise SystemExit(cli())
