"""ShuffleNet V1 (Zhang et al., CVPR 2018) and V2 (Ma et al., ECCV 2018) for CIFAR.

The cross-architecture students of the distillation benchmarks. Both start with a stride-1
3×3 stem (24 channels) and have three stride-2 stages, so ``forward_features`` returns
``(B, C, H/8, W/8)`` (960 channels for V1 with 3 groups, 1024 for V2 ×1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import ConvNormAct
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import CifarClassifier, cifar_cfg, create_cifar_model

__all__ = ["CifarShuffleNetV1", "CifarShuffleNetV2"]

_STEM_CHS = 24


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` groups: ``(B, C, H, W)`` → same shape."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleV1Block(nn.Module):
    """Grouped 1×1 → shuffle → depthwise 3×3 → grouped 1×1; stride 2 concatenates an avg-pooled shortcut."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = out_chs // 4
        self.first_groups = 1 if in_chs == _STEM_CHS else groups
        self.stride = stride
        self.conv1 = ConvNormAct(in_chs, mid, 1, groups=self.first_groups)
        self.conv2 = ConvNormAct(mid, mid, 3, stride=stride, groups=mid, apply_act=False)
        branch_out = out_chs - in_chs if stride == 2 else out_chs
        self.conv3 = ConvNormAct(mid, branch_out, 1, groups=groups, apply_act=False)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3(self.conv2(channel_shuffle(self.conv1(x), self.first_groups)))
        if self.stride == 2:
            return self.act(torch.cat([out, self.pool(x)], dim=1))
        return self.act(out + x)


class CifarShuffleNetV1(CifarClassifier):
    """ShuffleNet V1 with ``groups`` groups, stage widths ``widths`` and ``depths`` blocks per stage."""

    def __init__(
        self,
        widths: Sequence[int] = (240, 480, 960),
        depths: Sequence[int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths) or any(w % (4 * groups) for w in widths):
            raise ValueError(
                f"need one width per stage, each divisible by 4 * groups = {4 * groups}; "
                f"got widths {tuple(widths)}, depths {tuple(depths)}"
            )
        self.stem = ConvNormAct(in_chans, _STEM_CHS, 3)
        blocks: list[nn.Module] = []
        in_chs = _STEM_CHS
        for out_chs, depth in zip(widths, depths, strict=True):
            for j in range(depth):
                blocks.append(ShuffleV1Block(in_chs, out_chs, 2 if j == 0 else 1, groups))
                in_chs = out_chs
        self.stages = nn.Sequential(*blocks)
        self._init_head(in_chs, num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → ``(B, widths[-1], H/8, W/8)``."""
        return self.stages(self.stem(x))


class ShuffleV2Block(nn.Module):
    """Split channels in half; transform one half (1×1 → dw 3×3 → 1×1); concat; shuffle."""

    def __init__(self, chs: int) -> None:
        super().__init__()
        half = chs // 2
        self.branch = nn.Sequential(
            ConvNormAct(half, half, 1),
            ConvNormAct(half, half, 3, groups=half, apply_act=False),
            ConvNormAct(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, change = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([keep, self.branch(change)], dim=1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: two branches on the full input, each giving ``out_chs / 2`` channels."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        half = out_chs // 2
        self.left = nn.Sequential(
            ConvNormAct(in_chs, in_chs, 3, stride=2, groups=in_chs, apply_act=False),
            ConvNormAct(in_chs, half, 1),
        )
        self.right = nn.Sequential(
            ConvNormAct(in_chs, half, 1),
            ConvNormAct(half, half, 3, stride=2, groups=half, apply_act=False),
            ConvNormAct(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], dim=1), 2)


class CifarShuffleNetV2(CifarClassifier):
    """ShuffleNet V2: per stage one stride-2 unit then ``depths[i]`` basic units; 1×1 conv to ``last_chs``."""

    def __init__(
        self,
        widths: Sequence[int] = (116, 232, 464),
        depths: Sequence[int] = (3, 7, 3),
        last_chs: int = 1024,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(widths) != len(depths) or any(w % 2 for w in widths):
            raise ValueError(
                f"need one even width per stage; got widths {tuple(widths)}, depths {tuple(depths)}"
            )
        self.stem = ConvNormAct(in_chans, _STEM_CHS, 3)
        blocks: list[nn.Module] = []
        in_chs = _STEM_CHS
        for out_chs, depth in zip(widths, depths, strict=True):
            blocks.append(ShuffleV2Down(in_chs, out_chs))
            blocks.extend(ShuffleV2Block(out_chs) for _ in range(depth))
            in_chs = out_chs
        blocks.append(ConvNormAct(in_chs, last_chs, 1))
        self.stages = nn.Sequential(*blocks)
        self._init_head(last_chs, num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → ``(B, last_chs, H/8, W/8)``."""
        return self.stages(self.stem(x))


default_cfgs = generate_default_cfgs(
    {"cifar_shufflenetv1": cifar_cfg(), "cifar_shufflenetv2": cifar_cfg()}
)


@register_model
def cifar_shufflenetv1(pretrained: bool = False, **kwargs: Any) -> CifarShuffleNetV1:
    """ShuffleNet V1, 3 groups, widths (240, 480, 960) (1.00M parameters at 100 classes)."""
    return create_cifar_model(CifarShuffleNetV1, "cifar_shufflenetv1", pretrained, **kwargs)


@register_model
def cifar_shufflenetv2(pretrained: bool = False, **kwargs: Any) -> CifarShuffleNetV2:
    """ShuffleNet V2 ×1, widths (116, 232, 464), last conv 1024 (1.36M parameters)."""
    return create_cifar_model(CifarShuffleNetV2, "cifar_shufflenetv2", pretrained, **kwargs)
