"""The engine's datasets: in-memory uint8 tensors with crop+flip augmentation, or image folders."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..data import build_image_dataset, dataset_num_classes
from .config import DistillConfig

__all__ = ["DistillDatasets", "TensorImageDataset", "build_datasets"]

#: ``(train, test, num_classes, in_chans)``; items ``(image (C, H, W) float, label int64)``.
DistillDatasets = tuple[Dataset, Dataset, int, int]

_STATS = {  # per-channel mean / std of the training sets
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_NO_FLIP = ("mnist",)  # digits are not mirror-symmetric


class TensorImageDataset(Dataset):
    """In-memory uint8 images ``(N, C, H, W)`` and labels ``(N,)``, normalised on access.

    With ``augment=True`` each access takes a random ``H × W`` crop of the image zero-padded by
    ``padding`` pixels and, if ``flip``, mirrors it with probability 0.5 (torch's global RNG).
    Items are ``(float (C, H, W), int64 label)``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: bool = False,
        padding: int = 4,
        flip: bool = True,
        num_classes: int | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must be (N,) = ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(
                f"need one mean/std per channel ({images.shape[1]}), got {mean}, {std}"
            )
        self.height, self.width = images.shape[-2:]
        self.padding = padding if augment else 0
        self.images = F.pad(images, (self.padding,) * 4) if self.padding else images
        self.labels = labels.long()
        self.mean = torch.tensor(mean).view(-1, 1, 1) * 255.0
        self.std = torch.tensor(std).view(-1, 1, 1) * 255.0
        self.augment = augment
        self.flip = flip
        self.classes = list(range(num_classes or int(labels.max()) + 1))

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[index]
        if self.augment:
            top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
            img = img[:, top : top + self.height, left : left + self.width]
            if self.flip and torch.rand(()) < 0.5:
                img = img.flip(-1)
        return (img.float() - self.mean) / self.std, self.labels[index]


def _tensor_split(name: str, root: str | None, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ds = build_image_dataset(name, root, train=train)
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


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
    normalisation) at ``config.image_size``.
    """
    key = config.dataset.lower().replace("_", "-")
    if key in _STATS:
        mean, std = _STATS[key]
        (xtr, ytr), (xte, yte) = (_tensor_split(key, config.data_root, t) for t in (True, False))
        k = 100 if key == "cifar100" else 10
        pad = xtr.shape[-1] // 8
        train = TensorImageDataset(
            xtr, ytr, mean, std, augment=True, padding=pad, flip=key not in _NO_FLIP, num_classes=k
        )
        test = TensorImageDataset(xte, yte, mean, std, num_classes=k)
        in_chans = xtr.shape[1]
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
        test = build_image_dataset(config.dataset, root, train=False, transform=test_tf)
        k, in_chans = dataset_num_classes(train), 3
    train = _subset(train, config.train_subset, config.subset_seed)
    test = _subset(test, config.test_subset, config.subset_seed + 1)
    return train, test, k, in_chans
