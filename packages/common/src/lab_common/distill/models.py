"""The engine's model factory: a zoo (``cifar_*``) or any timm model, and its default lr."""

from __future__ import annotations

import timm
from torch import nn

from . import zoo  # registers the cifar_* models with timm

__all__ = ["check_model_name", "create_model", "default_lr"]

_LIGHT_STUDENTS = ("mobilenet", "shufflenet")


def check_model_name(name: str, option: str = "model") -> None:
    """Raise a one-line ``ValueError`` if neither the zoo nor timm has a model called ``name``.

    ``option`` names where the name came from (e.g. ``"--teacher"``) in the message.
    """
    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(
            f"unknown model {name!r} ({option}): use a zoo model (cifar_*, e.g. "
            f"{', '.join(zoo.list_zoo_models()[:3])}; all of them: "
            "lab_common.distill.zoo.list_zoo_models()) or a timm model (timm.list_models())"
        )


def create_model(name: str, num_classes: int, in_chans: int, *, option: str = "model") -> nn.Module:
    """``timm.create_model(name, num_classes=..., in_chans=...)``; unknown names raise ValueError.

    ``option`` names the setting the name came from in that error (see :func:`check_model_name`).
    """
    check_model_name(name, option)
    return timm.create_model(name, num_classes=num_classes, in_chans=in_chans)


def default_lr(student: str) -> float:
    """The protocol's student learning rate: 0.01 for MobileNet/ShuffleNet students, else 0.05."""
    return 0.01 if any(s in student.lower() for s in _LIGHT_STUDENTS) else 0.05
