"""Small dense-prediction datasets built from real images, and readers for them.

No detection or segmentation dataset ships with the project, so :func:`make_scenes` builds one
from real pictures: Fashion-MNIST items, cut out by thresholding (the item's foreground mask),
tinted and pasted onto real CIFAR-10 photographs (resized to the scene size), with known boxes
and masks. It writes

* ``images/NNNNN.png`` - the RGB scenes,
* ``annotations.json`` - COCO detection/instance-segmentation JSON (boxes ``[x, y, w, h]``,
  RLE masks, categories ``1..K``),
* ``masks/NNNNN.png`` - semantic label maps (``0`` background, ``k`` an object of category
  ``k``; the image/mask-pair folder layout :class:`SegmentationFolder` reads).

The ``"train"`` split uses Fashion-MNIST training items and even-numbered CIFAR-10 images, the
``"val"`` split Fashion-MNIST test items and odd-numbered CIFAR-10 images, so held-out scenes
share no source picture with training scenes. :func:`coco_scenes` reads a COCO folder as
:class:`CocoFolder` (boxes, labels, masks as tv_tensors, category ids mapped to ``1..K``), the
format torchvision's detectors train on.
"""

import contextlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from lab_common import shared_datasets_root
from lab_common.data import load_cifar10_tensors, load_fashion_mnist_tensors

__all__ = [
    "FASHION_MNIST_CLASSES",
    "CocoFolder",
    "SegmentationFolder",
    "coco_scenes",
    "load_cifar10_backgrounds",
    "make_scenes",
]

FASHION_MNIST_CLASSES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
SPLITS = ("train", "val")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


#: backgrounds available per split (evenly spaced over the class-ordered archive)
POOL_SIZE = 2500


def _background_pool(base: Path, split: str) -> np.ndarray:
    """``(POOL_SIZE, 32, 32, 3)`` uint8 photographs of ``split`` (even / odd archive members)."""
    images = load_cifar10_tensors(base)[0][SPLITS.index(split) :: 2]  # disjoint splits
    picks = np.linspace(0, len(images) - 1, min(POOL_SIZE, len(images))).round().astype(int)
    return images[torch.from_numpy(picks)].permute(0, 2, 3, 1).numpy()


def load_cifar10_backgrounds(
    count: int, split: str = "train", root: str | os.PathLike[str] | None = None
) -> np.ndarray:
    """``count`` real CIFAR-10 photographs ``(count, 32, 32, 3)`` uint8, spread over classes.

    Reads ``cifar10/cifar10-train-jpg.tar.gz`` under ``root`` (default: the shared datasets)
    without unpacking it: ``"train"`` draws from even-numbered members, ``"val"`` from
    odd-numbered ones, evenly spaced over the class-ordered archive (at most ``POOL_SIZE``
    per split; :func:`lab_common.data.load_cifar10_tensors` decodes the archive once).
    """
    _check_split(split)
    if not 1 <= count <= POOL_SIZE:
        raise ValueError(f"count must be in 1..{POOL_SIZE} backgrounds per split, got {count}")
    base = Path(root).expanduser() if root is not None else shared_datasets_root()
    pool = _background_pool(base, split)
    return pool[np.linspace(0, len(pool) - 1, count).round().astype(int)]


