"""Train a detector or a semantic segmenter on a LaViT (or any timm) backbone: ``lavit-train-dense``.

Tasks: ``retinanet`` and ``maskrcnn`` (torchvision's detectors, :mod:`lavit.detection`) read a
COCO-format folder (``images/`` + ``annotations.json``, through
:class:`lavit.dense_data.CocoFolder`: category ids mapped to labels ``1..K`` in sorted order,
recorded as ``category_ids`` in ``config.json``) and report COCO box (and mask) AP with
pycocotools; ``semantic_fpn`` (:mod:`lavit.segmentation`) reads a folder of image/mask pairs (``images/`` +
``masks/``, same file names, mask values = class, 255 = ignore) and reports mIoU and pixel
accuracy. The backbone is any timm name (``lavit_tiny``, ``pvt_v2_b1``, ...), so the same
command runs LaViT and PVTv2 side by side.

Single process or ``torchrun --nproc_per_node N`` (DistributedDataParallel; gloo on CPU, nccl
on CUDA): the training set is sharded, evaluation runs on rank 0. AdamW with warm-up and cosine
decay per step (:func:`lavit.detection.dense_optimizer`), gradient clipping, optional AMP, a
JSON line per epoch in ``<out>/metrics.jsonl``, an atomic ``<out>/last.pt`` after every epoch
and exact ``--resume`` (the schedule is recomputed from the settings at the resumed step, so a
setting changed with ``--allow-changed`` applies from there on); the run options are the
project's trainer dialect (:mod:`lab_common.cli`). ``--batch-size`` is per process.

Example (synthetic scenes from :func:`lavit.dense_data.make_scenes`)::

    lavit-train-dense --task retinanet --train-root scenes/train --val-root scenes/val \
        --backbone lavit_tiny --min-size 128 --max-size 128 --epochs 12 --out runs/det
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

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
from lab_common.runs import (
    TrainingRun,
    load_optimizer_state,
    optimizer_step,
    print_summary,
    summary_line,
)

from .dense_data import CocoFolder, SegmentationFolder
from .detection import (
    collate_detection,
    dense_optimizer,
    detection_losses,
    evaluate_detector,
    maskrcnn_fpn,
    retinanet_fpn,
)
from .segmentation import SemanticFPN, evaluate_segmenter
from .train import MODELS_HINT, json_dict

__all__ = ["TASKS", "DenseTrainConfig", "build_parser", "cli", "main", "train_dense"]

#: task name -> what it reads
TASKS = {
    "retinanet": "COCO folder (boxes)",
    "maskrcnn": "COCO folder (boxes and instance masks)",
    "semantic_fpn": "image/mask-pair folder",
}

#: Settings a resumed run may change freely: where and how it runs, not what it computes.
_RUN_ONLY = ("device", "workers", "progress", "out", "stop_after_epoch", "eval_batch_size")
#: Settings a resumed run may not change: the checkpoint holds that model, and its RNG states
#: continue the seed's streams.
_FIXED = ("task", "backbone", "backbone_kwargs", "num_classes", "fpn_channels", "seed")
#: What a run writes in ``out``: what ``overwrite`` deletes.
RUN_FILES = ("last.pt", "last.prev.pt", "config.json", "metrics.jsonl", "curves.png", "model.pth")


@dataclass(frozen=True)
class DenseTrainConfig:
    """Everything one dense-prediction run depends on (stored in every checkpoint)."""

    #: ``retinanet``, ``maskrcnn`` or ``semantic_fpn`` (see :data:`TASKS`).
    task: str = "retinanet"
    #: training folder: COCO (``images/`` + ``annotations.json``) or image/mask pairs.
    train_root: str = ""
    #: validation folder of the same kind (``None``: no evaluation, only training losses).
    val_root: str | None = None
    #: any timm model name with a 4-stage pyramid (``lavit_*`` once ``lavit`` is imported).
    backbone: str = "lavit_tiny"
    #: extra keyword arguments for the backbone's ``timm.create_model``.
    backbone_kwargs: Mapping[str, Any] = field(default_factory=dict)
    #: classes including the background (``None``: COCO tasks use ``K + 1`` for the ``K``
    #: categories, whose ids map to labels ``1..K`` in sorted order; ``semantic_fpn`` needs it).
    num_classes: int | None = None
    fpn_channels: int = 256
    #: detectors' resize range (torchvision ``GeneralizedRCNNTransform``).
    min_size: int = 800
    max_size: int = 1333
    epochs: int = 12
    batch_size: int = 2
    eval_batch_size: int = 4
    lr: float = 2e-4
    weight_decay: float = 0.05
    #: linear warm-up steps (``None``: 10 % of all steps).
    warmup_steps: int | None = None
    #: max gradient norm (``None``: no clipping).
    clip_grad: float | None = 1.0
    amp: bool = False
    device: str = "auto"
    workers: int = 2
    seed: int = 0
    #: output folder: ``last.pt``, ``config.json``, ``metrics.jsonl``, ``curves.png``,
    #: ``model.pth``.
    out: str = "runs/lavit-dense"
    #: stop cleanly after this epoch (time-limited jobs; continue with ``resume=True``).
    stop_after_epoch: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {tuple(TASKS)}, got {self.task!r}")
        if not self.train_root:
            raise ValueError("train_root is required (--train-root): the training folder")
        for name in ("fpn_channels", "min_size", "max_size", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_batch_size < 1 or self.workers < 0:
            raise ValueError("eval_batch_size must be >= 1 and workers >= 0")
        if self.num_classes is not None and self.num_classes < 2:
            raise ValueError(
                f"num_classes counts the background and must be >= 2, got {self.num_classes}"
            )
        if self.task == "semantic_fpn" and self.num_classes is None:
            raise ValueError(
                "semantic_fpn needs num_classes (--num-classes): the number of mask values, "
                "background included (255 is ignored)"
            )
        if not isinstance(self.backbone_kwargs, Mapping):
            raise ValueError(
                f"backbone_kwargs must be a dict of timm.create_model arguments, "
                f"got {type(self.backbone_kwargs).__name__}"
            )


def _is_detection(task: str) -> bool:
    return task != "semantic_fpn"


def _dataset(cfg: DenseTrainConfig, root: str, train: bool) -> Dataset:
    """The task's dataset, its data checked before any training (see the two classes)."""
    if _is_detection(cfg.task):
        return CocoFolder(root, train=train, with_masks=cfg.task == "maskrcnn")
    return SegmentationFolder(root, train=train, num_classes=cfg.num_classes)


