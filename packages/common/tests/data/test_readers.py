"""lab_common.data: the torchvision readers on the shared data, IDX layouts, errors, folders."""

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lab_common import shared_datasets_root
from lab_common.data import build_image_dataset, dataset_num_classes, load_fashion_mnist_tensors


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))


def _write_idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    n, h, w = images.shape
    img = struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes()
    lab = struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes()
    for name, data in ((f"{prefix}-images-idx3-ubyte", img), (f"{prefix}-labels-idx1-ubyte", lab)):
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)


def _fake_mnist(folder: Path, gz: bool) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 28, 28))
    labels = np.arange(6) % 10
    _write_idx(folder, "train", images, labels, gz)
    _write_idx(folder, "t10k", images[:2], labels[:2], gz)
    return images, labels


def test_real_fashion_mnist_from_shared_gz():
    x, y = load_fashion_mnist_tensors(train=False)
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [1000] * 10  # the official balanced test set
    ds = build_image_dataset("fashion-mnist", shared_datasets_root(), train=False)
    assert dataset_num_classes(ds) == 10
    img, label = ds[0]
    assert img.size == (28, 28) and label == int(y[0])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_layouts_give_the_same_values(tmp_path, gz):
    images, labels = _fake_mnist(tmp_path / "data" / "fashion-mnist", gz=gz)
    x, y = load_fashion_mnist_tensors(tmp_path / "data", train=True)
    assert torch.equal(x, torch.from_numpy(images.astype(np.uint8)))
    assert y.tolist() == labels.tolist()


def test_corrupt_gz_is_named(tmp_path):
    folder = tmp_path / "data"
    _fake_mnist(folder, gz=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        build_image_dataset("fashion-mnist", folder)


def test_missing_dataset_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="FashionMNIST not found under"):
        build_image_dataset("fashion-mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        build_image_dataset("cifar100", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_image_dataset("imagenet-22k-please", tmp_path)


def test_replaced_or_corrupted_source_is_read_again(tmp_path):
    folder = tmp_path / "data"
    images, _ = _fake_mnist(folder, gz=True)
    x, _ = load_fashion_mnist_tensors(folder)  # unpacked into the cache
    assert torch.equal(x, torch.from_numpy(images.astype(np.uint8)))
    # the source replaced by other images at the same path: the new ones are read
    _write_idx(folder, "train", 255 - images, np.arange(6) % 10, gz=True)
    x, _ = load_fashion_mnist_tensors(folder)
    assert torch.equal(x, torch.from_numpy((255 - images).astype(np.uint8)))
    # one byte flipped in the middle, size and mtime kept: gzip's CRC catches it, named
    gz = folder / "train-images-idx3-ubyte.gz"
    stat = gz.stat()
    data = bytearray(gz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    gz.write_bytes(bytes(data))
    os.utime(gz, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert gz.stat().st_size == stat.st_size
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is not a readable gzip"):
        load_fashion_mnist_tensors(folder)
    # truncated
    gz.write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz is not a readable gzip"):
        load_fashion_mnist_tensors(folder)
    # one cache entry per source folder: the stale ones are removed
    _write_idx(folder, "train", images, np.arange(6) % 10, gz=True)
    load_fashion_mnist_tensors(folder)
    assert len(list((tmp_path / "cache" / "mnist-like").iterdir())) == 1
    assert len(list(next((tmp_path / "cache" / "mnist-like").iterdir()).iterdir())) == 1


def _image_folder(root: Path, splits: dict[str, tuple[str, ...]]) -> Path:
    for split, classes in splits.items():
        for value, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True)
            Image.new("RGB", (8, 8), (value * 40, 0, 0)).save(d / f"{cls}.png")
    return root


def test_val_split_is_labelled_with_the_training_classes(tmp_path):
    root = _image_folder(tmp_path / "imgs", {"train": ("a", "b", "c"), "val": ("a", "c")})
    train = build_image_dataset(str(root), train=True)
    val = build_image_dataset(str(root), train=False)
    assert train.class_to_idx == {"a": 0, "b": 1, "c": 2}
    # val/c is class 2 as in training, not 1 (its index among val's own folders)
    assert sorted(val.targets) == [0, 2] and val.class_to_idx == train.class_to_idx
    assert [Path(p).parent.name for p, _ in val.samples] == ["a", "c"]
    assert dataset_num_classes(val) == 3


def test_val_class_missing_from_train_names_it_and_both_folders(tmp_path):
    root = _image_folder(tmp_path / "imgs", {"train": ("a", "b"), "val": ("a", "zebra")})
    assert len(build_image_dataset(str(root), train=True)) == 2  # training alone is fine
    with pytest.raises(ValueError, match=r"zebra of .*imgs/val are not in .*imgs/train"):
        build_image_dataset(str(root), train=False)


def test_image_folder(tmp_path):
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = tmp_path / "imgs" / split / cls
            d.mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(d / "a.png")
    ds = build_image_dataset(str(tmp_path / "imgs"), train=False)
    assert dataset_num_classes(ds) == 2 and len(ds) == 2
    (tmp_path / "only").mkdir()
    with pytest.raises(FileNotFoundError, match="train/"):
        build_image_dataset(str(tmp_path / "only"))


def test_download_is_passed_to_torchvision_and_named_when_missing(tmp_path, monkeypatch):
    import torchvision

    from lab_common.data import readers

    for name in ("cifar10", "fashion-mnist"):
        with pytest.raises(FileNotFoundError, match="pass --download"):
            build_image_dataset(name, tmp_path)
    calls = []

    class Fetched:  # stands in for torchvision's class: nothing is downloaded in tests
        def __init__(self, root, *, train, transform, download):
            calls.append((root, train, download))

    monkeypatch.setitem(readers._TORCHVISION, "cifar100", Fetched)
    root = tmp_path / "new"
    assert isinstance(build_image_dataset("cifar100", root, False, download=True), Fetched)
    assert calls == [(str(root), False, True)] and root.is_dir()
    assert readers._TORCHVISION["cifar10"] is torchvision.datasets.CIFAR10
