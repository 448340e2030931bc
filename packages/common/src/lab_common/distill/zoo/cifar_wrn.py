"""Wide ResNets for CIFAR (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-w: pre-activation basic blocks, ``n = (d - 4) / 6`` per stage, widths
(16, 16w, 32w, 64w). ``forward_features`` returns the final BN-ReLU map ``(B, 64w, H/4, W/4)``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from timm.layers import BatchNormAct2d
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import CifarClassifier, cifar_cfg, create_cifar_model

__all__ = ["CifarWideResNet"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv3×3 twice (dropout between); a 1×1 shortcut on the pre-activated input."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, block_drop: float = 0.0) -> None:
        super().__init__()
        self.norm1 = BatchNormAct2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.norm2 = BatchNormAct2d(out_chs)
        self.drop = nn.Dropout(block_drop)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
            if stride != 1 or in_chs != out_chs
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.norm1(x)
        out = self.conv2(self.drop(self.norm2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class CifarWideResNet(CifarClassifier):
    """WRN-``depth``-``width`` for 32×32 inputs."""

    def __init__(
        self,
        depth: int = 16,
        width: int = 2,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        block_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        if width < 1:
            raise ValueError(f"WRN width must be >= 1, got {width}")
        blocks = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        # a bare conv (pre-activation blocks follow), named like ConvNormAct's: stem.conv.weight
        self.stem = nn.Sequential(
            OrderedDict(conv=nn.Conv2d(in_chans, 16, 3, padding=1, bias=False))
        )
        stages: list[nn.Module] = []
        in_chs = 16
        for i, out_chs in enumerate(widths):
            stride = 2 if i else 1
            stages.append(
                nn.Sequential(
                    *[
                        PreActBlock(
                            in_chs if j == 0 else out_chs,
                            out_chs,
                            stride if j == 0 else 1,
                            block_drop,
                        )
                        for j in range(blocks)
                    ]
                )
            )
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.norm = BatchNormAct2d(in_chs)
        self._init_head(in_chs, num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → ``(B, 64 * width, H/4, W/4)``."""
        return self.norm(self.stages(self.stem(x)))


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    return create_cifar_model(CifarWideResNet, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        name: cifar_cfg()
        for name in (
            "cifar_wrn_16_1",
            "cifar_wrn_16_2",
            "cifar_wrn_40_1",
            "cifar_wrn_40_2",
            "cifar_wrn_28_10",
        )
    }
)


@register_model
def cifar_wrn_16_1(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WRN-16-1 (0.18M parameters at 100 classes)."""
    return _create("cifar_wrn_16_1", pretrained, **{"depth": 16, "width": 1, **kwargs})


@register_model
def cifar_wrn_16_2(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WRN-16-2 (0.70M parameters at 100 classes)."""
    return _create("cifar_wrn_16_2", pretrained, **{"depth": 16, "width": 2, **kwargs})


@register_model
def cifar_wrn_40_1(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WRN-40-1 (0.57M parameters at 100 classes)."""
    return _create("cifar_wrn_40_1", pretrained, **{"depth": 40, "width": 1, **kwargs})


@register_model
def cifar_wrn_40_2(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WRN-40-2 (2.26M parameters at 100 classes)."""
    return _create("cifar_wrn_40_2", pretrained, **{"depth": 40, "width": 2, **kwargs})


@register_model
def cifar_wrn_28_10(pretrained: bool = False, **kwargs: Any) -> CifarWideResNet:
    """WRN-28-10 (36.5M parameters at 100 classes)."""
    return _create("cifar_wrn_28_10", pretrained, **{"depth": 28, "width": 10, **kwargs})
