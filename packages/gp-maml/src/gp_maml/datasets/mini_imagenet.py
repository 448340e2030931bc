"""miniImageNet with the Ravi & Larochelle (2017) split: ``<root>/images/*.jpg`` and
``<root>/{train,val,test}.csv`` (``filename,label`` with a header), 64/16/20 classes."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import torch
from PIL import Image

from lab_common import cache_dir as default_cache_dir
from lab_common import load_checkpoint, save_checkpoint

from ..data import FewShotDataset

__all__ = ["mini_imagenet"]

_LAYOUT = "<root>/images/<file>.jpg and <root>/{train,val,test}.csv with rows filename,label"


def mini_imagenet(
    root: str | Path,
    split: str,
    *,
    img_size: int = 84,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> FewShotDataset:
    """Load one split as ``(M, 3, img_size, img_size)`` uint8 images."""
    root = Path(root)
    csv_path, img_dir = root / f"{split}.csv", root / "images"
    if not csv_path.is_file() or not img_dir.is_dir():
        raise FileNotFoundError(
            f"miniImageNet split {split!r} not found in {root}; expected {_LAYOUT}"
        )
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows or [c.strip().lower() for c in rows[0][:2]] != ["filename", "label"]:
        raise ValueError(f"{csv_path} is malformed: expected a 'filename,label' header; {_LAYOUT}")
    rows = rows[1:]
    stat = csv_path.stat()
    key = hashlib.sha1(f"{csv_path.resolve()}|{stat.st_mtime_ns}|{img_size}".encode()).hexdigest()
    cache_file = Path(cache_dir or default_cache_dir()) / f"miniimagenet-{key[:16]}.pt"
    if use_cache and cache_file.is_file():
        state = load_checkpoint(cache_file)
        return FewShotDataset(state["images"], state["labels"], state["class_names"])
    names = sorted({label for _, label in rows})
    index = {n: i for i, n in enumerate(names)}
    images = []
    for filename, _ in rows:
        path = img_dir / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} listed in {csv_path} is missing; expected {_LAYOUT}")
        with Image.open(path) as img:
            img = img.convert("RGB").resize((img_size, img_size), Image.Resampling.BILINEAR)
            images.append(torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8))
    x = torch.stack(images).view(-1, img_size, img_size, 3).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([index[label] for _, label in rows], dtype=torch.int64)
    if use_cache:
        save_checkpoint({"images": x, "labels": labels, "class_names": names}, cache_file)
    return FewShotDataset(x, labels, names)
