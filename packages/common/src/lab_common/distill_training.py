"""The distillation training engine shared by ``clkd.train`` and ``trg_kd.train``.

A method package builds the shared command line with :func:`build_parser`, adds its own
options, and calls :func:`run_distillation` with a *loss factory*
``make_loss(args, num_classes) -> nn.Module | None`` (``None`` = train the student with
cross-entropy only, no teacher). The engine then:

1. loads the data (``--dataset`` fashion-mnist / mnist / cifar10 / cifar100 as in-memory
   uint8 tensors with crop+flip augmentation, or an image folder with PIL transforms);
2. loads the teacher from ``--teacher-checkpoint`` or trains it with cross-entropy and caches
   it there (default ``<out-dir>/teacher.pt``);
3. distils the student through :class:`lab_common.distiller.Distiller`: SGD with the
   mdistiller/CRD protocol by default (lr 0.05, or 0.01 for MobileNet/ShuffleNet students;
   momentum 0.9; weight decay 5e-4; batch 64; ×0.1 at epochs 150/180/210 of 240, the
   milestones scaled to ``--epochs``), optional AMP, ``torchrun`` DDP, tqdm, JSON-lines
   metrics and PNG curves, an atomic checkpoint after every epoch and exact ``--resume``.

Exact resume: every epoch reseeds all RNGs from ``(seed, epoch, rank)`` before building its
data iterator, so an epoch's shuffling, augmentation and dropout do not depend on what ran
before it (also with DataLoader workers); the checkpoint holds the trainable weights,
optimiser, scheduler, grad scaler and epoch counter.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from . import zoo  # noqa: F401  (registers the cifar_* models with timm)
from .checkpoint import load_checkpoint, save_checkpoint
from .datasets import build_image_dataset, dataset_num_classes
from .device import autocast
from .distiller import Distiller, FeatureFn, features_and_logits
from .distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from .logging import MetricsLogger, plot_metrics, progress, read_metrics
from .seeding import seed_everything

__all__ = [
    "LossFactory",
    "DistillResult",
    "SupervisedModel",
    "TensorImageDataset",
    "build_parser",
    "build_datasets",
    "default_milestones",
    "evaluate",
    "run_distillation",
]

#: ``make_loss(args, num_classes) -> loss module``, or ``None`` for a cross-entropy-only student.
LossFactory = Callable[[argparse.Namespace, int], "nn.Module | None"]

PROTOCOL_EPOCHS = 240
PROTOCOL_MILESTONES = (150, 180, 210)
_LIGHT_STUDENTS = ("mobilenet", "shufflenet")
_STATS = {  # per-channel mean / std of the training sets
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_NO_FLIP = ("mnist",)  # digits are not mirror-symmetric


class TensorImageDataset(Dataset):
    """In-memory uint8 images ``(N, C, H, W)`` and labels ``(N,)``, normalised on access.

    With ``augment=True`` each access takes a random ``H × W`` crop of the image zero-padded by
    ``padding`` pixels and, if ``flip``, mirrors it with probability 0.5 (torch's global RNG).
    Items are ``(float (C, H, W), int64 label)``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: bool = False,
        padding: int = 4,
        flip: bool = True,
        num_classes: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must be (N,) = ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(
                f"need one mean/std per channel ({images.shape[1]}), got {mean}, {std}"
            )
        self.height, self.width = images.shape[-2:]
        self.padding = padding if augment else 0
        self.images = F.pad(images, (self.padding,) * 4) if self.padding else images
        self.labels = labels.long()
        self.mean = torch.tensor(mean).view(-1, 1, 1) * 255.0
        self.std = torch.tensor(std).view(-1, 1, 1) * 255.0
        self.augment = augment
        self.flip = flip
        self.classes = list(range(num_classes or int(labels.max()) + 1))

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[index]
        if self.augment:
            top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
            img = img[:, top : top + self.height, left : left + self.width]
            if self.flip and torch.rand(()) < 0.5:
                img = img.flip(-1)
        return (img.float() - self.mean) / self.std, self.labels[index]


class SupervisedModel(nn.Module):
    """Cross-entropy training with the Distiller's call signature (teacher training, CE baseline).

    ``forward(x (B, ...), target (B,)) -> (logits (B, K), {"loss_ce": scalar})``.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """No schedules here; present for parity with :class:`Distiller`."""

    def trainable_parameters(self):
        return (p for p in self.student.parameters() if p.requires_grad)

    def forward(
        self, x: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        return logits, {"loss_ce": F.cross_entropy(logits.float(), target)}


@dataclass
class DistillResult:
    """What :func:`run_distillation` produced.

    ``student`` is in eval mode, unwrapped from DDP; it and ``teacher`` are None when
    ``--stop-after`` ended the run during teacher training. ``metrics`` is the last epoch's
    record plus ``completed`` (False when ``--stop-after`` stopped early).
    """

    student: nn.Module | None
    teacher: nn.Module | None
    metrics: dict[str, Any]
    out_dir: Path


def default_milestones(epochs: int) -> list[int]:
    """The protocol's 150/180/210-of-240 learning-rate drops scaled to ``epochs``."""
    return sorted({max(1, round(m * epochs / PROTOCOL_EPOCHS)) for m in PROTOCOL_MILESTONES})


def build_parser(
    description: str | None = None,
    *,
    teacher: str = "cifar_resnet32x4",
    student: str = "cifar_resnet8x4",
) -> argparse.ArgumentParser:
    """The shared command line; method packages add their own options to the returned parser."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--dataset",
        default="cifar100",
        help="fashion-mnist, mnist, cifar10, cifar100, or an image folder with train/ and val/",
    )
    d.add_argument(
        "--data-root",
        default=None,
        help="folder holding the named dataset (default: the shared datasets folder)",
    )
    d.add_argument("--image-size", type=int, default=32, help="input size for image folders")
    d.add_argument("--train-subset", type=int, default=None, help="use N training images")
    d.add_argument("--test-subset", type=int, default=None, help="evaluate on N test images")
    d.add_argument("--subset-seed", type=int, default=0, help="seed of the subset draw")
    d.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
    m = p.add_argument_group("models")
    m.add_argument("--teacher", default=teacher, help="zoo (cifar_*) or any timm model name")
    m.add_argument("--student", default=student, help="zoo (cifar_*) or any timm model name")
    m.add_argument(
        "--teacher-checkpoint",
        default=None,
        help="load the teacher from here if the file exists, else train it and save it "
        "here (default: <out-dir>/teacher.pt)",
    )
    m.add_argument("--teacher-epochs", type=int, default=None, help="default: --epochs")
    m.add_argument("--teacher-lr", type=float, default=0.05)
    o = p.add_argument_group("optimisation (mdistiller/CRD CIFAR protocol by default)")
    o.add_argument("--epochs", type=int, default=PROTOCOL_EPOCHS)
    o.add_argument("--batch-size", type=int, default=64, help="global batch (split over ranks)")
    o.add_argument(
        "--lr",
        type=float,
        default=None,
        help="default 0.05, or 0.01 for MobileNet/ShuffleNet students",
    )
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--weight-decay", type=float, default=5e-4)
    o.add_argument(
        "--milestones",
        type=int,
        nargs="*",
        default=None,
        help="epochs where lr ×= --lr-decay (default 150/180/210 scaled to --epochs)",
    )
    o.add_argument("--lr-decay", type=float, default=0.1)
    o.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    r = p.add_argument_group("run")
    r.add_argument("--out-dir", default="runs/distill")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoints in --out-dir (a fresh start if none)",
    )
    r.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="run at most N epochs of each phase in this invocation, e.g. to fit a job "
        "time limit (continue later with --resume)",
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--deterministic", action="store_true", help="deterministic torch kernels")
    r.add_argument("--device", default="auto")
    r.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    return p  # fmt: skip


def _tensor_split(name: str, root: str | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ds = build_image_dataset(name, root, train=train)
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(ds, idx.tolist())


def build_datasets(args: argparse.Namespace) -> tuple[Dataset, Dataset, int, int]:
    """``(train, test, num_classes, in_chans)`` for ``args.dataset`` (subsets applied)."""
    key = args.dataset.lower().replace("_", "-")
    if key in _STATS:
        mean, std = _STATS[key]
        (xtr, ytr), (xte, yte) = (_tensor_split(key, args.data_root, t) for t in (True, False))
        k = 100 if key == "cifar100" else 10
        pad = xtr.shape[-1] // 8
        train = TensorImageDataset(xtr, ytr, mean, std, augment=True, padding=pad,
                                   flip=key not in _NO_FLIP, num_classes=k)  # fmt: skip
        test = TensorImageDataset(xte, yte, mean, std, num_classes=k)
        in_chans = xtr.shape[1]
    else:
        import torchvision.transforms as T

        size = args.image_size
        norm = T.Normalize(timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)
        train_tf = T.Compose([T.RandomResizedCrop(size, scale=(0.35, 1.0)),
                              T.RandomHorizontalFlip(), T.ToTensor(), norm])  # fmt: skip
        test_tf = T.Compose(
            [T.Resize(math.ceil(size * 1.14)), T.CenterCrop(size), T.ToTensor(), norm]
        )
        train = build_image_dataset(args.dataset, args.data_root, train=True, transform=train_tf)
        test = build_image_dataset(args.dataset, args.data_root, train=False, transform=test_tf)
        k, in_chans = dataset_num_classes(train), 3
    train = _subset(train, args.train_subset, args.subset_seed)
    test = _subset(test, args.test_subset, args.subset_seed + 1)
    return train, test, k, in_chans


def _create_model(name: str, num_classes: int, in_chans: int) -> nn.Module:
    try:
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(
            f"unknown model {name!r}: use a zoo model ({', '.join(zoo.list_zoo_models()[:4])}, ...) "
            "or any name from timm.list_models()"
        ) from err


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + rank) % 2**31


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    ctx: DistContext,
    *,
    batch_size: int = 256,
    amp: bool = False,
) -> dict[str, float]:
    """Top-1 (and top-5 when K ≥ 5) accuracy in percent and mean CE of ``model`` on ``dataset``.

    Under DDP each rank scores a disjoint strided shard and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    sums = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, ce, count
    num_classes = 0
    for x, y in DataLoader(shard, batch_size=batch_size):
        x, y = x.to(ctx.device), y.to(ctx.device)
        with autocast(ctx.device, enabled=amp):
            logits = model(x)
        logits = logits.float()
        num_classes = logits.shape[1]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums += torch.tensor([
            (top[:, 0] == y).sum().item(), (top == y[:, None]).any(1).sum().item(),
            F.cross_entropy(logits, y, reduction="sum").item(), y.numel(),
        ], dtype=torch.float64)  # fmt: skip
    if ctx.distributed:
        sums = all_reduce_mean(sums.to(ctx.device)).cpu() * ctx.world_size
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    out = {"test_acc": 100 * sums[0].item() / n, "test_loss": sums[2].item() / n}
    if num_classes >= 5:
        out["test_acc5"] = 100 * sums[1].item() / n
    return out


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}


