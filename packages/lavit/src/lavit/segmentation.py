"""Semantic segmentation with a LaViT (or any timm pyramid) backbone: Semantic FPN.

:class:`SemanticFPN` is the semantic branch of Panoptic FPN (Kirillov, Girshick, He, Dollar,
"Panoptic Feature Pyramid Networks", CVPR 2019), the head the LaViT paper uses on ADE20K: FPN
levels P2-P5 (strides 4-32) are each brought to stride 4 by ``max(1, level)`` blocks of
``3x3 conv -> GroupNorm(32) -> ReLU`` (each followed by 2x bilinear upsampling for the coarser
levels), summed, classified per pixel by a ``1x1`` conv and upsampled 4x to the input.

``model(images)`` takes ``(B, 3, H, W)`` floats in ``[0, 1]`` (normalised inside with
``image_mean``/``image_std``) of any size: the batch is zero-padded to a multiple of
``size_divisible`` and the logits ``(B, num_classes, H, W)`` cropped back.
:func:`evaluate_segmenter` (mIoU from a confusion matrix) is the library side of
:mod:`lavit.train_dense`, the one dense trainer.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Dataset

from .detection import FPNBackbone, _check_weights

__all__ = [
    "SemanticFPN",
    "evaluate_segmenter",
    "semantic_fpn_lavit_small",
    "semantic_fpn_lavit_tiny",
]


def _conv_gn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(32 if cout % 32 == 0 else 1, cout),
        nn.ReLU(inplace=True),
    )


class SemanticFPN(nn.Module):
    """Backbone + FPN + Semantic FPN head (see the module docstring).

    Args:
        backbone: timm model name (4 stages at strides 4-32) or a ``features_only`` module.
        num_classes: classes including the background.
        fpn_channels: FPN width (256 in the paper).
        head_channels: width of the upsampling branches (128 in the paper).
        size_divisible: inputs are padded to a multiple of this (the backbone's total stride).
        ignore_index: label ignored by :meth:`loss`.
        trainable_backbone_layers: backbone stages left trainable, counted from the last; the
            rest, stem included, is frozen (None: all trainable).
        backbone_kwargs: passed to ``timm.create_model``.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "lavit_tiny",
        num_classes: int = 150,
        fpn_channels: int = 256,
        head_channels: int = 128,
        size_divisible: int = 32,
        ignore_index: int = 255,
        image_mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN,
        image_std: tuple[float, ...] = IMAGENET_DEFAULT_STD,
        trainable_backbone_layers: int | None = None,
        backbone_kwargs: dict | None = None,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (background included), got {num_classes}")
        self.backbone = FPNBackbone(
            backbone,
            out_indices=(0, 1, 2, 3),
            out_channels=fpn_channels,
            trainable_layers=trainable_backbone_layers,
            **(backbone_kwargs or {}),
        )
        reductions = self.backbone.body.feature_info.reduction()
        if reductions != [4, 8, 16, 32]:
            raise ValueError(f"SemanticFPN needs feature strides [4, 8, 16, 32], got {reductions}")
        branches = []
        for level in range(4):
            layers: list[nn.Module] = []
            for i in range(max(1, level)):
                layers.append(
                    _conv_gn_relu(fpn_channels if i == 0 else head_channels, head_channels)
                )
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            branches.append(nn.Sequential(*layers))
        self.branches = nn.ModuleList(branches)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.num_classes = num_classes
        self.size_divisible = size_divisible
        self.ignore_index = ignore_index
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, -1, 1, 1), False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, -1, 1, 1), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> logits ``(B, num_classes, H, W)``."""
        if images.dim() != 4:
            raise ValueError(f"SemanticFPN expects (B, 3, H, W) images, got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        x = (images - self.image_mean) / self.image_std
        d = self.size_divisible
        ph, pw = math.ceil(h / d) * d - h, math.ceil(w / d) * d - w
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        feats = list(self.backbone(x).values())[:4]
        y = sum(branch(f) for branch, f in zip(self.branches, feats, strict=True))
        y = F.interpolate(self.classifier(y), scale_factor=4, mode="bilinear", align_corners=False)
        return y[..., :h, :w]

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Per-pixel cross-entropy; ``masks`` ``(B, H, W)`` int64, ``ignore_index`` skipped."""
        return F.cross_entropy(logits, masks, ignore_index=self.ignore_index)


def semantic_fpn_lavit_tiny(
    num_classes: int = 150, *, weights: None = None, weights_backbone: None = None, **kwargs
) -> SemanticFPN:
    """Semantic FPN on ``lavit_tiny``; ``weights`` / ``weights_backbone`` must be None (no
    trained LaViT weights exist), ``kwargs`` go to :class:`SemanticFPN`."""
    _check_weights(weights, weights_backbone)
    return SemanticFPN("lavit_tiny", num_classes, **kwargs)


def semantic_fpn_lavit_small(
    num_classes: int = 150, *, weights: None = None, weights_backbone: None = None, **kwargs
) -> SemanticFPN:
    """Semantic FPN on ``lavit_small``; as :func:`semantic_fpn_lavit_tiny`."""
    _check_weights(weights, weights_backbone)
    return SemanticFPN("lavit_small", num_classes, **kwargs)


@torch.no_grad()
def evaluate_segmenter(
    model: SemanticFPN, dataset: Dataset, batch_size: int = 8, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """``mIoU`` (mean over classes present in labels or predictions), ``pixel_acc`` and the
    per-class ``IoU_k``, from a confusion matrix over all non-ignored pixels."""
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    k = model.num_classes
    conf = torch.zeros(k, k, dtype=torch.int64)
    try:
        for images, masks in DataLoader(dataset, batch_size=batch_size):
            pred = model(images.to(device)).argmax(1).cpu()
            keep = masks != model.ignore_index
            conf += torch.bincount(masks[keep] * k + pred[keep], minlength=k * k).reshape(k, k)
    finally:
        model.train(was_training)
    inter = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - inter
    iou = inter / union.clamp(min=1)
    present = union > 0
    out = {
        "mIoU": float(iou[present].mean()) if present.any() else 0.0,
        "pixel_acc": float(inter.sum() / conf.sum().clamp(min=1)),
    }
    out |= {f"IoU_{i}": float(iou[i]) for i in range(k)}
    return out
