"""lab_common.data.load_cifar10_tensors: the JPEG archive's layout, order, cache and errors."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lab_common import shared_datasets_root
from lab_common.data import CIFAR10_ARCHIVE, load_cifar10_tensors


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))


def _fake_archive(root: Path, names: list[str], value: int = 0) -> Path:
    """A CIFAR-10-style archive whose image ``i`` is a flat colour (its index, plus ``value``)."""
    archive = root / CIFAR10_ARCHIVE
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for i, name in enumerate(names):
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), (10 * i + value, 0, 0)).save(buf, "JPEG", quality=100)
            info = tarfile.TarInfo(name)
            info.size = buf.tell()
            buf.seek(0)
            tar.addfile(info, buf)
    return archive


def test_reads_images_in_name_order_with_sorted_class_labels(tmp_path, private_cache):
    # written out of order: the reader sorts by member name
    _fake_archive(tmp_path, ["train/cat/0001.jpg", "train/airplane/0000.jpg", "train/cat/0000.jpg"])
    x, y, classes = load_cifar10_tensors(tmp_path)
    assert x.shape == (3, 3, 32, 32) and x.dtype == torch.uint8
    assert classes == ["airplane", "cat"] and y.tolist() == [0, 1, 1]
    # member i of the written list has red = 10 i: airplane/0000 (1), cat/0000 (2), cat/0001 (0)
    assert [round(float(v) / 10) for v in x[:, 0].float().mean((1, 2))] == [1, 2, 0]


def test_cache_is_used_and_renewed_with_the_archive(tmp_path, monkeypatch, private_cache):
    names = ["train/cat/0000.jpg", "train/dog/0000.jpg"]
    _fake_archive(tmp_path, names)
    first = load_cifar10_tensors(tmp_path)[0]
    opened = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(a) or real_open(*a, **k))
    assert torch.equal(load_cifar10_tensors(tmp_path)[0], first)
    assert not opened  # served from the cache
    _fake_archive(tmp_path, names, value=100)  # a replaced archive is decoded again
    assert load_cifar10_tensors(tmp_path)[0][0, 0].float().mean() > first[0, 0].float().mean() + 50
    assert opened


def test_missing_or_empty_archive_is_named(tmp_path, private_cache):
    with pytest.raises(FileNotFoundError, match="cifar10-train-jpg.tar.gz"):
        load_cifar10_tensors(tmp_path)
    _fake_archive(tmp_path, [])
    with pytest.raises(ValueError, match="no .jpg images"):
        load_cifar10_tensors(tmp_path)


@pytest.mark.slow
def test_the_shared_archive_is_the_50000_training_images():
    """The user's cache, as lavit's scenes and the demo use it (decoded once, about 20 s)."""
    if not (shared_datasets_root() / CIFAR10_ARCHIVE).is_file():
        pytest.skip("the shared CIFAR-10 archive is not on this machine")
    x, y, classes = load_cifar10_tensors()
    assert x.shape == (50000, 3, 32, 32)
    assert len(classes) == 10 and "airplane" in classes
    assert np.bincount(y.numpy()).tolist() == [5000] * 10
