"""Shared fixtures: small real data from ../shared/datasets and a small LaViT for 32x32 inputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lab_common import shared_datasets_root
from lab_common.data import load_fashion_mnist_tensors

#: ``tools/`` (the package list, the wheel and changelog checks) is importable in these tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))


@pytest.fixture(scope="session")
def fashion_mnist_32() -> tuple[torch.Tensor, torch.Tensor]:
    """1,024 real Fashion-MNIST training images, ``(1024, 1, 32, 32)`` in [0, 1] (zero-padded)."""
    x, y = load_fashion_mnist_tensors(train=True)
    x = F.pad(x[:1024].float().div(255).unsqueeze(1), (2, 2, 2, 2))
    return x, y[:1024]


@pytest.fixture(scope="session")
def omniglot_small1():
    from gp_maml.datasets.omniglot import load_omniglot

    return load_omniglot(shared_datasets_root() / "omniglot" / "images_background_small1.zip")


@pytest.fixture
def small_lavit():
    """Factory of a LaViT for 32x32 inputs: grids 16/8/4/2, LA blocks in stages 3 and 4."""
    from lavit import LaViT

    return lambda num_classes=10, in_chans=1: LaViT(
        img_size=32,
        patch_size=2,
        in_chans=in_chans,
        num_classes=num_classes,
        depths=(1, 1, 2, 2),
        la_depths=(0, 0, 1, 1),
        embed_dims=(16, 32, 48, 64),
        num_heads=(1, 2, 2, 4),
        mlp_ratios=(2, 2, 2, 2),
        sr_ratios=(4, 2, 1, 1),
    )
