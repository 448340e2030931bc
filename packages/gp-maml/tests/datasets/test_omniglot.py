import zipfile

import pytest
import torch

from gp_maml.datasets import load_omniglot, load_split, omniglot_split


def test_zip_and_folder_agree_and_cache(omniglot_zip, tmp_path):
    ds = load_omniglot(omniglot_zip, cache_dir=tmp_path / "cache")
    assert ds.images.shape == (24, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert len(ds.class_names) == 6 and ds.class_names[0] == "alpha0/character01"
    assert len(list((tmp_path / "cache").glob("omniglot-*.pt"))) == 1
    cached = load_omniglot(omniglot_zip, cache_dir=tmp_path / "cache")
    assert torch.equal(cached.images, ds.images) and torch.equal(cached.labels, ds.labels)
    folder = tmp_path / "unzipped"
    zipfile.ZipFile(omniglot_zip).extractall(folder)
    from_folder = load_omniglot(folder / "images_background_tiny", use_cache=False)
    assert torch.equal(from_folder.images, ds.images)
    assert torch.equal(from_folder.labels, ds.labels)


def test_splits_are_disjoint(omniglot_zip, tmp_path):
    ds = load_omniglot(omniglot_zip, use_cache=False)
    train, val = omniglot_split(ds, "train", every=3), omniglot_split(ds, "val", every=3)
    assert set(train.class_names).isdisjoint(val.class_names)
    assert len(train.class_names) + len(val.class_names) == 6
    assert train.images.shape[0] == 16 and int(train.labels.max()) == 3


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="alphabet"):
        load_omniglot(tmp_path / "nope.zip")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no Omniglot PNGs.*character"):
        load_omniglot(tmp_path / "empty", use_cache=False)
    with pytest.raises(ValueError, match="split"):
        load_split("omniglot", tmp_path, "dev")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_split("imagenet", tmp_path, "train")


def test_real_small1(tmp_path, shared_omniglot):
    ds = load_omniglot(shared_omniglot / "images_background_small1.zip", cache_dir=tmp_path)
    assert ds.images.shape == (2720, 1, 28, 28) and len(ds.class_names) == 136
    assert torch.bincount(ds.labels).tolist() == [20] * 136
