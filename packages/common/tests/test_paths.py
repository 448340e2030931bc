"""The dataset and cache locations of the core (no torchvision needed)."""

import pytest

from lab_common import cache_dir, shared_datasets_root


def test_shared_root_found_and_env_override(tmp_path, monkeypatch):
    root = shared_datasets_root()
    assert (root / "fashion-mnist").is_dir()
    monkeypatch.setenv("LAB_DATASETS", str(tmp_path))
    assert shared_datasets_root() == tmp_path
    monkeypatch.setenv("LAB_DATASETS", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing"):
        shared_datasets_root()


def test_cache_dir_from_env_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "a" / "cache"))
    assert cache_dir() == tmp_path / "a" / "cache"
    assert (tmp_path / "a" / "cache").is_dir()
