"""Named datasets as in-memory uint8 tensors: crop + flip augmentation, validation splits.

:func:`tensor_datasets` gives ``(train, eval, num_classes, in_chans)`` for Fashion-MNIST,
MNIST, CIFAR-10 (torchvision's files or the shared JPEG archive of its training images) and
CIFAR-100, each a :class:`TensorImageDataset`; with ``val_images`` the evaluation split is
held out from the training images (:func:`validation_split`) and the test split is not read.
:class:`SeededSamples` makes any dataset's random augmentation a function of the epoch's seed
and the item's index alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..paths import shared_datasets_root
from .cifar10 import CIFAR10_ARCHIVE, load_cifar10_tensors
from .readers import build_image_dataset
from .splits import class_balanced_split

__all__ = [
    "DATASET_STATS",
    "SeededSamples",
    "TensorImageDataset",
    "load_tensors",
    "tensor_datasets",
    "validation_split",
]

#: Per-channel mean and std of each named dataset's training images.
DATASET_STATS = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
#: Datasets whose images are not mirror-symmetric (no horizontal flips).
NO_FLIP = ("mnist",)


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

    def draw_view(self, generator: torch.Generator | None = None) -> tuple[int, int, bool]:
        """A random augmentation ``(top, left, flip)`` (crop offsets into the padded image)."""
        top, left = torch.randint(0, 2 * self.padding + 1, (2,), generator=generator).tolist()
        flip = self.flip and bool(torch.rand((), generator=generator) < 0.5)
        return top, left, flip

    def image(self, index: int, view: tuple[int, int, bool] | None = None) -> torch.Tensor:
        """Image ``index`` normalised, ``(C, H, W)`` float, as seen through ``view`` (or none)."""
        img = self.images[index]
        if view is not None and self.augment:
            top, left, flip = view
            img = img[:, top : top + self.height, left : left + self.width]
            if flip:
                img = img.flip(-1)
        elif self.padding:
            p = self.padding
            img = img[:, p : p + self.height, p : p + self.width]
        return (img.float() - self.mean) / self.std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        view = self.draw_view() if self.augment else None
        return self.image(index, view), self.labels[index]


class SeededSamples(Dataset):
    """``dataset`` with item ``i`` drawn under RNGs seeded from ``(seed, i)`` alone.

    torch's, Python's and NumPy's global RNGs are seeded per item and restored after it, so random
    augmentation depends on the epoch's seed (:meth:`set_epoch`) and the index only, not on
    the number of DataLoader workers or on what ran before.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.seed = 0

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item_seed = (self.seed * 1_000_003 + index) % 2**63
        state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            np.random.seed(item_seed % 2**32)  # noqa: NPY002 (the global one transforms use)
            try:
                return self.dataset[index]
            finally:
                random.setstate(state)
                np.random.set_state(np_state)  # noqa: NPY002


def load_tensors(
    name: str, root: str | None, train: bool, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, C, H, W)`` uint8 images and ``(N,)`` labels of a named dataset's split.

    CIFAR-10's training images come from the JPEG archive (:data:`CIFAR10_ARCHIVE`) when the
    root holds it and not torchvision's ``cifar-10-batches-py``; that archive has no test split.
    """
    if name == "cifar10":
        base = Path(root).expanduser() if root is not None else shared_datasets_root()
        if (base / CIFAR10_ARCHIVE).is_file() and not (base / "cifar-10-batches-py").is_dir():
            if not train:
                raise FileNotFoundError(
                    f"{base / CIFAR10_ARCHIVE} holds CIFAR-10's training images only; pass "
                    "--val-images N (val_images=N) to evaluate on N images held out from them"
                )
            images, labels, _ = load_cifar10_tensors(base)
            return images, labels
    ds = build_image_dataset(name, root, train=train, download=download)
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)


def validation_split(
    labels: Sequence[int] | torch.Tensor, n: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` indices with ``n`` class-balanced images in ``val`` (``--val-images``)."""
    total = len(labels)
    if n >= total:
        raise ValueError(
            f"--val-images {n} leaves no training images (the training split has {total}); "
            "hold out fewer"
        )
    return class_balanced_split(labels, n / total, seed=seed)


def _padding(native: int, size: int | None, name: str) -> int:
    if size is None or size == native:
        return 0
    if size < native or (size - native) % 2:
        raise ValueError(
            f"{name}'s {native}x{native} images can be zero-padded to a larger size by an even "
            f"amount, not to {size}; use {native} or e.g. {native + 4}"
        )
    return (size - native) // 2


def tensor_datasets(
    name: str,
    root: str | None = None,
    *,
    val_images: int | None = None,
    val_seed: int = 0,
    size: int | None = None,
    download: bool = False,
) -> tuple[TensorImageDataset, TensorImageDataset, int, int]:
    """``(train, eval, num_classes, in_chans)`` of a named dataset (``DATASET_STATS``'s keys).

    The training split is augmented (random crop with ``H / 8`` zero padding and, except for
    MNIST, horizontal flips); the evaluation split is the test split, or with ``val_images``
    that many class-balanced training images (seed ``val_seed``), not augmented. ``size``
    zero-pads every image to ``size × size`` first (e.g. Fashion-MNIST's 28² to 32²);
    ``download`` fetches a missing dataset with torchvision (:func:`build_image_dataset`).
    """
    key = name.lower().replace("_", "-")
    if key not in DATASET_STATS:
        raise ValueError(f"unknown dataset {name!r}; use one of {sorted(DATASET_STATS)}")
    mean, std = DATASET_STATS[key]
    xtr, ytr = load_tensors(key, root, True, download)
    pad = _padding(xtr.shape[-1], size, name)
    if val_images is not None:
        train_idx, val_idx = validation_split(ytr, val_images, val_seed)
        xte, yte = xtr[val_idx], ytr[val_idx]
        xtr, ytr = xtr[train_idx], ytr[train_idx]
    else:
        xte, yte = load_tensors(key, root, False, download)
    if pad:
        xtr, xte = F.pad(xtr, (pad,) * 4), F.pad(xte, (pad,) * 4)
    k = 100 if key == "cifar100" else 10
    pad = xtr.shape[-1] // 8
    train = TensorImageDataset(
        xtr, ytr, mean, std, augment=True, padding=pad, flip=key not in NO_FLIP, num_classes=k
    )
    return train, TensorImageDataset(xte, yte, mean, std, num_classes=k), k, xtr.shape[1]