def _category_ids(cfg: DenseTrainConfig, train_ds: Dataset, val_ds: Dataset | None) -> list[int]:
    """The COCO category ids of labels ``1..K`` (empty for ``semantic_fpn``), checked."""
    if not _is_detection(cfg.task):
        return []
    ids = train_ds.category_ids
    if val_ds is not None and val_ds.category_ids != ids:
        raise ValueError(
            f"{val_ds.annotation_file} lists categories {val_ds.category_ids}, the training "
            f"set {ids}: both need the same categories"
        )
    if cfg.num_classes is not None and cfg.num_classes != len(ids) + 1:
        raise ValueError(
            f"num_classes {cfg.num_classes} (--num-classes) does not fit the {len(ids)} "
            f"categories of {train_ds.annotation_file} plus the background: use {len(ids) + 1} "
            "or leave it out"
        )
    return ids


def build_model(cfg: DenseTrainConfig, num_classes: int) -> nn.Module:
    """The task's model on ``cfg.backbone`` (torchvision detector or :class:`SemanticFPN`)."""
    common = dict(fpn_channels=cfg.fpn_channels, backbone_kwargs=dict(cfg.backbone_kwargs))
    if cfg.task == "semantic_fpn":
        return SemanticFPN(cfg.backbone, num_classes, **common)
    builder = retinanet_fpn if cfg.task == "retinanet" else maskrcnn_fpn
    return builder(
        cfg.backbone, num_classes, min_size=cfg.min_size, max_size=cfg.max_size, **common
    )


