"""lab_common.data: the torchvision readers on the shared data, IDX layouts, errors, folders."""

import gzip
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
