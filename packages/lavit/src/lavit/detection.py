"""Object detection with a LaViT (or any timm pyramid) backbone: torchvision's detectors.

``retinanet_lavit_tiny(num_classes=...)`` and ``maskrcnn_lavit_tiny(...)`` (and ``_small``)
build torchvision's ``RetinaNet`` / ``MaskRCNN`` on :class:`FPNBackbone`: a timm
``features_only`` model followed by torchvision's ``FeaturePyramidNetwork``. The generic
:func:`retinanet_fpn` / :func:`maskrcnn_fpn` take any timm name, e.g. ``"pvt_v2_b1"`` for a
side-by-side run with the same detector. The detectors keep torchvision's interface: in train
mode ``model(images, targets)`` returns the loss dict, in eval mode ``model(images)`` returns
one dict of ``boxes``/``labels``/``scores`` (and ``masks``) per image. Images are lists of
``(3, H, W)`` float tensors in ``[0, 1]``; torchvision resizes them (``min_size``/``max_size``)
and pads the batch to a multiple of 32, which a windowed LaViT accepts at any size.

The builders take torchvision's keywords: ``trainable_backbone_layers=k`` freezes all but the
last ``k`` backbone stages (the stem with the first stage); ``weights`` and
``weights_backbone`` raise a ``ValueError`` when set, as no trained LaViT weights exist
(``backbone_kwargs=dict(pretrained=True, pretrained_cfg_overlay=dict(file=...))`` loads a
checkpoint of your own into the backbone).

:func:`evaluate_detector` (COCO box/mask AP with pycocotools) and :func:`dense_optimizer` are the
library side of :mod:`lavit.train_dense`, the one dense trainer.
"""

import contextlib
import io
import math
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import timm
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from lab_common import progress

from . import lavit as _lavit  # noqa: F401  (registers lavit_* with timm)

__all__ = [
    "FPNBackbone",
    "collate_detection",
    "dense_optimizer",
    "detection_losses",
    "evaluate_detector",
    "maskrcnn_fpn",
    "maskrcnn_lavit_small",
    "maskrcnn_lavit_tiny",
    "retinanet_fpn",
    "retinanet_lavit_small",
    "retinanet_lavit_tiny",
]


_STAGE = re.compile(r"(?:^|\.)stages[._](\d+)$")


def _freeze_stages(body: nn.Module, trainable_layers: int) -> None:
    """Freeze all of ``body`` but its last ``trainable_layers`` stages (torchvision's meaning).

    Stages are the modules named ``stages.<i>`` / ``stages_<i>`` (timm's layout: LaViT, PVTv2,
    ConvNeXt); everything else in ``body`` (a stem) is frozen with the first stage, so
    ``trainable_layers`` is in ``0..n_stages`` and ``n_stages`` keeps everything trainable.
    """
    stages = {int(m[1]): mod for name, mod in body.named_modules() if (m := _STAGE.search(name))}
    if not stages:
        raise ValueError(
            f"trainable_backbone_layers needs a backbone with stages named stages.<i> (timm's "
            f"layout); {type(body).__name__} has none: call requires_grad_(False) on the "
            "parts of model.backbone.body to freeze instead"
        )
    if not 0 <= trainable_layers <= len(stages):
        raise ValueError(
            f"trainable_backbone_layers must be in 0..{len(stages)} (stages trained, counted "
            f"from the last), got {trainable_layers}"
        )
    if trainable_layers == len(stages):
        return
    keep = {
        id(p)
        for i in sorted(stages)[len(stages) - trainable_layers :]
        for p in stages[i].parameters()
    }
    for p in body.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)


def _check_weights(weights: object, weights_backbone: object) -> None:
    """Refuse torchvision's ``weights`` / ``weights_backbone``: no trained LaViT weights exist."""
    if weights is not None:
        raise ValueError(
            f"weights={weights!r}: no trained LaViT detection or segmentation weights exist; "
            "train a model (lavit-train-dense, lavit.train_dense.train_dense) and load it "
            "with model.load_state_dict(...)"
        )
    if weights_backbone is not None:
        raise ValueError(
            f"weights_backbone={weights_backbone!r}: no pretrained LaViT weights exist; load a "
            "checkpoint of your own with backbone_kwargs=dict(pretrained=True, "
            "pretrained_cfg_overlay=dict(file=path, num_classes=its_num_classes)) (or "
            "timm's own weights of another backbone with backbone_kwargs=dict(pretrained=True))"
        )