def _losses(model: nn.Module, batch: tuple, device: torch.device, detection: bool) -> dict:
    """The training losses of one batch: torchvision's loss dict, or ``{"ce": ...}``."""
    images, targets = batch
    if detection:
        return detection_losses(model, images, targets, device)
    logits = model(images.to(device))
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    return {"ce": inner.loss(logits.float(), targets.to(device))}


def evaluate(cfg: DenseTrainConfig, model: nn.Module, val_ds: Dataset, device) -> dict:
    """COCO AP (``bbox_*``, ``segm_*``; ``None`` without ground truth) or ``mIoU`` /
    ``pixel_acc`` on the validation set."""
    if _is_detection(cfg.task):
        return evaluate_detector(
            model,
            val_ds,
            val_ds.annotation_file,
            cfg.eval_batch_size,
            device,
            category_ids=val_ds.category_ids,
        )
    metrics = evaluate_segmenter(model, val_ds, cfg.eval_batch_size, device)
    return {k: metrics[k] for k in ("mIoU", "pixel_acc")}


def train_dense(
    cfg: DenseTrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changed: Sequence[str] = (),
) -> nn.Module:
    """Train as configured by ``cfg``; returns the trained model.

    Every epoch writes ``<out>/last.pt`` atomically (the one before stays as ``last.prev.pt``)
    and one JSON line (mean training losses, learning rate, epoch time, validation metrics) to
    ``<out>/metrics.jsonl``; ``resume=True`` continues exactly from ``last.pt``. At the end
    ``<out>/model.pth`` holds the weights. The output-folder and resume rules are
    :mod:`lab_common.runs`' rules: ``overwrite`` deletes :data:`RUN_FILES` only; a setting
    ``allow_changed`` names applies from the resume on (``lr``, ``weight_decay``,
    ``warmup_steps`` and ``epochs`` reshape the schedule at the resumed step), the model's
    (``task``, ``backbone``, ``backbone_kwargs``, ``num_classes``, ``fpn_channels``) and
    ``seed`` cannot change. A resume with nothing left to train leaves the folder as it is.

    Raises:
        ValueError: a bad backbone name, a training set smaller than one global batch, changed
            or fixed settings on resume, ``epochs`` below the checkpoint's epoch.
        FileNotFoundError: a missing folder or annotation file.
        FloatingPointError: a non-finite loss (the last epoch's checkpoint is kept).
    """
    check_model_name(cfg.backbone, timm.is_model, "--backbone", MODELS_HINT)
    detection = _is_detection(cfg.task)
    train_ds = _dataset(cfg, cfg.train_root, train=True)
    val_ds = _dataset(cfg, cfg.val_root, train=False) if cfg.val_root else None
    category_ids = _category_ids(cfg, train_ds, val_ds)
    num_classes = cfg.num_classes or len(category_ids) + 1
    run = TrainingRun.open(
        cfg, RUN_FILES, resume=resume, overwrite=overwrite, keep=(cfg.train_root, cfg.val_root)
    )
    ctx, device = run.ctx, run.ctx.device
    sampler = run.sampler(train_ds, cfg.seed, cfg.batch_size)
    loader = DataLoader(
        train_ds,
        cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        drop_last=True,
        collate_fn=collate_detection if detection else None,
    )
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(cfg, num_classes).to(device)
    total = cfg.epochs * len(loader)
    optimizer, scheduler = dense_optimizer(model, cfg.lr, cfg.weight_decay, total, cfg.warmup_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    step = 0
    if resume:
        state = run.restore(
            asdict(cfg), allow_changed=allow_changed, always_allowed=_RUN_ONLY, fixed=_FIXED
        )
        step = state["step"]
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        scheduler.last_epoch = step  # this run's schedule (LambdaLR), at the resumed step
        for group, base, factor in zip(
            optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(step)
        scaler.load_state_dict(state["scaler"])
    else:
        seed_everything(cfg.seed + ctx.rank)
    settings = asdict(cfg) | {"category_ids": category_ids}  # label k: category_ids[k - 1]
    ddp = run.begin(model, settings, "val")
    for epoch in run.remaining():
        ddp.train()
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        bar = progress(
            loader, enabled=ctx.is_main and cfg.progress, desc=f"epoch {epoch + 1}/{cfg.epochs}"
        )
        for batch in bar:
            with autocast(device, enabled=cfg.amp):
                losses = _losses(ddp, batch, device, detection)
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k} {float(v.detach()):.3g}" for k, v in losses.items())
                raise FloatingPointError(
                    f"non-finite loss at epoch {epoch + 1} step {step} ({parts}): the weights "
                    "diverged; lower --lr (or --clip-grad) and start again"
                )
            clip = None if cfg.clip_grad is None else (model, cfg.clip_grad)
            optimizer_step(loss, optimizer, scaler, clip)
            scheduler.step()
            step += 1
            for k, v in (losses | {"loss": loss}).items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            bar.set_postfix(
                loss=f"{float(loss.detach()):.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
            )
        names = sorted(sums)
        means = all_reduce_mean(torch.tensor([sums[k] for k in names], device=device)).cpu()
        record: dict[str, Any] = dict(epoch=epoch + 1, step=step, lr=scheduler.get_last_lr()[0])
        record |= {f"train_{k}": float(v) / len(loader) for k, v in zip(names, means, strict=True)}
        record["epoch_time_s"] = time.perf_counter() - t0
        if ctx.is_main and val_ds is not None:
            record |= {f"val_{k}": v for k, v in evaluate(cfg, model, val_ds, device).items()}
        # RNG states saved after evaluation: its DataLoader draws a seed
        run.end_epoch(
            record,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "step": step,
                "num_classes": num_classes,
                "category_ids": category_ids,
                "config": asdict(cfg),
            },
        )
    run.finish(model.state_dict())
    run.close()
    return model


