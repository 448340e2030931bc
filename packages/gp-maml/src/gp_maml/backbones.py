"""Few-shot backbones: Conv-4 (Vinyals et al.; Finn et al.) and ResNet-12 (Lee et al.).

Both split into ``features`` (the body, ending with a flat ``(B, num_features)`` embedding)
and ``head`` (a linear classifier), and use batch-norm on batch statistics only
(``track_running_stats=False``), as transductive MAML does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BatchNorm2d",
    "Conv4",
    "ResNet12",
    "conv4",
    "create_backbone",
    "resnet12",
    "sample_weighted_batch_norm",
]


class BatchNorm2d(nn.BatchNorm2d):
    """Batch-norm on batch statistics whose second-order gradients are right under ``vmap``.

    Outside ``torch.func`` transforms it calls torch's fused kernel (fast, especially on
    channels-last tensors); inside them it is written with elementary ops, because the fused
    kernel's double backward is wrong under ``torch.func.vmap`` in PyTorch 2.x (see
    ``MetaLearner``). Same numerics as ``nn.BatchNorm2d(track_running_stats=False)``.

    Inside ``sample_weighted_batch_norm(model, weight)`` the statistics are weighted per sample
    (a 0/1 weight computes them over a subset without changing shapes, so it works under
    ``vmap``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, track_running_stats=False)
        self.sample_weight: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        if self.sample_weight is not None:
            w = self.sample_weight.to(x.dtype).view(-1, 1, 1, 1)
            count = w.sum() * x.shape[2] * x.shape[3]
            mean = (w * x).sum((0, 2, 3), keepdim=True) / count
            var = (w * (x - mean).square()).sum((0, 2, 3), keepdim=True) / count
        elif torch._C._functorch.peek_interpreter_stack() is None:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        else:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), keepdim=True, correction=0)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias.view(1, -1, 1, 1)


@contextmanager
def sample_weighted_batch_norm(model: nn.Module, weight: Tensor) -> Iterator[int]:
    """Within the block, every ``gp_maml.BatchNorm2d`` of ``model`` weights its statistics.

    Args:
        model: network whose batch-norm layers are ``gp_maml.BatchNorm2d``.
        weight: ``(N,)`` non-negative weights of the ``N`` samples of the next forwards.

    Yields:
        The number of layers weighted (0: the model has none of ours, statistics unchanged).
    """
    layers = [m for m in model.modules() if isinstance(m, BatchNorm2d)]
    for m in layers:
        m.sample_weight = weight
    try:
        yield len(layers)
    finally:
        for m in layers:
            m.sample_weight = None


def _bn(chans: int) -> nn.BatchNorm2d:
    return BatchNorm2d(chans)


class Conv4(nn.Module):
    """Four blocks of conv3x3 - BN - ReLU - max-pool 2, then a linear head.

    Args:
        in_chans: input channels.
        num_classes: ways ``N`` of the head.
        hidden: filters per block (32 or 64 in the literature).
        img_size: input side, used to size the head (28 -> 1x1 map, 84 -> 5x5 map).
    """

    def __init__(
        self, in_chans: int = 1, num_classes: int = 5, hidden: int = 64, img_size: int = 28
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = in_chans
        for _ in range(4):
            layers += [
                nn.Conv2d(chans, hidden, 3, padding=1),
                _bn(hidden),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            chans = hidden
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        side = img_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"img_size={img_size} is too small for Conv-4 (needs >= 16)")
        self.num_features = hidden * side * side
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, num_features)``."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, num_features)`` -> ``(B, num_classes)``."""
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class _ResBlock(nn.Module):
    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False),
            _bn(out_chans),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            _bn(out_chans),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            _bn(out_chans),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_chans, out_chans, 1, bias=False), _bn(out_chans))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class ResNet12(nn.Module):
    """ResNet-12: four residual blocks (three conv3x3 each) with max-pool, global average pool.

    Args:
        in_chans: input channels.
        num_classes: ways ``N`` of the head.
        widths: channels of the four blocks.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 5,
        widths: tuple[int, int, int, int] = (64, 160, 320, 640),
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        chans = in_chans
        for w in widths:
            blocks.append(_ResBlock(chans, w))
            chans = w
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = chans
        self.head = nn.Linear(chans, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, num_features)``."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, num_features)`` -> ``(B, num_classes)``."""
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def conv4(**kwargs) -> Conv4:
    """Conv-4 with 64 filters (pass ``hidden=32`` for the 32-filter variant)."""
    return Conv4(**{"hidden": 64, **kwargs})


def resnet12(**kwargs) -> ResNet12:
    """ResNet-12 with widths (64, 160, 320, 640)."""
    return ResNet12(**kwargs)


def create_backbone(name: str, *, in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    """Build ``"conv4"`` / ``"conv4-32"`` / ``"conv4-64"`` / ``"resnet12"`` by name."""
    if name in ("conv4", "conv4-64"):
        return Conv4(in_chans, num_classes, 64, img_size)
    if name == "conv4-32":
        return Conv4(in_chans, num_classes, 32, img_size)
    if name == "resnet12":
        return ResNet12(in_chans, num_classes)
    raise ValueError(f"unknown backbone {name!r}; choose conv4-32, conv4-64 or resnet12")
