"""The engine's datasets: in-memory tensors with augmentation, and the named datasets."""

import pytest
import torch

from lab_common.distill import DistillConfig, TensorImageDataset, build_datasets


def test_tensor_dataset_augments_and_validates():
    x = torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4)
    ds = TensorImageDataset(x, torch.tensor([0, 1]), (0.0,), (1 / 255,), augment=True, padding=1)
    crops = {tuple(ds[1][0].flatten().tolist()) for _ in range(40)}
    assert len(crops) > 1  # random crops (and flips) of the padded image
    img, label = ds[1]
    assert img.shape == (1, 4, 4) and label.item() == 1
    plain = TensorImageDataset(x, torch.tensor([0, 1]), (0.0,), (1 / 255,))
    torch.testing.assert_close(plain[0][0], x[0].float())
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(x.float(), torch.tensor([0, 1]), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="labels"):
        TensorImageDataset(x, torch.tensor([0]), (0.0,), (1.0,))


def test_fashion_mnist_from_shared_folder_with_subsets():
    cfg = DistillConfig(dataset="fashion-mnist", train_subset=100, test_subset=50)
    train, test, k, chans = build_datasets(cfg)
    assert (len(train), len(test), k, chans) == (100, 50, 10, 1)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y < 10