def _fit(
    model: Distiller | SupervisedModel,
    train_ds: Dataset,
    test_ds: Dataset,
    args: argparse.Namespace,
    ctx: DistContext,
    *,
    phase: str,
    epochs: int,
    lr: float,
) -> dict[str, Any]:
    """Train ``model`` for ``epochs`` with checkpoints ``<out-dir>/<phase>_last.pt``; final metrics."""
    out_dir = Path(args.out_dir)
    ckpt_path = out_dir / f"{phase}_last.pt"
    metrics_path = out_dir / f"{phase}_metrics.jsonl"
    if args.batch_size % ctx.world_size:
        raise ValueError(
            f"--batch-size {args.batch_size} must be divisible by the {ctx.world_size} processes"
        )
    per_rank = args.batch_size // ctx.world_size
    if len(train_ds) < args.batch_size:
        raise ValueError(f"{len(train_ds)} training images < --batch-size {args.batch_size}")
    milestones = args.milestones if args.milestones is not None else default_milestones(epochs)
    params = list(model.trainable_parameters())
    optimizer = torch.optim.SGD(
        params, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=args.lr_decay)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.amp and ctx.device.type == "cuda")
    start = 0
    if ckpt_path.is_file():
        if not args.resume:
            raise ValueError(
                f"{ckpt_path} exists; pass --resume to continue it or choose another --out-dir"
            )
        state = load_checkpoint(ckpt_path, map_location=ctx.device)
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if unexpected or any(not k.startswith("teacher.") for k in missing):
            raise ValueError(f"{ckpt_path} does not match the model: {missing=} {unexpected=}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start = state["epoch"]
    if ctx.is_main:  # keep the records of finished epochs only (a crash may leave one more)
        old = read_metrics(metrics_path) if start and metrics_path.is_file() else []
        kept = [r for r in old if r["epoch"] < start]
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    logger = MetricsLogger(metrics_path, enabled=ctx.is_main)
    ddp = (
        DistributedDataParallel(
            model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None
        )
        if ctx.distributed
        else model
    )
    sampler = DistributedSampler(
        train_ds, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed,
        drop_last=True,
    )  # fmt: skip
    stop = epochs if args.stop_after is None else min(epochs, start + args.stop_after)
    record: dict[str, Any] = {}
    for epoch in range(start, stop):
        seed_everything(_epoch_seed(args.seed, epoch, ctx.rank))
        sampler.set_epoch(epoch)
        model.set_epoch(epoch, epochs)
        loader = DataLoader(train_ds, batch_size=per_rank, sampler=sampler, drop_last=True,
                            num_workers=args.workers, pin_memory=ctx.device.type == "cuda")  # fmt: skip
        ddp.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=ctx.device)
        tic = time.perf_counter()
        bar = progress(loader, enabled=ctx.is_main and not args.no_progress,
                       desc=f"{phase} {epoch + 1}/{epochs}", leave=False)  # fmt: skip
        for x, y in bar:
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            with autocast(ctx.device, enabled=args.amp):
                logits, losses = ddp(x, y)
            loss = sum(v.float() for v in losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{phase} epoch {epoch}: non-finite loss "
                    f"{ {k: v.item() for k, v in losses.items()} }; lower --lr or disable --amp"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            correct += (logits.detach().argmax(1) == y).sum()
        if ctx.distributed:  # BN statistics drift apart per rank; average them
            for name, buf in model.named_buffers():
                if buf.is_floating_point() and not name.startswith("teacher."):
                    buf.copy_(all_reduce_mean(buf))
        steps = len(loader)
        train_stats = {k: all_reduce_mean(v / steps).item() for k, v in sums.items()}
        train_acc = all_reduce_mean(correct / (steps * per_rank)).item() * 100
        record = {
            "epoch": epoch,
            "lr": optimizer.param_groups[0]["lr"],
            **train_stats,
            "train_acc": train_acc,
            **evaluate(model.student, test_ds, ctx, amp=args.amp),
            "epoch_time": time.perf_counter() - tic,
        }
        scheduler.step()
        if ctx.is_main:
            logger.log(**record)
            save_checkpoint(
                {"model": _trainable_state(model), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "epoch": epoch + 1, "args": vars(args)},
                ckpt_path,
            )  # fmt: skip
            if not args.no_progress:
                print(f"[{phase}] epoch {epoch + 1}/{epochs} " + " ".join(
                    f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float)
                ), flush=True)  # fmt: skip
        barrier()
    if ctx.is_main and metrics_path.is_file() and metrics_path.stat().st_size:
        plot_metrics(metrics_path, out_dir / f"{phase}_curves.png")
    if not record and start:  # nothing left to run: report the checkpointed state
        record = {"epoch": start - 1, **evaluate(model.student, test_ds, ctx, amp=args.amp)}
    record["completed"] = stop == epochs
    return record


