"""``python -m trg_kd.train`` / ``trg-kd-train``: teacher training or loading, then TRG distillation.

Built on the shared engine :mod:`lab_common.distill_training` (data, teacher cache, SGD protocol,
AMP, atomic checkpoints + ``--resume``, ``torchrun`` DDP, tqdm, JSON lines, PNG curves) with the
TRG loss and options on top: ``--imbalance-ratio`` for a long-tailed training set (with
many/medium/few-shot test accuracy in ``result.json``), ``--method kd|ce`` baselines, and
``--tsne N`` for a t-SNE plot of the student's features on N test images.

Under ``torchrun`` the token graph is gathered across ranks by default (``--graph gathered``):
student nodes through ``torch.distributed.nn.functional.all_gather`` (autograd), so the loss and
its gradient equal those of one process holding the global batch; ``--graph per-rank`` builds one
graph per rank from its own images only (no communication, smaller graph).

Example (Fashion-MNIST, long-tailed ρ = 100, few epochs on CPU)::

    trg-kd-train --dataset fashion-mnist --teacher cifar_resnet20 --student cifar_resnet8 \\
        --epochs 5 --imbalance-ratio 100 --out-dir runs/fmnist_lt --tsne 500
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from lab_common.distill_training import (
    DistillResult,
    build_datasets,
    build_parser,
    run_distillation,
)
from trg_kd.contrastive import TemperatureSchedule
from trg_kd.extraction import TokenExtractor
from trg_kd.kd import KDLoss
from trg_kd.longtail import dataset_targets, longtail_indices, shot_splits, split_accuracy
from trg_kd.trg import TRGConfig, TRGLoss

__all__ = ["build_train_parser", "trg_config_from_args", "main", "cli"]

_DEFAULTS = TRGConfig()


def build_train_parser() -> argparse.ArgumentParser:
    """The shared distillation command line plus TRG, long-tail and t-SNE options."""
    p = build_parser("TRG: knowledge distillation via a token-level relationship graph")
    g = p.add_argument_group("TRG loss (defaults from the Fashion-MNIST sweep, see README)")
    g.add_argument(
        "--method",
        choices=("trg", "kd", "ce"),
        default="trg",
        help="trg; kd = CE + λ·KD only; ce = student without a teacher",
    )
    g.add_argument("--kd-weight", type=float, default=_DEFAULTS.kd_weight, help="λ")
    g.add_argument("--kd-temperature", type=float, default=_DEFAULTS.kd_temperature)
    g.add_argument(
        "--inner-weight", type=float, default=_DEFAULTS.inner_weight, help="α, contextual loss"
    )
    g.add_argument(
        "--local-weight",
        type=float,
        default=_DEFAULTS.local_weight,
        help="β, local-preserving loss",
    )
    g.add_argument(
        "--global-weight",
        type=float,
        default=_DEFAULTS.global_weight,
        help="γ, global InfoNCE loss",
    )
    g.add_argument("--k", type=int, default=_DEFAULTS.k, help="graph neighbours per node")
    g.add_argument("--sigma", type=float, default=_DEFAULTS.sigma, help="Gaussian kernel width")
    g.add_argument("--tokens-per-image", type=int, default=_DEFAULTS.tokens_per_image)
    g.add_argument("--tau-start", type=float, default=_DEFAULTS.temperature.start)
    g.add_argument("--tau-end", type=float, default=_DEFAULTS.temperature.end)
    g.add_argument(
        "--tau-schedule",
        default=_DEFAULTS.temperature.kind,
        choices=("cosine", "linear", "exp", "constant"),
    )
    g.add_argument(
        "--chunk-size", type=int, default=_DEFAULTS.chunk_size, help="k-NN rows per block"
    )
    g.add_argument(
        "--graph",
        choices=("gathered", "per-rank"),
        default="gathered",
        help="under torchrun: one graph over all ranks' tokens, or one per rank",
    )
    lt = p.add_argument_group("long-tailed training set (Cao et al. 2019 profile)")
    lt.add_argument(
        "--imbalance-ratio", type=float, default=None, help="ρ = n_max / n_min; off when not given"
    )
    lt.add_argument(
        "--lt-n-max",
        type=int,
        default=None,
        help="images of the largest class (default: smallest class size)",
    )
    lt.add_argument("--many-shot", type=int, default=100, help="many-shot: > this many images")
    lt.add_argument("--few-shot", type=int, default=20, help="few-shot: < this many images")
    p.add_argument(
        "--tsne",
        type=int,
        default=0,
        metavar="N",
        help="t-SNE plot of student features on N test images (needs trg-kd[tsne])",
    )
    return p  # fmt: skip


def trg_config_from_args(args: argparse.Namespace) -> TRGConfig:
    """The :class:`TRGConfig` described by the command-line options."""
    return TRGConfig(
        kd_weight=args.kd_weight,
        kd_temperature=args.kd_temperature,
        inner_weight=args.inner_weight,
        local_weight=args.local_weight,
        global_weight=args.global_weight,
        k=args.k,
        sigma=args.sigma,
        tokens_per_image=args.tokens_per_image,
        temperature=TemperatureSchedule(args.tau_start, args.tau_end, args.tau_schedule),
        chunk_size=args.chunk_size,
        gather_distributed=args.graph == "gathered",
        seed=args.seed,
    )


def _token_width(name: str, num_classes: int, input_shape: Sequence[int]) -> int:
    model = timm.create_model(name, num_classes=num_classes, in_chans=input_shape[0])
    return TokenExtractor().token_shape(model, tuple(input_shape))[1]


@torch.no_grad()
def _predict(model: nn.Module, dataset, *, pooled: bool = False, limit: int | None = None):
    """Predictions (or mean-pooled tokens when ``pooled``) and labels over ``dataset``."""
    model.eval()
    device = next(model.parameters()).device
    ext = TokenExtractor()
    outs, labels, seen = [], [], 0
    for x, y in DataLoader(dataset, batch_size=256):
        tokens, logits = ext(model, x.to(device))
        outs.append(tokens.mean(1).cpu() if pooled else logits.argmax(1).cpu())
        labels.append(y)
        seen += len(y)
        if limit is not None and seen >= limit:
            break
    out, lab = torch.cat(outs), torch.cat(labels)
    return (out[:limit], lab[:limit]) if limit is not None else (out, lab)


def main(
    argv: Sequence[str] | None = None,
    *,
    datasets: tuple[Dataset, Dataset, int, int] | None = None,
) -> DistillResult:
    """Run the command line; returns the engine's :class:`DistillResult`.

    ``datasets = (train, test, num_classes, in_chans)`` replaces the ``--dataset`` loading (the
    long-tailed subset is still applied to ``train``).
    """
    args = build_train_parser().parse_args(argv)
    train_ds, test_ds, num_classes, in_chans = datasets or build_datasets(args)
    train_counts = None
    if args.imbalance_ratio is not None:
        targets = dataset_targets(train_ds)
        keep = longtail_indices(
            targets, args.imbalance_ratio, n_max=args.lt_n_max, num_classes=num_classes,
            seed=args.subset_seed,
        )  # fmt: skip
        train_ds = Subset(train_ds, keep.tolist())
        train_counts = torch.bincount(targets[keep], minlength=num_classes)
    input_shape = tuple(test_ds[0][0].shape)

    def make_loss(args: argparse.Namespace, num_classes: int) -> nn.Module | None:
        if args.method == "ce":
            return None
        if args.method == "kd":
            return KDLoss(1.0, args.kd_weight, args.kd_temperature)
        return TRGLoss(
            _token_width(args.student, num_classes, input_shape),
            _token_width(args.teacher, num_classes, input_shape),
            trg_config_from_args(args),
        )

    ext = TokenExtractor()
    result = run_distillation(
        args, make_loss, datasets=(train_ds, test_ds, num_classes, in_chans),
        student_features=ext, teacher_features=ext,
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0 or result.student is None:
        return result
    out_dir = Path(args.out_dir)
    extra: dict[str, object] = {}
    if train_counts is not None:
        splits = shot_splits(train_counts, many=args.many_shot, few=args.few_shot)
        preds, labels = _predict(result.student, test_ds)
        extra["train_counts"] = train_counts.tolist()
        extra["shot_splits"] = splits
        accs = split_accuracy(preds, labels, splits)  # nan (no classes in a split) -> null
        extra.update({f"test_acc_{k}": None if v != v else v for k, v in accs.items()})
    if args.tsne:
        from trg_kd.visualize import plot_tsne

        feats, labels = _predict(result.student, test_ds, pooled=True, limit=args.tsne)
        extra["tsne_png"] = str(plot_tsne(feats, labels, out_dir / "tsne.png", seed=args.seed))
    if extra and result.metrics.get("completed"):
        result.metrics.update(extra)
        (out_dir / "result.json").write_text(json.dumps(result.metrics, indent=2))
    return result


def cli() -> None:
    """Console-script entry point (``trg-kd-train``)."""
    main()


if __name__ == "__main__":
    cli()
