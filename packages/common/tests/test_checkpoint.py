import os

import pytest
import torch

from lab_common.checkpoint import (
    CheckpointError,
    load_checkpoint,
    previous_generation,
    save_checkpoint,
)


def test_roundtrip(tmp_path):
    state = {"w": torch.arange(5.0), "epoch": 3}
    path = save_checkpoint(state, tmp_path / "sub" / "ckpt.pt")
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["w"], state["w"])


def test_interrupted_save_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"epoch": 1}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "big": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file left


def test_interrupted_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"epoch": 1}, path)

    def half_write(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    save_checkpoint({"x": torch.ones(100)}, bad)
    bad.write_bytes(bad.read_bytes()[:50])  # truncated
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    notdict = tmp_path / "list.pt"
    torch.save([1, 2], notdict)
    with pytest.raises(CheckpointError, match="expected a dict"):
        load_checkpoint(notdict)
    assert issubclass(CheckpointError, ValueError)


def test_truncated_at_rest_is_a_checkpoint_error_not_oserror(tmp_path):
    path = save_checkpoint({"w": torch.randn(20000)}, tmp_path / "last.pt")
    os.truncate(path, 20000)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_previous_generation_is_kept_and_used_as_fallback(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.randn(5000)}, path, keep_previous=True)
    assert not previous_generation(path).exists()  # nothing to keep on the first save
    save_checkpoint({"step": 2, "w": torch.randn(5000)}, path, keep_previous=True)
    assert previous_generation(path).name == "last.prev.pt"
    assert load_checkpoint(previous_generation(path))["step"] == 1
    assert load_checkpoint(path)["step"] == 2
    os.truncate(path, 100)  # the newest file corrupted at rest
    with pytest.raises(CheckpointError):
        load_checkpoint(path)  # no silent fallback unless asked
    with pytest.warns(UserWarning, match="previous generation"):
        assert load_checkpoint(path, fallback=True)["step"] == 1
    os.truncate(previous_generation(path), 100)
    with pytest.raises(CheckpointError, match="last.prev.pt is corrupt"):
        load_checkpoint(path, fallback=True)


def test_without_keep_previous_no_generation_is_written(tmp_path):
    path = tmp_path / "cache.pt"
    save_checkpoint({"a": 1}, path)
    save_checkpoint({"a": 2}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.pt"]
