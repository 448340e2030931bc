"""CIFAR-10's training images from the shared JPEG archive, decoded once into one cached tensor."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..paths import cache_dir, shared_datasets_root
from .readers import _content_key

__all__ = ["CIFAR10_ARCHIVE", "load_cifar10_tensors"]

#: Where the archive sits under the shared datasets folder (``train/<class>/<NNNN>.jpg``).
CIFAR10_ARCHIVE = Path("cifar10") / "cifar10-train-jpg.tar.gz"


def load_cifar10_tensors(
    root: str | os.PathLike[str] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The 50,000 training JPEGs: ``(N, 3, 32, 32)`` uint8 images, ``(N,)`` labels, class names.

    Read from ``<root>/cifar10/cifar10-train-jpg.tar.gz`` (default root: the shared datasets)
    without unpacking it, in the archive's name order; labels index the sorted class folder
    names. The decoded tensors are cached in :func:`lab_common.cache_dir` under the archive's
    SHA-256, so a replaced archive is read again.
    """
    base = Path(root).expanduser() if root is not None else shared_datasets_root()
    archive = base / CIFAR10_ARCHIVE
    if not archive.is_file():
        raise FileNotFoundError(
            f"CIFAR-10 archive not found: {archive}; pass the folder that holds {CIFAR10_ARCHIVE}"
        )
    cached = cache_dir() / f"cifar10-train-{_content_key([archive])}.pt"
    try:
        blob = load_checkpoint(cached)
        return blob["images"], blob["labels"], blob["classes"]
    except CheckpointError:
        pass  # not decoded yet (or an unreadable cache): decode again
    images, names = [], []
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg")]
        for member in sorted(members, key=lambda m: m.name):
            with tar.extractfile(member) as f:
                images.append(np.asarray(Image.open(f).convert("RGB")))
            names.append(Path(member.name).parent.name)
    if not images:
        raise ValueError(f"{archive} holds no .jpg images; expected train/<class>/<NNNN>.jpg")
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([index[n] for n in names])
    save_checkpoint({"images": x, "labels": y, "classes": classes}, cached)
    return x, y, classes
