"""lavit.dense_data: COCO-format scenes from real Fashion-MNIST items on real CIFAR-10 photos."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lab_common.testing import require_optional
from lavit.dense_data import coco_scenes, load_cifar10_backgrounds, make_scenes


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
