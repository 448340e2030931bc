"""The engine's datasets: the named datasets with subsets and validation splits."""

import torch

from lab_common.distill import DistillConfig, build_datasets


def test_fashion_mnist_from_shared_folder_with_subsets():
    cfg = DistillConfig(dataset="fashion-mnist", train_subset=100, test_subset=50)
    train, test, k, chans = build_datasets(cfg)
    assert (len(train), len(test), k, chans) == (100, 50, 10, 1)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y < 10


def test_validation_split_replaces_the_test_split():
    cfg = DistillConfig(dataset="fashion-mnist", val_images=1000)
    train, val, k, _ = build_datasets(cfg)
    assert (len(train), len(val), k) == (59000, 1000, 10)
    assert torch.bincount(val.labels).tolist() == [100] * 10
    assert not val.augment and train.augment
