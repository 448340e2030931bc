import pytest

from gp_maml.datasets import cifar_fs, fc100, load_split


def test_cifar_fs_splits(cifar_root):
    sizes = {s: len(cifar_fs(cifar_root, s).class_names) for s in ("train", "val", "test")}
    assert sizes == {"train": 64, "val": 16, "test": 20}
    test = cifar_fs(cifar_root, "test")
    assert test.images.shape == (120, 3, 32, 32) and "wardrobe" in test.class_names
    names = [set(cifar_fs(cifar_root, s).class_names) for s in ("train", "val", "test")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])


def test_fc100_splits(cifar_root):
    sizes = {s: len(fc100(cifar_root, s).class_names) for s in ("train", "val", "test")}
    assert sizes == {"train": 60, "val": 20, "test": 20}
    assert load_split("fc100", cifar_root, "val").images.shape[0] == 120


def test_missing_and_malformed(tmp_path, cifar_root):
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        cifar_fs(tmp_path / "none", "train")
    (cifar_root / "cifar-100-python" / "meta").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="malformed"):
        cifar_fs(cifar_root, "train")
