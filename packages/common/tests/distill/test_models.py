"""The engine's model factory and the protocol's student learning rate."""

import pytest
import torch

from lab_common.distill import create_model, default_lr


def test_zoo_and_timm_names_with_classes_and_channels():
    zoo = create_model("cifar_resnet8", num_classes=7, in_chans=1)
    assert zoo(torch.randn(2, 1, 28, 28)).shape == (2, 7)
    timm_model = create_model("resnet10t", num_classes=3, in_chans=3)
    assert timm_model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="unknown model 'nope_net'.*cifar_"):
        create_model("nope_net", num_classes=10, in_chans=3)


def test_light_students_get_the_lower_protocol_lr():
    assert default_lr("cifar_mobilenetv2") == default_lr("cifar_ShuffleNetV1") == 0.01
    assert default_lr("cifar_resnet8x4") == default_lr("cifar_wrn_16_2") == 0.05