def _teacher(
    args: argparse.Namespace,
    ctx: DistContext,
    train_ds: Dataset,
    test_ds: Dataset,
    num_classes: int,
    in_chans: int,
) -> nn.Module | None:
    """Load the teacher from ``--teacher-checkpoint``, or train it there with cross-entropy.

    Returns None when ``--stop-after`` ended this invocation during teacher training.
    """
    path = Path(args.teacher_checkpoint or Path(args.out_dir) / "teacher.pt")
    seed_everything(args.seed)
    teacher = _create_model(args.teacher, num_classes, in_chans).to(ctx.device)
    if not path.is_file():
        result = _fit(SupervisedModel(teacher), train_ds, test_ds, args, ctx, phase="teacher",
                      epochs=args.teacher_epochs or args.epochs, lr=args.teacher_lr)  # fmt: skip
        if not result["completed"]:
            return None
        if ctx.is_main:
            save_checkpoint(
                {"model": teacher.state_dict(), "model_name": args.teacher,
                 "num_classes": num_classes, "in_chans": in_chans,
                 "test_acc": result["test_acc"]},
                path,
            )  # fmt: skip
        barrier()
    state = load_checkpoint(path, map_location=ctx.device)
    if state.get("model_name", args.teacher) != args.teacher:
        raise ValueError(
            f"{path} holds a {state['model_name']!r} teacher but --teacher is {args.teacher!r}"
        )
    try:
        teacher.load_state_dict(state.get("model", state))
    except RuntimeError as err:
        raise ValueError(
            f"teacher checkpoint {path} does not fit {args.teacher} with {num_classes} classes and "
            f"{in_chans} input channels: {err}"
        ) from err
    return teacher.eval()


