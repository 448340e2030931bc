"""Few-shot backbones: Conv-4 (Vinyals et al.; Finn et al.) and ResNet-12 (Lee et al.).

Both split into ``features`` (the body, ending with a flat ``(B, num_features)`` embedding)
and ``head`` (a linear classifier), and use batch-norm on batch statistics only
(``track_running_stats=False``), as transductive MAML does. Their batch-norm and max-pool
layers are ``gp_maml.layers``' ``torch.func``-safe ones; a learner swaps them for faster
variants where those are valid (``layers.swap_layers``).
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import BatchNorm2d, MaxPool2d

__all__ = ["Conv4", "ResNet12", "conv4", "create_backbone", "resnet12"]


def _bn(chans: int) -> BatchNorm2d:
    return BatchNorm2d(chans)


class Conv4(nn.Module):
    """Four blocks of conv3x3 - BN - ReLU - max-pool 2, then a linear head (``gp_maml``'s
    ``BatchNorm2d`` and ``MaxPool2d``: the same function as the torch layers).

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
                MaxPool2d(2),
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
        self.feature_channels = hidden  # the flat embedding is a (hidden, side, side) map
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
        self.pool = MaxPool2d(2)

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
        self.feature_channels = chans  # globally pooled: a (chans, 1, 1) map
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
