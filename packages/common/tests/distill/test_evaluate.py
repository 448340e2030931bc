"""evaluate(): top-1/top-5 accuracy and mean cross-entropy, model mode restored."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from lab_common import init_distributed
from lab_common.distill import evaluate


class Fixed(nn.Module):
    """Logits that rank the classes 0 > 1 > ... > K-1 for every input."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.register_buffer("logits", torch.arange(k, 0, -1, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def test_accuracies_and_loss_match_hand_counts(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(device="cpu")
    y = torch.tensor([0, 0, 1, 4, 6, 2])  # top-1 hits: 2 of 6; top-5 (classes 0..4): 5 of 6
    ds = TensorDataset(torch.zeros(6, 1), y)
    model = Fixed(7).train()
    out = evaluate(model, ds, ctx, batch_size=4)
    assert out["val_top1"] == pytest.approx(100 * 2 / 6)
    assert out["val_top5"] == pytest.approx(100 * 5 / 6)
    log_p = torch.log_softmax(torch.arange(7, 0, -1, dtype=torch.float64), 0)
    assert out["val_loss"] == pytest.approx(-log_p[y].mean().item(), rel=1e-6)
    assert model.training  # restored
    assert evaluate(model, TensorDataset(torch.zeros(6, 1), y.int()), ctx, batch_size=4) == out
    small = evaluate(Fixed(3), TensorDataset(torch.zeros(2, 1), torch.tensor([0, 2])), ctx)
    assert set(small) == {"val_top1", "val_loss"} and math.isclose(small["val_top1"], 50.0)
