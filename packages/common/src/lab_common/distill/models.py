"""The engine's model factory: a zoo (``cifar_*``) or any timm model, and its default lr."""

from __future__ import annotations

import timm
from torch import nn

from . import zoo  # registers the cifar_* models with timm

__all__ = ["create_model", "default_lr"]

_LIGHT_STUDENTS = ("mobilenet", "shufflenet")


def create_model(name: str, num_classes: int, in_chans: int) -> nn.Module:
    """``timm.create_model(name, num_classes=..., in_chans=...)``; unknown names raise ValueError."""
    try:
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(
            f"unknown model {name!r}: use a zoo model ({', '.join(zoo.list_zoo_models()[:4])}, ...) "
            "or any name from timm.list_models()"
        ) from err


def default_lr(student: str) -> float:
    """The protocol's student learning rate: 0.01 for MobileNet/ShuffleNet students, else 0.05."""
    return 0.01 if any(s in student.lower() for s in _LIGHT_STUDENTS) else 0.05
