"""In-memory named datasets: augmentation, per-item seeding, validation splits, CIFAR-10."""

import pytest
import torch
from torch.utils.data import DataLoader

from lab_common.data import (
    SeededSamples,
    TensorImageDataset,
    load_cifar10_tensors,
    tensor_datasets,
    validation_split,
)


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


def test_seeded_samples_depend_on_seed_and_index_only():
    x = torch.randint(
        0, 256, (8, 1, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    ds = SeededSamples(TensorImageDataset(x, torch.arange(8), (0.0,), (1.0,), augment=True))
    ds.set_epoch(3)
    torch.manual_seed(123)
    first = torch.stack([ds[i][0] for i in range(8)])
    after = torch.rand(())
    torch.manual_seed(123)
    assert torch.rand(()) == after  # the global RNG is left as it was
    with_workers = torch.cat([b[0] for b in DataLoader(ds, batch_size=3, num_workers=2)])
    assert torch.equal(first, with_workers)
    ds.set_epoch(4)
    assert not torch.equal(first, torch.stack([ds[i][0] for i in range(8)]))


def test_validation_split_sizes_and_errors():
    labels = torch.arange(10).repeat(50)
    train, val = validation_split(labels, 100, seed=0)
    assert len(val) == 100 and len(train) == 400
    assert torch.bincount(labels[val]).tolist() == [10] * 10
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(val, validation_split(labels, 100, seed=0)[1])
    with pytest.raises(ValueError, match="leaves no training images"):
        validation_split(labels, 500, seed=0)


def test_cifar10_archive_gives_the_studies_validation_split():
    train, val, k, chans = tensor_datasets("cifar10", val_images=5000)
    assert (len(train), len(val), k, chans) == (45000, 5000, 10, 3)
    assert torch.bincount(val.labels).tolist() == [500] * 10
    x, y, _ = load_cifar10_tensors()
    from lab_common.data import class_balanced_split

    _, expected = class_balanced_split(y, 0.1, seed=0)  # the split every study uses
    assert torch.equal(val.images, x[expected])
    with pytest.raises(FileNotFoundError, match="training images only; pass --val-images"):
        tensor_datasets("cifar10")
    with pytest.raises(ValueError, match="unknown dataset"):
        tensor_datasets("svhn")
