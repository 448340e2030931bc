"""Test accuracy and loss of a classifier, sharded over the ranks of a torchrun job."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..device import autocast
from ..distributed import DistContext, all_reduce_mean

__all__ = ["evaluate"]


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

    ``dataset`` items are ``(x (C, H, W), label)``; ``model`` maps ``(B, C, H, W)`` to logits
    ``(B, K)``. Under DDP each rank scores a disjoint strided shard and the sums are
    all-reduced. Returns ``val_top1``, ``val_loss`` and (K ≥ 5) ``val_top5`` (``val_*``: the run's
    evaluation split, :mod:`lab_common.runs.output`).
    """
    was_training = model.training
    model.eval()
    shard = Subset(dataset, range(ctx.rank, len(dataset), ctx.world_size))
    sums = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, ce, count
    num_classes = 0
    for x, y in DataLoader(shard, batch_size=batch_size):
        x, y = x.to(ctx.device), y.to(ctx.device, torch.long)  # int32 labels too
        with autocast(ctx.device, enabled=amp):
            logits = model(x)
        logits = logits.float()
        num_classes = logits.shape[1]
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        batch = [
            (top[:, 0] == y).sum().item(),
            (top == y[:, None]).any(1).sum().item(),
            F.cross_entropy(logits, y, reduction="sum").item(),
            y.numel(),
        ]
        sums += torch.tensor(batch, dtype=torch.float64)
    if ctx.distributed:
        sums = all_reduce_mean(sums.to(ctx.device)).cpu() * ctx.world_size
    model.train(was_training)
    n = max(sums[3].item(), 1.0)
    out = {"val_top1": 100 * sums[0].item() / n, "val_loss": sums[2].item() / n}
    if num_classes >= 5:
        out["val_top5"] = 100 * sums[1].item() / n
    return out
