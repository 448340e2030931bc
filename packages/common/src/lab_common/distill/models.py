"""The engine's model factory: a zoo (``cifar_*``) or any timm model, and its default lr."""

from __future__ import annotations

import timm
from torch import nn

from ..cli import check_model_name
from . import zoo  # noqa: F401  (registers the cifar_* models with timm)

__all__ = ["ZOO_HINT", "create_model", "default_lr"]

_LIGHT_STUDENTS = ("mobilenet", "shufflenet")


#: How an unknown-model error lists the zoo (:func:`lab_common.cli.check_model_name`).
ZOO_HINT = "lab_common.distill.zoo.list_zoo_models() lists the CIFAR zoo (cifar_*)"


def create_model(
    name: str, num_classes: int, in_chans: int, *, option: str = "--model"
) -> nn.Module:
    """``timm.create_model(name, num_classes=..., in_chans=...)``; unknown names raise ValueError.

    ``option`` names the setting the name came from in that error (see :func:`check_model_name`).
    """
    check_model_name(name, timm.is_model, option, ZOO_HINT)
    return timm.create_model(name, num_classes=num_classes, in_chans=in_chans)


def default_lr(student: str) -> float:
    """The protocol's student learning rate: 0.01 for MobileNet/ShuffleNet students, else 0.05."""
    return 0.01 if any(s in student.lower() for s in _LIGHT_STUDENTS) else 0.05
