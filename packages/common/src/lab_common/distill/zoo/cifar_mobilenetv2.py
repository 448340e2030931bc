"""MobileNetV2 for CIFAR (Sandler et al., "MobileNetV2: Inverted Residuals and Linear
Bottlenecks", CVPR 2018), as used as a student in the distillation benchmarks.

The distillation benchmarks use width 0.5 with expansion 6 ("MobileNetV2" in CRD/mdistiller
tables); that is ``cifar_mobilenetv2``. For 32×32 inputs the stem and the first two stages keep
stride 1, so ``forward_features`` returns ``(B, 1280, H/8, W/8)``.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import ConvNormAct
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import CifarClassifier, cifar_cfg, create_cifar_model

__all__ = ["CifarMobileNetV2"]

# (expansion or None = use `expansion`, out channels, blocks, first stride) per stage.
_STAGES = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1×1 expand → 3×3 depthwise → 1×1 linear projection; identity shortcut when shapes match."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = in_chs * expansion
        self.use_shortcut = stride == 1 and in_chs == out_chs
        self.expand = ConvNormAct(in_chs, mid, 1) if expansion != 1 else nn.Identity()
        self.dw = ConvNormAct(mid, mid, 3, stride=stride, groups=mid)
        self.project = ConvNormAct(mid, out_chs, 1, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x)))
        return x + out if self.use_shortcut else out


class CifarMobileNetV2(CifarClassifier):
    """MobileNetV2 with width multiplier ``width_mult`` and expansion ``expansion``."""

    def __init__(
        self,
        width_mult: float = 0.5,
        expansion: int = 6,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if width_mult <= 0 or expansion < 1:
            raise ValueError(
                f"need width_mult > 0 and expansion >= 1, got {width_mult}, {expansion}"
            )
        in_chs = max(8, int(32 * width_mult))
        self.stem = ConvNormAct(in_chans, in_chs, 3)
        blocks: list[nn.Module] = []
        for t, c, n, s in _STAGES:
            out_chs = max(8, int(c * width_mult))
            for j in range(n):
                blocks.append(InvertedResidual(in_chs, out_chs, s if j == 0 else 1, t or expansion))
                in_chs = out_chs
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        blocks.append(ConvNormAct(in_chs, last, 1))
        self.stages = nn.Sequential(*blocks)
        self._init_head(last, num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → ``(B, 1280, H/8, W/8)`` (ceil division at each stride)."""
        return self.stages(self.stem(x))


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarMobileNetV2:
    return create_cifar_model(CifarMobileNetV2, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs(
    {"cifar_mobilenetv2": cifar_cfg(), "cifar_mobilenetv2_1_0": cifar_cfg()}
)


@register_model
def cifar_mobilenetv2(pretrained: bool = False, **kwargs: Any) -> CifarMobileNetV2:
    """MobileNetV2 ×0.5, expansion 6: the distillation-benchmark student (0.81M parameters)."""
    return _create("cifar_mobilenetv2", pretrained, **{"width_mult": 0.5, **kwargs})


@register_model
def cifar_mobilenetv2_1_0(pretrained: bool = False, **kwargs: Any) -> CifarMobileNetV2:
    """MobileNetV2 ×1.0, expansion 6 (2.35M parameters at 100 classes)."""
    return _create("cifar_mobilenetv2_1_0", pretrained, **{"width_mult": 1.0, **kwargs})
