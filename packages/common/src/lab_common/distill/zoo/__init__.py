"""The CIFAR knowledge-distillation model zoo, registered with timm.

Importing this package registers ``cifar_resnet{8,20,32,44,56,110,8x4,32x4}``,
``cifar_wrn_{16_1,16_2,40_1,40_2,28_10}``, ``cifar_vgg{8,11,13,16,19}``,
``cifar_mobilenetv2`` (×0.5, the benchmark student), ``cifar_mobilenetv2_1_0``,
``cifar_shufflenetv1`` and ``cifar_shufflenetv2`` with timm::

    import lab_common.distill  # noqa: F401  (registers the models)
    model = timm.create_model("cifar_resnet8x4", num_classes=10, in_chans=1)

Every model takes ``num_classes`` and ``in_chans``; ``forward_features`` returns the last
stage's map ``(B, C, H', W')`` and ``forward_head`` turns it into logits ``(B, num_classes)``.
"""

from ._base import CifarClassifier
from .cifar_mobilenetv2 import CifarMobileNetV2
from .cifar_resnet import CifarResNet
from .cifar_shufflenet import CifarShuffleNetV1, CifarShuffleNetV2
from .cifar_vgg import CifarVGG
from .cifar_wrn import CifarWideResNet

__all__ = [
    "CifarClassifier",
    "CifarMobileNetV2",
    "CifarResNet",
    "CifarShuffleNetV1",
    "CifarShuffleNetV2",
    "CifarVGG",
    "CifarWideResNet",
    "list_zoo_models",
]


def list_zoo_models() -> list[str]:
    """Names of every zoo model registered with timm (sorted)."""
    import timm

    return sorted(timm.list_models("cifar_*"))