def _cut_item(item: np.ndarray, size: int, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """A Fashion-MNIST item resized to ``size``: (intensity in [0, 1], boolean mask)."""
    img = Image.fromarray(item).resize((size, size), Image.BILINEAR)
    gray = np.asarray(img).astype(np.float32) / 255.0
    return gray, gray * 255.0 > threshold


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    x0, y0 = float(xs.min()), float(ys.min())
    return [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0]


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def make_scenes(
    out: str | os.PathLike[str],
    num_images: int,
    split: str = "train",
    image_size: int = 128,
    classes: tuple[int, ...] = (0, 1, 8),
    objects_per_image: tuple[int, int] = (1, 3),
    object_size: tuple[float, float] = (0.2, 0.45),
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    threshold: int = 40,
) -> Path:
    """Write a COCO-format scene folder built from real images (see the module docstring).

    Args:
        out: folder to create (``images/``, ``masks/``, ``annotations.json``).
        num_images: number of scenes.
        split: ``"train"`` or ``"val"`` (disjoint source pictures).
        image_size: side of the square scenes in pixels.
        classes: Fashion-MNIST class indices used as categories ``1..len(classes)``.
        objects_per_image: inclusive range of pasted objects per scene.
        object_size: object side as a fraction of ``image_size`` (uniform in the range).
        seed: placement/colour/item sampling seed.
        root: shared datasets folder (default :func:`lab_common.shared_datasets_root`).
        threshold: grey level (0-255) above which an item pixel is foreground.

    Returns:
        The folder.
    """
    _check_split(split)
    if num_images < 1 or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"need num_images >= 1 and distinct classes, got {num_images}, {classes}")
    if any(not 0 <= c < len(FASHION_MNIST_CLASSES) for c in classes):
        raise ValueError(f"classes must be Fashion-MNIST indices 0..9, got {classes}")
    lo, hi = objects_per_image
    if not 1 <= lo <= hi:
        raise ValueError(f"objects_per_image must be (min, max) with 1 <= min <= max, got {lo, hi}")
    from pycocotools import mask as mask_utils  # lavit[detection]; after the argument checks

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=False)
    (out / "masks").mkdir()
    rng = np.random.default_rng(seed)
    items, labels = load_fashion_mnist_tensors(root, train=split == "train")
    items, labels = items.numpy(), labels.numpy()
    pools = {c: np.flatnonzero(labels == c) for c in classes}
    backgrounds = load_cifar10_backgrounds(num_images, split, root)
    images, annotations = [], []
    for idx in range(num_images):
        bg = Image.fromarray(backgrounds[idx]).resize((image_size, image_size), Image.BILINEAR)
        canvas = np.asarray(bg).astype(np.float32) / 255.0
        semantic = np.zeros((image_size, image_size), np.uint8)
        placed: list[tuple[int, np.ndarray, list[float]]] = []
        for _ in range(int(rng.integers(lo, hi + 1))):
            cat = int(rng.integers(len(classes)))
            item = items[rng.choice(pools[classes[cat]])]
            side = int(rng.uniform(*object_size) * image_size)
            gray, fg = _cut_item(item, side, threshold)
            for _attempt in range(20):
                y, x = (int(v) for v in rng.integers(0, image_size - side + 1, size=2))
                box = [float(x), float(y), float(side), float(side)]
                if all(_iou(box, b) < 0.2 for _, _, b in placed):
                    break
            else:
                continue
            tint = rng.uniform(0.35, 1.0, size=3).astype(np.float32)
            patch = (0.3 + 0.7 * gray[..., None]) * tint
            region = canvas[y : y + side, x : x + side]
            region[fg] = patch[fg]
            full = np.zeros((image_size, image_size), bool)
            full[y : y + side, x : x + side] = fg
            for _, m, _ in placed:  # the new object occludes earlier ones
                m &= ~full
            semantic[full] = cat + 1
            placed.append((cat, full, box))
        name = f"{idx:05d}.png"
        Image.fromarray((canvas * 255).round().astype(np.uint8)).save(out / "images" / name)
        Image.fromarray(semantic).save(out / "masks" / name)
        images.append(dict(id=idx + 1, file_name=name, height=image_size, width=image_size))
        for cat, m, _ in placed:
            if m.sum() < 16:  # almost fully occluded
                continue
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=idx + 1,
                    category_id=cat + 1,
                    bbox=_box(m),
                    area=float(m.sum()),
                    iscrowd=0,
                    segmentation=rle,
                )
            )
    categories = [
        dict(id=i + 1, name=FASHION_MNIST_CLASSES[c], supercategory="fashion")
        for i, c in enumerate(classes)
    ]
    coco = dict(images=images, annotations=annotations, categories=categories)
    (out / "annotations.json").write_text(json.dumps(coco))
    return out


