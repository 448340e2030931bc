"""VGG with BatchNorm for CIFAR (Simonyan & Zisserman, ICLR 2015), as in the distillation benchmarks.

Five blocks of 3×3 conv-BN-ReLU layers with 2×2 max-pooling after the first four, then global
average pooling and one linear layer. ``forward_features`` returns the fifth block's map
``(B, 512, H/16, W/16)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import ConvNormAct
from timm.models import generate_default_cfgs, register_model
from torch import nn

from ._base import CifarClassifier, cifar_cfg, create_cifar_model

__all__ = ["CifarVGG"]

# Conv widths of the five blocks, per depth.
_BLOCKS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class CifarVGG(CifarClassifier):
    """VGG-``depth`` (8, 11, 13, 16 or 19) with BatchNorm."""

    def __init__(
        self,
        depth: int = 13,
        num_classes: int = 100,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if depth not in _BLOCKS:
            raise ValueError(f"VGG depth must be one of {sorted(_BLOCKS)}, got {depth}")
        blocks: Sequence[Sequence[int]] = _BLOCKS[depth]
        layers: list[nn.Module] = []
        in_chs = in_chans
        for i, widths in enumerate(blocks):
            if i:
                layers.append(nn.MaxPool2d(2, 2))
            for out_chs in widths:
                layers.append(ConvNormAct(in_chs, out_chs, 3))
                in_chs = out_chs
        self.stem = layers[0]
        self.stages = nn.Sequential(*layers[1:])
        self._init_head(in_chs, num_classes, global_pool, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → ``(B, 512, H/16, W/16)`` (floor division at each pool)."""
        return self.stages(self.stem(x))


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    return create_cifar_model(CifarVGG, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs({f"cifar_vgg{d}": cifar_cfg() for d in (8, 11, 13, 16, 19)})


@register_model
def cifar_vgg8(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-8-BN for CIFAR (3.96M parameters at 100 classes)."""
    return _create("cifar_vgg8", pretrained, **{"depth": 8, **kwargs})


@register_model
def cifar_vgg11(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-11-BN for CIFAR (9.28M parameters at 100 classes)."""
    return _create("cifar_vgg11", pretrained, **{"depth": 11, **kwargs})


@register_model
def cifar_vgg13(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-13-BN for CIFAR (9.46M parameters at 100 classes)."""
    return _create("cifar_vgg13", pretrained, **{"depth": 13, **kwargs})


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-16-BN for CIFAR (14.77M parameters at 100 classes)."""
    return _create("cifar_vgg16", pretrained, **{"depth": 16, **kwargs})


@register_model
def cifar_vgg19(pretrained: bool = False, **kwargs: Any) -> CifarVGG:
    """VGG-19-BN for CIFAR (20.08M parameters at 100 classes)."""
    return _create("cifar_vgg19", pretrained, **{"depth": 19, **kwargs})
