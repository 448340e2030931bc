"""Few-shot dataset readers: Omniglot, miniImageNet, CIFAR-FS and FC100."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..data import FewShotDataset
from .cifar import cifar_fs, fc100
from .mini_imagenet import mini_imagenet
from .omniglot import (
    SMALL2_NEW_ALPHABETS,
    load_omniglot,
    load_omniglot_vinyals,
    omniglot_split,
    select_alphabets,
)

__all__ = [
    "DATASETS",
    "SMALL2_NEW_ALPHABETS",
    "cifar_fs",
    "fc100",
    "load_omniglot",
    "load_omniglot_vinyals",
    "load_split",
    "mini_imagenet",
    "omniglot_split",
    "select_alphabets",
]

DATASETS = ("omniglot", "miniimagenet", "cifar-fs", "fc100")


def load_split(
    name: str,
    root: str | Path,
    split: str,
    *,
    cache_dir: str | Path | None = None,
    alphabets: Sequence[str] = (),
) -> FewShotDataset:
    """Load ``split`` (``"train"``, ``"val"`` or ``"test"``) of dataset ``name`` from ``root``.

    For Omniglot ``root`` is one official folder or zip: ``"test"`` is all of it, ``"train"`` /
    ``"val"`` hold out every tenth character for validation (see ``omniglot_split``);
    ``alphabets`` keeps only those alphabets first (Omniglot only).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    if alphabets and name != "omniglot":
        raise ValueError(f"alphabets={tuple(alphabets)} applies to omniglot only, not {name!r}")
    if name == "omniglot":
        data = load_omniglot(root, cache_dir=cache_dir, alphabets=alphabets)
        return omniglot_split(data, split)
    if name == "miniimagenet":
        return mini_imagenet(root, split, cache_dir=cache_dir)
    if name == "cifar-fs":
        return cifar_fs(root, split)
    if name == "fc100":
        return fc100(root, split)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
