"""Image-dataset readers: Fashion-MNIST, MNIST, CIFAR-10/100 and image folders, never downloading."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch.utils.data import Dataset

from ..paths import cache_dir, shared_datasets_root
from .images import read_rgb

__all__ = [
    "DATASET_NAMES",
    "build_image_dataset",
    "dataset_num_classes",
    "load_fashion_mnist_tensors",
]

DATASET_NAMES = ("fashion-mnist", "mnist", "cifar10", "cifar100")

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _find_mnist_raw(root: Path, folder: str, aliases: tuple[str, ...]) -> Path | None:
    """The folder under ``root`` that holds the four IDX files, plain or gzipped."""
    for sub in (Path(folder) / "raw", *(Path(a) for a in aliases), Path(".")):
        d = root / sub
        if all((d / f).is_file() or (d / f"{f}.gz").is_file() for f in _MNIST_FILES):
            return d
    return None


def _extract_atomic(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    try:
        with gzip.open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dst)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ValueError(
            f"{src} is not a readable gzip file ({type(err).__name__}: {err}); replace the file"
        ) from err


def _source_files(raw: Path) -> list[Path]:
    """The files the cache is unpacked from: each IDX file, or its ``.gz`` when not plain."""
    return [raw / n if (raw / n).is_file() else raw / f"{n}.gz" for n in _MNIST_FILES]


def _content_key(files: list[Path]) -> str:
    """SHA-256 over the files' names and bytes (about 40 ms for Fashion-MNIST's 30 MB)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def _unpacked_cache(raw: Path, folder: str) -> Path:
    """A torchvision root holding ``<folder>/raw/`` unpacked from ``raw``, built once per content.

    The cache entry is keyed by the source folder and the SHA-256 of its files, so a replaced
    or corrupted source file is read (and checked by gzip's CRC) again rather than served from
    a stale copy; entries of earlier contents of the same folder are removed.
    """
    files = _source_files(raw)
    base = cache_dir() / "mnist-like" / hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:12]
    tv_root = base / _content_key(files)
    dst = tv_root / folder / "raw"
    dst.mkdir(parents=True, exist_ok=True)
    for name, src in zip(_MNIST_FILES, files, strict=True):
        if (dst / name).is_file():
            continue
        if src.suffix == ".gz":
            _extract_atomic(src, dst / name)
        else:
            shutil.copyfile(src, dst / name)
    for stale in base.iterdir():
        if stale != tv_root and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return tv_root


_TORCHVISION = {
    "fashion-mnist": torchvision.datasets.FashionMNIST,
    "mnist": torchvision.datasets.MNIST,
    "cifar10": torchvision.datasets.CIFAR10,
    "cifar100": torchvision.datasets.CIFAR100,
}


def _mnist_like(
    cls: type[torchvision.datasets.MNIST],
    aliases: tuple[str, ...],
    root: Path,
    train: bool,
    transform: Callable[[Any], Any] | None,
) -> torchvision.datasets.MNIST:
    folder = cls.__name__
    raw = _find_mnist_raw(root, folder, aliases)
    if raw is None:
        raise FileNotFoundError(
            f"{folder} not found under {root}: expected the files {', '.join(_MNIST_FILES)} "
            f"(optionally .gz) in {root / folder / 'raw'} (torchvision's layout), in "
            f"{root / aliases[0]} or in {root} itself; {_DOWNLOAD_HINT}"
        )
    if raw == root / folder / "raw" and all((raw / f).is_file() for f in _MNIST_FILES):
        tv_root = root
    else:  # gzipped or non-torchvision layout: unpack once per content into the cache
        tv_root = _unpacked_cache(raw, folder)
    try:
        return cls(str(tv_root), train=train, transform=transform, download=False)
    except (RuntimeError, ValueError, AssertionError) as err:
        raise ValueError(f"{folder} files under {raw} are corrupt ({err}); replace them") from err


_DOWNLOAD_HINT = "pass --download (download=True) to fetch it with torchvision"


