"""Shapes, parameter counts and timm integration of the CIFAR distillation zoo."""

import pytest
import timm
import torch

from lab_common.distill import zoo

MODELS = zoo.list_zoo_models()
# Widely quoted CIFAR-100 parameter counts (CRD / mdistiller tables), in millions.
KNOWN_PARAMS_M = {
    "cifar_resnet8x4": 1.23,
    "cifar_resnet32x4": 7.43,
    "cifar_wrn_40_2": 2.26,
    "cifar_resnet56": 0.86,
    "cifar_resnet20": 0.28,
    "cifar_wrn_16_2": 0.70,
    "cifar_vgg13": 9.46,
    "cifar_vgg8": 3.96,
}
# Down-sampling of forward_features at 32×32 input.
REDUCTION = {"resnet": 4, "wrn": 4, "vgg": 16, "mobilenetv2": 8, "shufflenet": 8}


def _reduction(name: str) -> int:
    return next(r for key, r in REDUCTION.items() if key in name)


def test_every_family_is_registered():
    expected = {
        "cifar_resnet20",
        "cifar_resnet32",
        "cifar_resnet56",
        "cifar_resnet110",
        "cifar_resnet8x4",
        "cifar_resnet32x4",
        "cifar_wrn_16_2",
        "cifar_wrn_40_2",
        "cifar_vgg8",
        "cifar_vgg13",
        "cifar_mobilenetv2",
        "cifar_shufflenetv1",
        "cifar_shufflenetv2",
    }
    assert expected <= set(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_shapes_rgb_32(name):
    model = timm.create_model(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        pooled = model.forward_head(feats, pre_logits=True)
    r = _reduction(name)
    assert feats.shape == (2, model.num_features, 32 // r, 32 // r)
    assert logits.shape == (2, 7)
    assert pooled.shape == (2, model.num_features)
    torch.testing.assert_close(model(x), logits)
    assert model.get_classifier().out_features == 7


@pytest.mark.parametrize("name", MODELS)
def test_shapes_gray_28(name):
    model = timm.create_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, 1, 28, 28))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "millions"), sorted(KNOWN_PARAMS_M.items()))
def test_parameter_counts_match_literature(name, millions):
    model = timm.create_model(name, num_classes=100)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(millions, rel=0.03)


def test_reset_classifier_and_backward():
    model = timm.create_model("cifar_resnet20", num_classes=10)
    model.reset_classifier(0)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 64)
    model.reset_classifier(5)
    loss = model(torch.randn(4, 3, 32, 32)).sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_timm_cfg_and_caller_kwargs_win():
    model = timm.create_model("cifar_resnet8x4", num_classes=10, in_chans=1)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert model.stem.conv.in_channels == 1
    assert timm.create_model("cifar_resnet20", depth=32).stages[0].__len__() == 5


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        zoo.CifarResNet(depth=21)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        zoo.CifarWideResNet(depth=17)
    with pytest.raises(ValueError, match="depth must be one of"):
        zoo.CifarVGG(depth=9)
    with pytest.raises(ValueError, match="no released weights"):
        timm.create_model("cifar_resnet20", pretrained=True)
