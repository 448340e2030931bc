"""The engine's datasets: the named ones as in-memory tensors (:mod:`lab_common.data`), or image folders."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset, Subset

from ..data import (
    DATASET_STATS,
    SeededSamples,
    TensorImageDataset,
    build_image_dataset,
    dataset_num_classes,
    tensor_datasets,
    validation_split,
)
from .config import DistillConfig

__all__ = ["DistillDatasets", "SeededSamples", "TensorImageDataset", "build_datasets"]

#: ``(train, test, num_classes, in_chans)``; items ``(image (C, H, W) float, label int64)``.
DistillDatasets = tuple[Dataset, Dataset, int, int]


def _subset(ds: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(ds, idx.tolist())


def build_datasets(config: DistillConfig) -> DistillDatasets:
    """``(train, test, num_classes, in_chans)`` for ``config.dataset``, subsets applied.

    The named datasets are held in memory as uint8 tensors (random crop with ``H / 8`` padding
    and, except for MNIST, horizontal flips); an image folder is read with PIL transforms
    (random-resized crop + flip for training, resize + centre crop for testing, ImageNet
    normalisation) at ``config.image_size``. With ``config.val_images`` the evaluation split
    (second item) is that many class-balanced training images, not augmented, and the
    training split is the rest.
    """
    key = config.dataset.lower().replace("_", "-")
    if key in DATASET_STATS:
        train, test, k, in_chans = tensor_datasets(
            key,
            config.data_root,
            val_images=config.val_images,
            val_seed=config.val_seed,
            download=config.download,
        )
    else:
        import timm.data
        import torchvision.transforms as T

        size = config.image_size
        norm = T.Normalize(timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)
        train_tf = T.Compose(
            [
                T.RandomResizedCrop(size, scale=(0.35, 1.0)),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                norm,
            ]
        )
        test_tf = T.Compose(
            [T.Resize(math.ceil(size * 1.14)), T.CenterCrop(size), T.ToTensor(), norm]
        )
        root = config.data_root
        train = build_image_dataset(config.dataset, root, train=True, transform=train_tf)
        if config.val_images is not None:
            plain = build_image_dataset(config.dataset, root, train=True, transform=test_tf)
            train_idx, val_idx = validation_split(train.targets, config.val_images, config.val_seed)
            train, test = Subset(train, train_idx.tolist()), Subset(plain, val_idx.tolist())
        else:
            test = build_image_dataset(config.dataset, root, train=False, transform=test_tf)
        k, in_chans = dataset_num_classes(train), 3
    train = _subset(train, config.train_subset, config.subset_seed)
    test = _subset(test, config.test_subset, config.subset_seed + 1)
    return train, test, k, in_chans
