"""The mdistiller/RepDistiller teacher converter, on a state dict built here in their layout."""

import pytest
import torch
from torch import nn

from clkd.teachers import convert_resnet_state_dict, convert_teacher_checkpoint, main
from lab_common import load_checkpoint
from lab_common.distill import create_model


class _RepBlock(nn.Module):
    """RepDistiller's CIFAR BasicBlock names: conv1/bn1/conv2/bn2/downsample.{0,1}."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class _RepResNet(nn.Module):
    """A RepDistiller-layout CIFAR ResNet (depth 6n + 2): conv1, bn1, layer1..3, fc."""

    def __init__(self, depth: int, widths: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for s, cout in enumerate(widths[1:], start=1):
            blocks = [
                _RepBlock(cin if i == 0 else cout, cout, 2 if s > 1 and i == 0 else 1)
                for i in range(n)
            ]
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
            cin = cout
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def _trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics everywhere, so a wrong mapping changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(
                    torch.rand(t.shape, generator=g) + 0.5
                    if "running_var" in name
                    else torch.randn(t.shape, generator=g) * 0.2
                )
    return model.eval()


@pytest.mark.parametrize(
    ("zoo_name", "depth", "widths"),
    [
        ("cifar_resnet8", 8, (16, 16, 32, 64)),
        ("cifar_resnet8x4", 8, (32, 64, 128, 256)),
        ("cifar_resnet20", 20, (16, 16, 32, 64)),
    ],
)
def test_converted_resnet_computes_the_same_function(zoo_name, depth, widths):
    ref = _trained_looking(_RepResNet(depth, widths, num_classes=100))
    state = {f"module.{k}": v for k, v in ref.state_dict().items()}  # DataParallel prefix
    zoo = create_model(zoo_name, num_classes=100, in_chans=3).eval()
    zoo.load_state_dict(convert_resnet_state_dict({"model": state, "epoch": 240}))  # strict
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(zoo(x), ref(x), rtol=1e-4, atol=1e-4)


def test_checkpoint_file_round_trip_loads_in_the_engine_format(tmp_path):
    ref = _trained_looking(_RepResNet(8, (16, 16, 32, 64), num_classes=10))
    src = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": ref.state_dict(), "best_acc": 71.5}, src)
    main([str(src), str(tmp_path / "t.pt"), "--teacher", "cifar_resnet8", "--num-classes", "10"])
    out = load_checkpoint(tmp_path / "t.pt")
    assert out["model_name"] == "cifar_resnet8" and out["num_classes"] == 10
    assert out["test_acc"] == 71.5
    zoo = create_model("cifar_resnet8", num_classes=10, in_chans=3).eval()
    zoo.load_state_dict(out["model"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(zoo(x), ref(x), rtol=1e-4, atol=1e-4)


def test_wrong_architecture_and_foreign_keys_raise(tmp_path):
    with pytest.raises(ValueError, match="block1.layer.0.bn1.weight"):
        convert_resnet_state_dict({"block1.layer.0.bn1.weight": torch.ones(3)})  # a WRN key
    src = tmp_path / "r8.pth"
    torch.save({"model": _RepResNet(8, (16, 16, 32, 64), 100).state_dict()}, src)
    with pytest.raises(ValueError, match="does not fit cifar_resnet20"):
        convert_teacher_checkpoint(src, tmp_path / "x.pt", "cifar_resnet20", num_classes=100)
    assert not (tmp_path / "x.pt").exists()