class FPNBackbone(nn.Module):
    """timm pyramid features -> torchvision FPN: ``(B, 3, H, W) -> OrderedDict`` of maps.

    ``backbone`` is a timm model name (built with ``features_only=True`` and ``out_indices``)
    or a ready ``features_only`` module with ``feature_info``. The output dict has keys
    ``"0", "1", ...`` (one per ``out_indices`` entry, finest first) plus the extra block's
    (``"pool"`` / ``"p6", "p7"``), each ``(B, out_channels, h, w)``; ``out_channels`` is the
    attribute torchvision's detectors read. ``trainable_layers``: the backbone stages left
    trainable, counted from the last; the rest, stem included, is frozen (None: all trainable).
    """

    def __init__(
        self,
        backbone: str | nn.Module = "lavit_tiny",
        out_indices: tuple[int, ...] = (0, 1, 2, 3),
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        trainable_layers: int | None = None,
        **backbone_kwargs,
    ):
        super().__init__()
        if isinstance(backbone, str):
            backbone = timm.create_model(
                backbone, features_only=True, out_indices=out_indices, **backbone_kwargs
            )
        elif backbone_kwargs:
            raise ValueError(
                f"backbone_kwargs {sorted(backbone_kwargs)} apply to a timm name, not to a "
                f"ready {type(backbone).__name__}"
            )
        if not hasattr(backbone, "feature_info"):
            raise ValueError(
                f"{type(backbone).__name__} has no feature_info: pass a timm name or a "
                "timm features_only model"
            )
        if trainable_layers is not None:
            _freeze_stages(backbone, trainable_layers)
        self.body = backbone
        self.fpn = FeaturePyramidNetwork(
            backbone.feature_info.channels(), out_channels, extra_blocks=extra_blocks
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def retinanet_fpn(
    backbone: str | nn.Module = "lavit_tiny",
    num_classes: int = 91,
    fpn_channels: int = 256,
    backbone_kwargs: dict | None = None,
    *,
    weights: None = None,
    weights_backbone: None = None,
    trainable_backbone_layers: int | None = None,
    **detector_kwargs,
) -> RetinaNet:
    """torchvision ``RetinaNet`` on P3-P7: backbone strides 8/16/32 + P6/P7 from P5.

    ``num_classes`` counts the background like torchvision (COCO: 91). ``detector_kwargs``
    go to ``RetinaNet`` (``min_size``, ``max_size``, ``score_thresh``, ...).
    ``trainable_backbone_layers``: the backbone stages left trainable, counted from the last
    (None: all; see :class:`FPNBackbone`). ``weights`` / ``weights_backbone`` must be None:
    no trained LaViT weights exist.
    """
    _check_weights(weights, weights_backbone)
    body = FPNBackbone(
        backbone,
        out_indices=(1, 2, 3),
        out_channels=fpn_channels,
        extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels),
        trainable_layers=trainable_backbone_layers,
        **(backbone_kwargs or {}),
    )
    return RetinaNet(body, num_classes=num_classes, **detector_kwargs)


def maskrcnn_fpn(
    backbone: str | nn.Module = "lavit_tiny",
    num_classes: int = 91,
    fpn_channels: int = 256,
    backbone_kwargs: dict | None = None,
    *,
    weights: None = None,
    weights_backbone: None = None,
    trainable_backbone_layers: int | None = None,
    **detector_kwargs,
) -> MaskRCNN:
    """torchvision ``MaskRCNN`` on P2-P6: backbone strides 4-32 + a max-pooled P6.

    ``num_classes`` counts the background like torchvision. ``detector_kwargs`` go to
    ``MaskRCNN``; the other keywords as in :func:`retinanet_fpn`.
    """
    _check_weights(weights, weights_backbone)
    body = FPNBackbone(
        backbone,
        out_indices=(0, 1, 2, 3),
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        trainable_layers=trainable_backbone_layers,
        **(backbone_kwargs or {}),
    )
    return MaskRCNN(body, num_classes=num_classes, **detector_kwargs)


def retinanet_lavit_tiny(num_classes: int = 91, **kwargs) -> RetinaNet:
    """RetinaNet with a ``lavit_tiny`` + FPN backbone (see :func:`retinanet_fpn`)."""
    return retinanet_fpn("lavit_tiny", num_classes, **kwargs)


def retinanet_lavit_small(num_classes: int = 91, **kwargs) -> RetinaNet:
    """RetinaNet with a ``lavit_small`` + FPN backbone (see :func:`retinanet_fpn`)."""
    return retinanet_fpn("lavit_small", num_classes, **kwargs)


