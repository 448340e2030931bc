"""lavit.segmentation: Semantic FPN shapes and training steps, the mIoU confusion matrix."""

import pytest
import torch

from lavit.dense_data import SegmentationFolder
from lavit.segmentation import (
    SemanticFPN,
    evaluate_segmenter,
    semantic_fpn_lavit_small,
    semantic_fpn_lavit_tiny,
)


def test_semantic_fpn_shapes_loss_and_miou(small_backbone, scenes):
    torch.manual_seed(0)
    model = SemanticFPN(
        "lavit_tiny",
        num_classes=4,
        fpn_channels=32,
        head_channels=32,
        backbone_kwargs=small_backbone,
    )
    logits = model(torch.rand(2, 3, 100, 70))  # padded to 128x96 inside, cropped back
    assert logits.shape == (2, 4, 100, 70)
    ds = SegmentationFolder(scenes[0], train=True)
    img, mask = ds[0]
    assert img.shape == (3, 128, 128) and mask.dtype == torch.int64 and mask.max() <= 3
    loss = model.loss(model(img[None]), mask[None])
    loss.backward()
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
    )
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


@pytest.mark.parametrize("builder", [semantic_fpn_lavit_tiny, semantic_fpn_lavit_small])
@pytest.mark.parametrize("name", ["weights", "weights_backbone"])
def test_builders_refuse_torchvision_weights(builder, name):
    with pytest.raises(ValueError, match=rf"^{name}='DEFAULT': no (trained|pretrained) LaViT"):
        builder(num_classes=21, **{name: "DEFAULT"})


def test_trainable_backbone_layers_freezes_the_first_stages(small_backbone):
    model = semantic_fpn_lavit_tiny(
        num_classes=3,
        fpn_channels=32,
        head_channels=32,
        backbone_kwargs=small_backbone,
        trainable_backbone_layers=1,
    )
    stages = model.backbone.body.model.stages
    assert [any(p.requires_grad for p in s.parameters()) for s in stages] == [False] * 3 + [True]
    assert all(p.requires_grad for p in model.branches.parameters())
