"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

The 6n+2 basic-block networks of the distillation benchmarks (CRD / RepDistiller, mdistiller):
``resnet8/20/32/44/56/110`` with widths (16, 16, 32, 64) and the 4× wide ``resnet8x4`` /
``resnet32x4`` with widths (32, 64, 128, 256). Projection (1×1 conv + BN) shortcuts wherever
the shape changes. ``forward_features`` returns the third stage's map ``(B, C, H/4, W/4)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import ConvNormAct
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import CifarClassifier, cifar_cfg, create_cifar_model

__all__ = ["CifarResNet"]


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a shortcut, then ReLU: ``(B, in, H, W) → (B, out, H/s, W/s)``."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_chs, out_chs, 3, stride=stride)
        self.conv2 = ConvNormAct(out_chs, out_chs, 3, apply_act=False)
        if stride != 1 or in_chs != out_chs:
            self.shortcut: nn.Module = ConvNormAct(
                in_chs, out_chs, 1, stride=stride, apply_act=False
            )
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class CifarResNet(CifarClassifier):
    """A ``depth = 6n + 2`` CIFAR ResNet: 3×3 stem, three stages of ``n`` basic blocks."""

    def __init__(
        self,
        depth: int = 20,
        widths: Sequence[int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must be (stem, stage1, stage2, stage3), got {tuple(widths)}")
        blocks = (depth - 2) // 6
        self.stem = ConvNormAct(in_chans, widths[0], 3)
        stages: list[nn.Module] = []
        in_chs = widths[0]
        for i, out_chs in enumerate(widths[1:]):
            layers = [
                BasicBlock(in_chs if j == 0 else out_chs, out_chs, 2 if i and not j else 1)
                for j in range(blocks)
            ]
            stages.append(nn.Sequential(*layers))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self._init_head(in_chs, num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → ``(B, widths[3], H/4, W/4)``."""
        return self.stages(self.stem(x))


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    return create_cifar_model(CifarResNet, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        name: cifar_cfg()
        for name in (
            "cifar_resnet8",
            "cifar_resnet20",
            "cifar_resnet32",
            "cifar_resnet44",
            "cifar_resnet56",
            "cifar_resnet110",
            "cifar_resnet8x4",
            "cifar_resnet32x4",
        )
    }
)

_X4 = (32, 64, 128, 256)


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-8 for CIFAR (0.08M parameters at 100 classes): a tiny student."""
    return _create("cifar_resnet8", pretrained, **{"depth": 8, **kwargs})


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (0.28M parameters at 100 classes)."""
    return _create("cifar_resnet20", pretrained, **{"depth": 20, **kwargs})


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (0.47M parameters at 100 classes)."""
    return _create("cifar_resnet32", pretrained, **{"depth": 32, **kwargs})


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (0.67M parameters at 100 classes)."""
    return _create("cifar_resnet44", pretrained, **{"depth": 44, **kwargs})


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (0.86M parameters at 100 classes)."""
    return _create("cifar_resnet56", pretrained, **{"depth": 56, **kwargs})


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (1.74M parameters at 100 classes)."""
    return _create("cifar_resnet110", pretrained, **{"depth": 110, **kwargs})


@register_model
def cifar_resnet8x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-8 with 4× widths (1.23M parameters at 100 classes)."""
    return _create("cifar_resnet8x4", pretrained, **{"depth": 8, "widths": _X4, **kwargs})


@register_model
def cifar_resnet32x4(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 with 4× widths (7.43M parameters at 100 classes)."""
    return _create("cifar_resnet32x4", pretrained, **{"depth": 32, "widths": _X4, **kwargs})