def build_image_dataset(
    name_or_path: str,
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    transform: Callable[[Any], Any] | None = None,
    *,
    download: bool = False,
) -> Dataset:
    """A labelled image dataset, read from disk (never downloaded).

    Args:
        name_or_path: one of ``DATASET_NAMES`` (read with torchvision from ``root``; Fashion-MNIST
            and MNIST also from gzipped IDX files, as in ``../shared/datasets/fashion-mnist``), or
            the path of an ImageNet-style folder with ``train/`` and ``val/`` class sub-folders.
        root: folder holding the named dataset (defaults to :func:`shared_datasets_root`).
        train: training or test/validation split.
        transform: applied to each PIL image.
        download: a named dataset is fetched into ``root`` by torchvision's downloader when it
            is not there (torchvision's layout); never used by the project's tests.

    Gzipped (or non-torchvision) IDX files are unpacked into :func:`lab_common.cache_dir`, keyed
    by the SHA-256 of the source files: a replaced or corrupted source is read again (a corrupt
    ``.gz`` raises a ValueError naming it), never served from a stale copy. Hashing costs about
    40 ms for Fashion-MNIST (about 2 % of reading a split).

    An image folder's ``val/`` split is labelled with the ``train/`` split's class-to-index map
    (``classes`` is the training classes), so a class has the same label in both splits even
    when ``val/`` lacks some training classes (allowed: they just have no validation images).
    A ``val/`` class that is not a training class raises a ValueError naming it and both
    folders.
    """
    key = name_or_path.lower().replace("_", "-")
    if key in DATASET_NAMES and download:
        base = Path(root).expanduser() if root is not None else shared_datasets_root()
        base.mkdir(parents=True, exist_ok=True)
        return _TORCHVISION[key](str(base), train=train, transform=transform, download=True)
    if key in DATASET_NAMES:
        base = Path(root).expanduser() if root is not None else shared_datasets_root()
        if not base.is_dir():
            raise FileNotFoundError(f"--data-root {base} is not a directory")
        if key == "fashion-mnist":
            return _mnist_like(
                torchvision.datasets.FashionMNIST,
                ("fashion-mnist", "fashion_mnist"),
                base,
                train,
                transform,
            )
        if key == "mnist":
            return _mnist_like(torchvision.datasets.MNIST, ("mnist",), base, train, transform)
        cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
        try:
            return cls(str(base), train=train, transform=transform, download=False)
        except RuntimeError as err:
            folder = "cifar-10-batches-py" if key == "cifar10" else "cifar-100-python"
            raise FileNotFoundError(
                f"{key} not found or corrupt under {base}: expected torchvision's "
                f"{base / folder}; {_DOWNLOAD_HINT}"
            ) from err
    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"unknown dataset {name_or_path!r}: use one of {DATASET_NAMES} or the path of an image "
            "folder with train/ and val/ class sub-folders"
        )
    needed = ("train",) if train else ("train", "val")  # val/ is labelled by train/'s classes
    for split in (folder / name for name in needed):
        if not split.is_dir():
            raise FileNotFoundError(
                f"image folder {folder} has no {split.name}/ sub-folder; expected "
                f"{folder}/train/<class>/*.png and {folder}/val/<class>/*.png"
            )
    if train:
        return torchvision.datasets.ImageFolder(
            str(folder / "train"), transform=transform, loader=read_rgb
        )
    return _ImageFolderWithClasses(folder / "val", folder / "train", transform)


class _ImageFolderWithClasses(torchvision.datasets.ImageFolder):
    """The ``val/`` split of an image folder, labelled with the ``train/`` split's classes."""

    def __init__(self, root: Path, train_root: Path, transform: Callable[[Any], Any] | None):
        self.train_root = train_root
        super().__init__(str(root), transform=transform, loader=read_rgb, allow_empty=True)
        if not self.samples:
            raise FileNotFoundError(f"no images found in {root}; expected {root}/<class>/*.png")

    def find_classes(self, directory: str | os.PathLike[str]) -> tuple[list[str], dict[str, int]]:
        classes, class_to_idx = torchvision.datasets.folder.find_classes(self.train_root)
        own = {e.name for e in os.scandir(directory) if e.is_dir()}
        unknown = sorted(own - set(classes))
        if unknown:
            raise ValueError(
                f"class folder(s) {', '.join(unknown)} of {directory} are not in {self.train_root} "
                f"(its classes: {', '.join(classes)}); a validation class must be a training "
                "class: rename or remove those folders"
            )
        return classes, class_to_idx


def dataset_num_classes(dataset: Dataset) -> int:
    """Number of classes of a torchvision classification dataset (or a Subset of one)."""
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    classes = getattr(dataset, "classes", None)
    if not classes:
        raise ValueError(f"{type(dataset).__name__} has no 'classes' attribute; pass num_classes")
    return len(classes)


def load_fashion_mnist_tensors(
    root: str | os.PathLike[str] | None = None, train: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST as in-memory tensors: images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64.

    Same reader as :func:`build_image_dataset` (torchvision's), without per-image PIL work.
    """
    ds = build_image_dataset("fashion-mnist", root, train=train)
    return ds.data, ds.targets.long()