def _require_pycocotools() -> None:
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(
            "COCO folders (retinanet, maskrcnn) need pycocotools, which the lavit[detection] "
            "extra installs: pip install 'lavit[detection]'"
        ) from None


class CocoFolder(Dataset):
    """A COCO folder (``images/`` + ``annotations.json``) as detection ``(image, target)`` pairs.

    Items are a float ``tv_tensors.Image`` ``(3, H, W)`` in ``[0, 1]`` and a dict with ``boxes``
    (XYXY ``BoundingBoxes`` ``(N, 4)``), ``labels`` ``(N,)``, ``image_id`` and, with
    ``with_masks``, ``masks`` ``(N, H, W)``. The dataset's category ids are mapped to labels
    ``1..K`` in sorted order (``category_ids[label - 1]`` is the COCO id; label 0 is
    torchvision's background), so a category with id 0 is learned like any other. An image
    without annotations is a negative (``N = 0``); annotations with a zero-width or
    zero-height box are dropped with one warning that counts them. ``train`` adds a random
    horizontal flip.

    Raises:
        FileNotFoundError: no ``annotations.json``, or (``with_masks``) a missing image.
        ValueError: no categories, an annotation whose category is not in ``categories``, or
            (``with_masks``) a mask whose size differs from its image's.
        ModuleNotFoundError: pycocotools (the ``lavit[detection]`` extra) is not installed.
    """

    def __init__(self, root: str | os.PathLike[str], train: bool = False, with_masks: bool = True):
        _require_pycocotools()
        from pycocotools.coco import COCO

        root = Path(root)
        self.annotation_file = root / "annotations.json"
        if not self.annotation_file.is_file():
            raise FileNotFoundError(
                f"{self.annotation_file} not found: expected a COCO folder with images/ beside it"
            )
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO(str(self.annotation_file))
        self.category_ids = sorted(self.coco.getCatIds())
        if not self.category_ids:
            raise ValueError(f"{self.annotation_file} lists no categories")
        self.images = root / "images"
        self.with_masks = with_masks
        self.ids = sorted(self.coco.imgs)
        self.annotations = {i: self._checked(i) for i in self.ids}
        dropped = sum(a["bbox"][2] <= 0 or a["bbox"][3] <= 0 for a in self.coco.anns.values())
        if dropped:
            warnings.warn(
                f"{self.annotation_file}: dropped {dropped} annotations with a zero-width or "
                "zero-height box",
                stacklevel=2,
            )
        self.transform = v2.Compose(
            ([v2.RandomHorizontalFlip()] if train else []) + [v2.ToDtype(torch.float32, scale=True)]
        )

    def _checked(self, image_id: int) -> list[dict]:
        """The image's annotations with a ``label``, degenerate boxes dropped, checked."""
        label = {c: i + 1 for i, c in enumerate(self.category_ids)}
        kept = []
        for a in self.coco.imgToAnns[image_id]:
            if a["category_id"] not in label:
                raise ValueError(
                    f"{self.annotation_file}: annotation {a['id']} has category_id "
                    f"{a['category_id']}, which is not in categories {self.category_ids}"
                )
            if a["bbox"][2] > 0 and a["bbox"][3] > 0:
                kept.append(a | {"label": label[a["category_id"]]})
        if self.with_masks and kept:
            info = self.coco.imgs[image_id]
            path = self.images / info["file_name"]
            if not path.is_file():
                raise FileNotFoundError(f"image {path} (image id {image_id}) not found")
            with Image.open(path) as img:
                width, height = img.size
            for a in kept:
                seg = a.get("segmentation")
                h, w = seg["size"] if isinstance(seg, dict) else (info["height"], info["width"])
                if (h, w) != (height, width):
                    raise ValueError(
                        f"{path}: the mask of annotation {a['id']} is {h}x{w} but the image is "
                        f"{height}x{width} (height x width); fix the annotation's size"
                    )
        return kept

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[tv_tensors.Image, dict]:
        image_id = self.ids[i]
        info = self.coco.imgs[image_id]
        with Image.open(self.images / info["file_name"]) as img:
            image = tv_tensors.Image(
                torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
            )
        height, width = image.shape[-2:]
        anns = self.annotations[image_id]
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                format="XYXY",
                canvas_size=(height, width),
            ),
            "labels": torch.tensor([a["label"] for a in anns], dtype=torch.int64),
            "image_id": image_id,
        }
        if self.with_masks:
            masks = [torch.from_numpy(self.coco.annToMask(a)) for a in anns]
            target["masks"] = tv_tensors.Mask(
                torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
            )
        return self.transform(image, target)


