import hashlib
import zipfile

import pytest
import torch

from gp_maml.datasets import (
    SMALL2_NEW_ALPHABETS,
    load_omniglot,
    load_omniglot_vinyals,
    load_split,
    omniglot_split,
)


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


def _first_png_offset(path) -> int:
    return path.read_bytes().index(b"\x89PNG")


def test_a_corrupt_zip_is_named_with_the_fix(omniglot_zip, tmp_path):
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(omniglot_zip.read_bytes()[: omniglot_zip.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"truncated.zip is corrupt or truncated.*download it"):
        load_omniglot(truncated, use_cache=False)
    data = bytearray(omniglot_zip.read_bytes())
    data[_first_png_offset(omniglot_zip) + 60] ^= 0xFF  # a flipped byte: CRC error on read
    bad_crc = tmp_path / "crc.zip"
    bad_crc.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"crc.zip is corrupt.*(CRC|crc).*download it"):
        load_omniglot(bad_crc, use_cache=False)


def test_alphabets_selects_characters(omniglot_zip):
    ds = load_omniglot(omniglot_zip, use_cache=False, alphabets=("alpha1",))
    assert ds.class_names == [f"alpha1/character0{i}" for i in (1, 2, 3)]
    assert ds.images.shape[0] == 12 and ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    full = load_omniglot(omniglot_zip, use_cache=False)
    assert torch.equal(ds.images, full.images[12:])
    with pytest.raises(ValueError, match=r"\['Latin'\] are not in .*it has: alpha0, alpha1"):
        load_omniglot(omniglot_zip, use_cache=False, alphabets=("alpha0", "Latin"))


@pytest.fixture(scope="module")
def omniglot_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("omniglot-cache")


def _hashes(ds) -> set[bytes]:
    return {hashlib.sha1(img.numpy().tobytes()).digest() for img in ds.images}


def test_the_disjoint_protocol_shares_no_image(shared_omniglot, omniglot_cache):
    train = load_omniglot(
        shared_omniglot / "images_background_small1.zip", cache_dir=omniglot_cache
    )
    small2 = shared_omniglot / "images_background_small2.zip"
    test = load_omniglot(small2, cache_dir=omniglot_cache, alphabets=SMALL2_NEW_ALPHABETS)
    assert len(test.class_names) == 106 and not set(test.class_names) & set(train.class_names)
    assert not _hashes(test) & _hashes(train)
    # the check has teeth: all of small2 shares Greek and Latin, 50 characters x 20 drawings
    overlap = _hashes(load_omniglot(small2, cache_dir=omniglot_cache)) & _hashes(train)
    assert len(overlap) == 1000


def test_vinyals_split_on_stand_ins(shared_omniglot, omniglot_cache, tmp_path):
    small1 = shared_omniglot / "images_background_small1.zip"
    small2 = shared_omniglot / "images_background_small2.zip"
    with pytest.raises(ValueError, match="50 characters are in both"):
        load_omniglot_vinyals(small1, small2, cache_dir=omniglot_cache)
    # the stand-in of images_evaluation: small2's three alphabets that small1 lacks, unzipped
    with zipfile.ZipFile(small2) as zf:
        members = [m for m in zf.namelist() if m.split("/")[1] in SMALL2_NEW_ALPHABETS]
        zf.extractall(tmp_path, members)
    evaluation = tmp_path / "images_background_small2"
    train, test = load_omniglot_vinyals(small1, evaluation, cache_dir=omniglot_cache)
    n_train = round(242 * 1200 / 1623)  # 136 + 106 characters, the paper's fraction: 179
    assert (len(train.class_names), len(test.class_names)) == (n_train, 242 - n_train)
    assert train.rotations == test.rotations == (0, 1, 2, 3) and train.num_classes == 4 * 179
    bg = load_omniglot(small1, cache_dir=omniglot_cache)
    ev = load_omniglot(evaluation, cache_dir=omniglot_cache)
    assert train.class_names == bg.class_names + ev.class_names[: n_train - 136]
    assert test.class_names == ev.class_names[n_train - 136 :]
    assert not _hashes(train) & _hashes(test)
    assert torch.bincount(test.labels).tolist() == [20] * 63
    train_all, test_one = load_omniglot_vinyals(
        small1, evaluation, train_characters=241, cache_dir=omniglot_cache
    )
    assert len(test_one.class_names) == 1 and torch.equal(test_one.images, ev.images[-20:])
    with pytest.raises(ValueError, match="train_characters must be in 1..241"):
        load_omniglot_vinyals(small1, evaluation, train_characters=242, cache_dir=omniglot_cache)
