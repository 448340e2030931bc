"""Shared pieces of the CIFAR zoo: the classifier base class, weight init, timm cfg + builder."""

from __future__ import annotations

from typing import Any, TypeVar

import torch
from timm.layers import ClassifierHead
from timm.models import build_model_with_cfg
from torch import nn

__all__ = ["CifarClassifier", "cifar_cfg", "create_cifar_model"]

# CIFAR-100 training-set statistics (the zoo's default pretrained_cfg mean/std).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

ModelT = TypeVar("ModelT", bound=nn.Module)


class CifarClassifier(nn.Module):
    """Base of every zoo model: the timm classifier interface around ``forward_features``.

    Subclasses build their trunk, then call :meth:`_init_head`, and implement
    ``forward_features(x: (B, in_chans, H, W)) -> (B, num_features, H', W')`` (the last
    stage's unpooled map). ``forward_head`` pools and classifies it into ``(B, num_classes)``.
    """

    num_classes: int
    num_features: int
    head_hidden_size: int

    def _init_head(
        self, num_features: int, num_classes: int, global_pool: str, drop_rate: float
    ) -> None:
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = no classifier), got {num_classes}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = num_features
        self.head = ClassifierHead(
            num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate
        )
        self.apply(_init_weights)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, num_features, H', W')`` → logits ``(B, num_classes)`` (pooled features if ``pre_logits``)."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, H, W)`` → logits ``(B, num_classes)``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (``num_classes=0`` → ``forward`` returns pooled features)."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def cifar_cfg(**kwargs: Any) -> dict[str, Any]:
    """Minimal timm pretrained cfg for a 32×32 CIFAR-100 model without released weights."""
    return {
        "url": "",
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
        "license": "mit",
        **kwargs,
    }


def create_cifar_model(
    model_cls: type[ModelT], variant: str, pretrained: bool = False, **kwargs: Any
) -> ModelT:
    """Build ``model_cls(**kwargs)`` through timm's ``build_model_with_cfg`` (cfg of ``variant``)."""
    if pretrained:
        raise ValueError(
            f"{variant} has no released weights; create it with pretrained=False and train it "
            "(e.g. with the clkd / trg-kd trainers)"
        )
    if kwargs.get("features_only"):
        raise ValueError(
            f"{variant} does not support features_only=True; use model.forward_features(x) for "
            "the last stage's (B, C, H, W) map"
        )
    return build_model_with_cfg(model_cls, variant, pretrained=False, **kwargs)