def coco_scenes(
    root: str | os.PathLike[str], train: bool = False, with_masks: bool = True
) -> CocoFolder:
    """A COCO folder as a :class:`CocoFolder` (boxes, labels, ``image_id`` and masks)."""
    return CocoFolder(root, train=train, with_masks=with_masks)


#: the mask value that marks a pixel to ignore (:class:`lavit.segmentation.SemanticFPN`'s default).
IGNORE_INDEX = 255


def _check_mask(image: Path, mask: Path, num_classes: int) -> None:
    with Image.open(image) as img:
        size = img.size
    values = np.asarray(Image.open(mask))
    if values.shape[:2] != size[::-1]:
        raise ValueError(
            f"{mask} is {values.shape[1]}x{values.shape[0]} but its image {image.name} is "
            f"{size[0]}x{size[1]} (width x height)"
        )
    bad = np.unique(values[(values >= num_classes) & (values != IGNORE_INDEX)])
    if bad.size:
        raise ValueError(
            f"{mask} has values {bad[:5].tolist()}, not classes below --num-classes "
            f"{num_classes} nor the ignore value {IGNORE_INDEX}"
        )


class SegmentationFolder(Dataset):
    """Image/mask pairs: ``root/images/NAME.png`` with ``root/masks/NAME.png``.

    Items are ``(image (3, H, W) float in [0, 1], mask (H, W) int64)``; mask values are class
    indices (``0`` = background) and ``255`` (:data:`IGNORE_INDEX`) = ignore. ``train`` flips
    both at random. With ``num_classes`` every pair is checked up front (before any training):
    a mask must have its image's size and values below ``num_classes`` or ``255``.

    Raises:
        FileNotFoundError: no images, or an image without its mask.
        ValueError: (``num_classes``) a mask of the wrong size or with an out-of-range value,
            naming the file.
    """

    def __init__(
        self, root: str | os.PathLike[str], train: bool = False, num_classes: int | None = None
    ):
        root = Path(root)
        self.images = sorted((root / "images").glob("*.png"))
        if not self.images:
            raise FileNotFoundError(f"no images/*.png under {root}")
        self.masks = [root / "masks" / p.name for p in self.images]
        missing = [str(m) for m in self.masks if not m.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} masks missing, e.g. {missing[0]}")
        self.train = train
        if num_classes is not None:
            for image, mask in zip(self.images, self.masks, strict=True):
                _check_mask(image, mask, num_classes)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = torch.from_numpy(np.asarray(Image.open(self.images[i]).convert("RGB")).copy())
        mask = torch.from_numpy(np.asarray(Image.open(self.masks[i])).astype(np.int64))
        img = img.permute(2, 0, 1).float() / 255.0
        if self.train and torch.rand(()) < 0.5:
            img, mask = img.flip(-1), mask.flip(-1)
        return img, mask