def maskrcnn_lavit_tiny(num_classes: int = 91, **kwargs) -> MaskRCNN:
    """Mask R-CNN with a ``lavit_tiny`` + FPN backbone (see :func:`maskrcnn_fpn`)."""
    return maskrcnn_fpn("lavit_tiny", num_classes, **kwargs)


def maskrcnn_lavit_small(num_classes: int = 91, **kwargs) -> MaskRCNN:
    """Mask R-CNN with a ``lavit_small`` + FPN backbone (see :func:`maskrcnn_fpn`)."""
    return maskrcnn_fpn("lavit_small", num_classes, **kwargs)


def collate_detection(batch: list) -> tuple[list, list]:
    """``DataLoader`` collate for detection: ``[(image, target), ...] -> (images, targets)``."""
    return [b[0] for b in batch], [b[1] for b in batch]


def detection_losses(
    model: nn.Module, images: list[torch.Tensor], targets: list[dict], device: torch.device
) -> dict[str, torch.Tensor]:
    """torchvision's training loss dict of one batch, moved to ``device`` first."""
    targets = [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in targets
    ]
    return model([im.to(device) for im in images], targets)


def dense_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    steps: int,
    warmup_steps: int | None = None,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its per-step schedule for dense-prediction training.

    No weight decay on norms, biases, position embeddings and Theta/Psi; linear warm-up over
    ``warmup_steps`` (default 10 % of ``steps``), then cosine decay to 0 at ``steps``. Call
    ``scheduler.step()`` after every optimizer step.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("pos_embed", ".theta", ".psi"))
        (no_decay if skip else decay).append(p)
    optimizer = torch.optim.AdamW(
        [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)],
        lr=lr,
    )
    warm = max(1, steps // 10) if warmup_steps is None else max(1, warmup_steps)

    def schedule(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _coco_eval(gt, results: list[dict], iou_type: str) -> dict[str, float | None]:
    from pycocotools.cocoeval import COCOeval

    names = (f"{iou_type}_AP", f"{iou_type}_AP50", f"{iou_type}_AP75")
    if not gt.getAnnIds():
        return dict.fromkeys(names)
    if not results:
        return dict.fromkeys(names, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(0.0, float(s)) for s in ev.stats[:3]]
    return dict(zip(names, stats, strict=True))


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    dataset: Dataset,
    annotation_file: str | os.PathLike[str],
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
    category_ids: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """COCO-style AP (pycocotools ``COCOeval``) of ``model`` on ``dataset``.

    Returns ``bbox_AP`` (AP@[.5:.95]), ``bbox_AP50``, ``bbox_AP75`` and, for models that
    predict ``masks``, the same three for ``segm``; all ``None`` (with a warning) when
    ``annotation_file`` holds no annotations, as AP is undefined without ground truth.
    ``annotation_file`` is the dataset's COCO JSON (its image ids must match the targets'
    ``image_id``). ``category_ids[label - 1]`` is the COCO id of a predicted label (``None``:
    labels are the ids, as in :func:`lavit.dense_data.make_scenes` folders).
    """
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotation_file))
    if not gt.getAnnIds():
        warnings.warn(
            f"{annotation_file} has no annotations: AP is undefined (reported as None)",
            stacklevel=2,
        )

    def category(label: int) -> int:
        return label if category_ids is None else category_ids[label - 1]

    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    boxes, segms, has_masks = [], [], False
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_detection)
    try:
        for images, targets in progress(loader, enabled=show_progress, desc="eval"):
            outputs = model([im.to(device) for im in images])
            for out, tgt in zip(outputs, targets, strict=True):
                image_id = int(tgt["image_id"])
                b = out["boxes"].cpu()
                xywh = torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], 1).tolist()
                for box, score, label in zip(
                    xywh, out["scores"].tolist(), out["labels"].tolist(), strict=True
                ):
                    boxes.append(
                        dict(image_id=image_id, category_id=category(label), bbox=box, score=score)
                    )
                if "masks" in out:
                    has_masks = True
                    masks = (out["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8)
                    for m, score, label in zip(
                        masks, out["scores"].tolist(), out["labels"].tolist(), strict=True
                    ):
                        rle = mask_utils.encode(np.asfortranarray(m))
                        rle["counts"] = rle["counts"].decode("ascii")
                        segms.append(
                            dict(
                                image_id=image_id,
                                category_id=category(label),
                                segmentation=rle,
                                score=score,
                            )
                        )
    finally:
        model.train(was_training)
    metrics = _coco_eval(gt, boxes, "bbox")
    if has_masks:
        metrics |= _coco_eval(gt, segms, "segm")
    return metrics
