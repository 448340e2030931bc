import pytest
import torch

from gp_maml import Conv4, ResNet12, create_backbone, create_learner


@pytest.mark.parametrize("hidden,size,feat", [(32, 28, 32), (64, 28, 64), (64, 84, 1600)])
def test_conv4_shapes(hidden, size, feat):
    m = Conv4(3, 5, hidden, size)
    assert m.num_features == feat
    assert m(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert m.forward_features(torch.randn(2, 3, size, size)).shape == (2, feat)


def test_resnet12_shapes():
    m = ResNet12(3, 5, widths=(8, 16, 16, 32))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5) and m.num_features == 32


def test_backbones_hold_the_torch_func_safe_layers():
    from gp_maml import BatchNorm2d, MaxPool2d

    for model in (Conv4(1, 5, 8, 28), ResNet12(3, 5, widths=(8, 8, 8, 8))):
        kinds = {type(m) for m in model.modules()}
        assert BatchNorm2d in kinds and MaxPool2d in kinds
        assert not {torch.nn.BatchNorm2d, torch.nn.MaxPool2d} & kinds


def test_batch_norm_uses_batch_statistics():
    m = Conv4(1, 5, 32, 28).eval()
    x = torch.randn(4, 1, 28, 28)
    # eval mode still normalises with the batch's statistics: sample 0 depends on its batch
    other = torch.cat([x[:1], 5 * torch.randn(3, 1, 28, 28)])
    assert not torch.allclose(m(x)[0], m(other)[0])
    assert not any(
        b.track_running_stats for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)
    )


def test_running_stats_batch_norm_refused():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten()
    )
    model.add_module("head", torch.nn.LazyLinear(5))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        create_learner("maml", model)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="conv4-32"):
        create_backbone("vgg", in_chans=1, num_classes=5, img_size=28)
    with pytest.raises(ValueError, match="img_size"):
        Conv4(1, 5, 32, 8)