def run_distillation(
    args: argparse.Namespace,
    make_loss: LossFactory,
    *,
    datasets: tuple[Dataset, Dataset, int, int] | None = None,
    student_features: FeatureFn = features_and_logits,
    teacher_features: FeatureFn = features_and_logits,
) -> DistillResult:
    """Train (or load) the teacher, then train the student with ``make_loss(args, num_classes)``.

    Args:
        args: parsed :func:`build_parser` options (plus the method's own).
        make_loss: the method's loss factory; returning ``None`` trains the student with
            cross-entropy only (no teacher is built or trained).
        datasets: ``(train, test, num_classes, in_chans)`` to use instead of
            :func:`build_datasets` (e.g. a long-tailed subset); items ``(x (C, H, W), label)``.
        student_features / teacher_features: feature functions for losses that need features.

    Writes to ``args.out_dir``: ``teacher.pt`` (unless ``--teacher-checkpoint`` names an
    existing file), ``{teacher,student}_last.pt`` (resume state), ``*_metrics.jsonl``,
    ``*_curves.png``, ``student.pt`` and ``result.json``.
    """
    ctx = init_distributed(device=args.device)
    try:
        seed_everything(args.seed, deterministic=args.deterministic)
        train_ds, test_ds, num_classes, in_chans = datasets or build_datasets(args)
        loss = make_loss(args, num_classes)
        teacher = None
        if loss is not None:
            teacher = _teacher(args, ctx, train_ds, test_ds, num_classes, in_chans)
            if teacher is None:  # --stop-after ended the run inside teacher training
                return DistillResult(None, None, {"phase": "teacher", "completed": False},
                                     Path(args.out_dir))  # fmt: skip
        seed_everything(args.seed)
        student = _create_model(args.student, num_classes, in_chans)
        if loss is None:
            model: Distiller | SupervisedModel = SupervisedModel(student)
        else:
            model = Distiller(student, teacher, loss, student_features=student_features,
                              teacher_features=teacher_features)  # fmt: skip
        model.to(ctx.device)
        lr = args.lr
        if lr is None:
            light = any(s in args.student.lower() for s in _LIGHT_STUDENTS)
            lr = 0.01 if light else 0.05
        metrics = _fit(model, train_ds, test_ds, args, ctx, phase="student", epochs=args.epochs,
                       lr=lr)  # fmt: skip
        out_dir = Path(args.out_dir)
        if ctx.is_main and metrics["completed"]:
            save_checkpoint(
                {"model": student.state_dict(), "model_name": args.student,
                 "num_classes": num_classes, "in_chans": in_chans, "metrics": metrics},
                out_dir / "student.pt",
            )  # fmt: skip
            (out_dir / "result.json").write_text(json.dumps(metrics, indent=2))
        return DistillResult(student.eval(), teacher, metrics, out_dir)
    finally:
        cleanup_distributed()
