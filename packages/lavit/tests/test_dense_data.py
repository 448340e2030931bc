"""lavit.dense_data: COCO-format scenes from real Fashion-MNIST items on real CIFAR-10 photos."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lab_common.testing import require_optional
from lavit.dense_data import (
    CocoFolder,
    SegmentationFolder,
    coco_scenes,
    load_cifar10_backgrounds,
    make_scenes,
)


def test_scenes_are_coco_with_consistent_boxes_masks_and_label_maps(scenes):
    train, _ = scenes
    mask_utils = require_optional("pycocotools.mask")
    coco = json.loads((train / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["t-shirt", "trouser", "bag"]
    assert len(coco["images"]) == 6 and len(coco["annotations"]) >= 6
    for ann in coco["annotations"]:
        m = mask_utils.decode(ann["segmentation"]).astype(bool)
        ys, xs = np.nonzero(m)
        x, y, w, h = ann["bbox"]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() + 1 - x, ys.max() + 1 - y)
        assert ann["area"] == m.sum()
        semantic = np.asarray(Image.open(train / "masks" / f"{ann['image_id'] - 1:05d}.png"))
        assert (semantic[m] == ann["category_id"]).all()  # the label map agrees with the mask
    img, target = coco_scenes(train, train=True)[0]
    assert img.shape == (3, 128, 128) and img.dtype == torch.float32 and 0 <= img.min()
    assert target["boxes"].shape[1] == 4 and target["masks"].shape[1:] == (128, 128)
    assert len(target["labels"]) == len(target["boxes"]) == len(target["masks"])


def test_splits_use_disjoint_real_images():
    train, val = load_cifar10_backgrounds(3, "train"), load_cifar10_backgrounds(3, "val")
    assert train.shape == (3, 32, 32, 3) and train.std() > 10  # real photographs, not flat
    assert not any(np.array_equal(a, b) for a in train for b in val)
    with pytest.raises(ValueError, match="split must be one of"):
        load_cifar10_backgrounds(1, "test")
    with pytest.raises(ValueError, match="count must be in 1..2500"):
        load_cifar10_backgrounds(0)


def test_make_scenes_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="Fashion-MNIST indices"):
        make_scenes(tmp_path / "a", 1, classes=(10,))
    with pytest.raises(ValueError, match="objects_per_image"):
        make_scenes(tmp_path / "b", 1, objects_per_image=(2, 1))


def test_coco_folder_maps_category_ids_keeps_negatives_and_drops_degenerate_boxes(
    tmp_path, write_coco
):
    require_optional("pycocotools")
    rows = {1: [(1, 0, [4, 4, 20, 20]), (2, 5, [30, 30, 10, 0])], 2: [], 3: [(3, 5, [8, 8, 9, 9])]}
    root = write_coco(tmp_path / "coco", rows)
    with pytest.warns(UserWarning, match="dropped 1 annotations with a zero-width or zero-height"):
        ds = CocoFolder(root)
    assert ds.category_ids == [0, 5] and len(ds) == 3
    _, first = ds[0]
    assert first["labels"].tolist() == [1]  # category 0 is label 1, not the background
    assert first["boxes"].tolist() == [[4, 4, 24, 24]] and first["masks"].shape == (1, 64, 64)
    image, negative = ds[1]
    assert image.shape == (3, 64, 64) and negative["boxes"].shape == (0, 4)
    assert negative["labels"].shape == (0,) and negative["masks"].shape == (0, 64, 64)
    assert ds[2][1]["labels"].tolist() == [2]


def test_coco_folder_names_bad_annotations(tmp_path, write_coco):
    require_optional("pycocotools")
    unknown = write_coco(tmp_path / "unknown", {1: [(7, 3, [4, 4, 20, 20])]})
    with pytest.raises(ValueError, match=r"annotation 7 has category_id 3, which is not in"):
        CocoFolder(unknown)
    small = write_coco(tmp_path / "small", {1: [(1, 0, [4, 4, 20, 20])]}, stated_size=32)
    with pytest.raises(
        ValueError, match=r"1\.png: the mask of annotation 1 is 32x32 but the image"
    ):
        CocoFolder(small)
    assert len(CocoFolder(small, with_masks=False)) == 1


def test_coco_folder_without_pycocotools_names_the_extra(tmp_path, monkeypatch, write_coco):
    root = write_coco(tmp_path / "coco", {1: []})
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lavit\[detection\]'"):
        CocoFolder(root)


def test_segmentation_folder_checks_every_mask_up_front(tmp_path):
    def folder(name, mask):
        (tmp_path / name / "images").mkdir(parents=True)
        (tmp_path / name / "masks").mkdir()
        Image.new("RGB", (16, 16)).save(tmp_path / name / "images" / "a.png")
        Image.fromarray(mask).save(tmp_path / name / "masks" / "a.png")
        return tmp_path / name

    good = np.full((16, 16), 255, np.uint8)
    good[:4] = 2
    assert SegmentationFolder(folder("good", good), num_classes=3)[0][1].max() == 255
    with pytest.raises(ValueError, match=r"masks/a\.png is 8x8 but its image a\.png is 16x16"):
        SegmentationFolder(folder("size", np.zeros((8, 8), np.uint8)), num_classes=3)
    bad = good.copy()
    bad[0, :2] = 3, 7
    with pytest.raises(ValueError, match=r"masks/a\.png has values \[3, 7\]"):
        SegmentationFolder(folder("values", bad), num_classes=3)