def build_parser() -> argparse.ArgumentParser:
    """The ``lavit-train-dense`` parser; :func:`main` turns it into a :class:`DenseTrainConfig`."""
    d = DenseTrainConfig(train_root="-")
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="lavit-train-dense",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    add_run_arguments(p, d, duration="epochs")
    g = p.add_argument_group("data and model")
    a = g.add_argument
    a("--task", required=True, choices=tuple(TASKS))
    a("--train-root", required=True, help="COCO folder (detection) or image/mask folder")
    a("--val-root", default=None, help="validation folder of the same kind (evaluated per epoch)")
    a("--backbone", default=d.backbone, help="timm model name, e.g. lavit_tiny or pvt_v2_b1")
    a("--backbone-kwargs", type=json_dict, default=d.backbone_kwargs, help="JSON dict for timm")
    a("--num-classes", type=positive_int, default=None, help="background included")
    a("--fpn-channels", type=positive_int, default=d.fpn_channels)
    a("--min-size", type=positive_int, default=d.min_size, help="detector resize: short side")
    a("--max-size", type=positive_int, default=d.max_size, help="detector resize: long side cap")
    a("--eval-batch-size", type=positive_int, default=d.eval_batch_size)
    g = p.add_argument_group("optimisation")
    a = g.add_argument
    a("--lr", type=positive_float, default=d.lr)
    a("--weight-decay", type=non_negative_float, default=d.weight_decay)
    a("--warmup-steps", type=non_negative_int, default=None, help="default: 10 %% of the steps")
    a("--clip-grad", type=positive_float, default=d.clip_grad)
    a("--stop-after-epoch", type=positive_int, default=None, help="continue with --resume")
    return p


def main(argv: Sequence[str] | None = None) -> nn.Module:
    """``lavit-train-dense`` without the exit status: parse ``argv``, build the config, train,
    print the summary line (box AP, or mIoU for ``semantic_fpn``)."""
    args = build_parser().parse_args(argv)
    cfg = config_from_args(DenseTrainConfig, args)
    model = train_dense(cfg, **start_options(args))
    out, key = Path(cfg.out), "val_bbox_AP" if _is_detection(cfg.task) else "val_mIoU"
    line = summary_line("lavit-train-dense", out / "metrics.jsonl", out / "model.pth", key=key)
    print_summary(line)
    return model


def cli() -> int:
    """Console script ``lavit-train-dense``: 0 on success, 2 with one line on a user error, 1
    with one line on a non-finite loss."""
    return run_console(main, prog="lavit-train-dense")


if __name__ == "__main__":
    raise SystemExit(cli())
