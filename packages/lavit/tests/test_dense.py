"""Detection / segmentation on LaViT: synthetic COCO scenes from real images, builders, metrics."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from lavit.dense_data import SegmentationFolder, coco_scenes, load_cifar10_backgrounds, make_scenes
from lavit.detection import (
    FPNBackbone,
    evaluate_detector,
    maskrcnn_fpn,
    retinanet_fpn,
    retinanet_lavit_tiny,
    train_detector,
)
from lavit.segmentation import SemanticFPN, evaluate_segmenter, train_segmenter

#: a small paper-layout LaViT (7x7 windows, VA + LA per stage) for CPU tests
SMALL_BACKBONE = dict(
    depths=(2, 2, 2, 2),
    la_depths=(1, 1, 1, 1),
    embed_dims=(32, 64, 96, 128),
    num_heads=(1, 2, 3, 4),
    mlp_ratios=(2, 2, 2, 2),
    img_size=128,
)
DET = dict(backbone_kwargs=SMALL_BACKBONE, fpn_channels=64, min_size=128, max_size=128)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    return make_scenes(root / "train", 6, "train", seed=0), make_scenes(root / "val", 4, "val")


def test_scenes_are_coco_with_consistent_boxes_masks_and_label_maps(scenes):
    train, _ = scenes
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


def test_fpn_backbone_levels_any_size():
    body = FPNBackbone("lavit_tiny", out_channels=32, **SMALL_BACKBONE)
    out = body(torch.randn(1, 3, 96, 160))
    assert list(out) == ["0", "1", "2", "3"]
    assert [tuple(v.shape) for v in out.values()] == [
        (1, 32, 24, 40),
        (1, 32, 12, 20),
        (1, 32, 6, 10),
        (1, 32, 3, 5),
    ]
    with pytest.raises(ValueError, match="apply to a timm name"):
        FPNBackbone(torch.nn.Identity(), depths=(1,))


def test_retinanet_train_losses_and_eval_boxes(scenes):
    torch.manual_seed(0)
    model = retinanet_lavit_tiny(num_classes=4, **DET)
    ds = coco_scenes(scenes[0], train=True, with_masks=False)
    images, targets = zip(*(ds[i] for i in range(2)), strict=True)
    losses = model.train()(list(images), list(targets))
    assert set(losses) == {"classification", "bbox_regression"}
    sum(losses.values()).backward()
    assert all(v.isfinite() for v in losses.values())
    out = model.eval()([images[0], torch.rand(3, 100, 150)])  # any size: resized + padded
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    assert out[1]["boxes"].shape[0] == out[1]["scores"].shape[0] == out[1]["labels"].shape[0]


def test_maskrcnn_train_losses_and_eval_masks(scenes):
    torch.manual_seed(0)
    model = maskrcnn_fpn(
        "lavit_tiny", num_classes=4, box_score_thresh=0.0, box_batch_size_per_image=32, **DET
    )
    ds = coco_scenes(scenes[0], train=True)
    images, targets = zip(*(ds[i] for i in range(2)), strict=True)
    losses = model.train()(list(images), list(targets))
    assert set(losses) == {
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
        "loss_objectness",
        "loss_rpn_box_reg",
    }
    sum(losses.values()).backward()
    out = model.eval()([images[0]])[0]
    assert out["masks"].shape[1:] == (1, 128, 128) and len(out["masks"]) == len(out["boxes"])


def test_same_builders_take_timm_pvt_v2():
    model = retinanet_fpn("pvt_v2_b0", num_classes=3, fpn_channels=32, min_size=64, max_size=64)
    assert model.backbone.body.feature_info.channels() == [64, 160, 256]
    losses = model.train()(
        [torch.rand(3, 64, 64)],
        [dict(boxes=torch.tensor([[4.0, 4.0, 40.0, 30.0]]), labels=torch.tensor([1]))],
    )
    assert set(losses) == {"classification", "bbox_regression"}


class _Oracle(torch.nn.Module):
    """Predicts the ground truth (the evaluation loader runs in dataset order)."""

    def __init__(self, dataset):
        super().__init__()
        self.truth = [dataset[i][1] for i in range(len(dataset))]

    def forward(self, images):
        outs = []
        for _ in images:
            t = self.truth.pop(0)
            outs.append(
                dict(
                    boxes=t["boxes"].as_subclass(torch.Tensor),
                    labels=t["labels"],
                    scores=torch.ones(len(t["boxes"])),
                    masks=t["masks"].as_subclass(torch.Tensor)[:, None].float(),
                )
            )
        return outs


def test_evaluate_detector_scores_perfect_predictions_as_ap_one(scenes):
    ds = coco_scenes(scenes[1])
    metrics = evaluate_detector(_Oracle(ds), ds, scenes[1] / "annotations.json", batch_size=2)
    assert metrics["bbox_AP"] == pytest.approx(1.0) and metrics["bbox_AP50"] == pytest.approx(1.0)
    assert metrics["segm_AP"] == pytest.approx(1.0)
    # an untrained detector scores (near) zero
    torch.manual_seed(0)
    untrained = retinanet_lavit_tiny(num_classes=4, **DET)
    low = evaluate_detector(
        untrained, coco_scenes(scenes[1], with_masks=False), scenes[1] / "annotations.json"
    )
    assert low["bbox_AP"] < 0.05


def test_semantic_fpn_shapes_loss_and_miou(scenes):
    torch.manual_seed(0)
    model = SemanticFPN(
        "lavit_tiny",
        num_classes=4,
        fpn_channels=32,
        head_channels=32,
        backbone_kwargs=SMALL_BACKBONE,
    )
    logits = model(torch.rand(2, 3, 100, 70))  # padded to 128x96 inside, cropped back
    assert logits.shape == (2, 4, 100, 70)
    ds = SegmentationFolder(scenes[0], train=True)
    img, mask = ds[0]
    assert img.shape == (3, 128, 128) and mask.dtype == torch.int64 and mask.max() <= 3
    history = train_segmenter(model, ds, steps=2, batch_size=2, show_progress=False)
    assert len(history) == 2 and all(np.isfinite(history))
    metrics = evaluate_segmenter(model, SegmentationFolder(scenes[1]))
    assert 0 <= metrics["mIoU"] <= 1 and set(metrics) >= {"pixel_acc", "IoU_0", "IoU_3"}


def test_evaluate_segmenter_confusion_matrix():
    class Fixed(torch.nn.Module):
        num_classes, ignore_index = 3, 255

        def forward(self, images):  # predicts class 1 on the left half, 0 elsewhere
            out = torch.zeros(images.shape[0], 3, *images.shape[-2:])
            out[:, 1, :, : images.shape[-1] // 2] = 1
            out[:, 0, :, images.shape[-1] // 2 :] = 1
            return out

    mask = torch.zeros(4, 4, dtype=torch.int64)
    mask[:, :2] = 1
    mask[0, 0] = 2  # one class-2 pixel predicted as 1
    mask[3, 3] = 255  # ignored
    metrics = evaluate_segmenter(Fixed(), [(torch.zeros(3, 4, 4), mask)], batch_size=1)
    assert metrics["IoU_1"] == pytest.approx(7 / 8) and metrics["IoU_0"] == pytest.approx(1.0)
    assert metrics["IoU_2"] == 0.0 and metrics["mIoU"] == pytest.approx((1 + 7 / 8 + 0) / 3)
    assert metrics["pixel_acc"] == pytest.approx(14 / 15)


@pytest.mark.slow
def test_short_training_raises_box_ap_on_held_out_scenes(tmp_path):
    """300 RetinaNet steps from scratch on 128x128 scenes raise held-out box AP50 from 0.

    Measured (seed 0, CPU): AP50 0.000 untrained -> 0.069 after 300 steps (AP 0.017).
    """
    train = make_scenes(tmp_path / "train", 96, "train", classes=(1, 8), objects_per_image=(1, 2))
    val = make_scenes(tmp_path / "val", 24, "val", classes=(1, 8), objects_per_image=(1, 2))
    torch.manual_seed(0)
    model = retinanet_fpn("lavit_tiny", num_classes=3, **DET)
    val_ds = coco_scenes(val, with_masks=False)
    before = evaluate_detector(model, val_ds, val / "annotations.json")
    history = train_detector(
        model,
        coco_scenes(train, train=True, with_masks=False),
        steps=300,
        batch_size=8,
        lr=1e-3,
        show_progress=False,
    )
    after = evaluate_detector(model, val_ds, val / "annotations.json")
    assert np.mean([h["loss"] for h in history[-20:]]) < np.mean([h["loss"] for h in history[:20]])
    # held-out AP50 0.000 untrained; 0.069 and 0.038 after 300 steps in two runs (thread
    # scheduling changes the float sums): learning, not yet "well above" (issue 14)
    assert before["bbox_AP50"] < 0.01 and after["bbox_AP50"] > 0.02, (before, after)
