import os

import pytest
import torch

from lab_common import CheckpointError, load_checkpoint, save_checkpoint


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
