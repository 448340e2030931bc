"""Omniglot (Lake et al., 2015) in the official layout, from a folder or straight from the zip.

Layout: ``[<top>/]<alphabet>/<character>/<id>_<drawer>.png`` (105x105 binary PNGs). Images are
resized to ``img_size`` and cached as one uint8 tensor file keyed by the source's path, size
and mtime, so repeated loads skip PNG decoding.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import torch
from PIL import Image

from lab_common import cache_dir as default_cache_dir
from lab_common import load_checkpoint, save_checkpoint

from ..data import FewShotDataset

__all__ = ["load_omniglot", "omniglot_split"]

_LAYOUT = "<root>/[images_background/]<alphabet>/<character>/<image>.png (official Omniglot layout)"


def _decode(data: bytes | Path, img_size: int) -> torch.Tensor:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        img = img.convert("L").resize((img_size, img_size), Image.Resampling.LANCZOS)
        return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(
            1, img_size, img_size
        )


def _entries(root: Path) -> list[tuple[str, str, object]]:
    """``(alphabet/character, file name, source)`` of every PNG, sorted."""
    out = []
    if zipfile.is_zipfile(root):
        zf = zipfile.ZipFile(root)
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if info.is_dir() or not info.filename.lower().endswith(".png") or len(parts) < 3:
                continue
            out.append((f"{parts[-3]}/{parts[-2]}", parts[-1], (zf, info.filename)))
    else:
        for png in root.rglob("*.png"):
            rel = png.relative_to(root).parts
            if len(rel) >= 3:
                out.append((f"{rel[-3]}/{rel[-2]}", rel[-1], png))
    return sorted(out, key=lambda e: (e[0], e[1]))


def load_omniglot(
    root: str | Path,
    *,
    img_size: int = 28,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> FewShotDataset:
    """Read every character of an Omniglot folder or zip.

    Args:
        root: an official folder (e.g. ``images_background``) or zip
            (e.g. ``images_background_small1.zip``).
        img_size: output side (images are ``(1, img_size, img_size)`` uint8; strokes dark).
        cache_dir: where the decoded tensor file goes (default ``lab_common.cache_dir()``).
        use_cache: read/write that cache.

    Returns:
        A ``FewShotDataset`` with one class per character (``alphabet/character``).
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(
            f"Omniglot not found at {root}; expected a folder or zip with {_LAYOUT}"
        )
    stat = root.stat()
    key = hashlib.sha1(f"{root.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{img_size}".encode())
    cache_file = Path(cache_dir or default_cache_dir()) / f"omniglot-{key.hexdigest()[:16]}.pt"
    if use_cache and cache_file.is_file():
        state = load_checkpoint(cache_file)
        return FewShotDataset(state["images"], state["labels"], state["class_names"])
    entries = _entries(root)
    if not entries:
        raise ValueError(f"no Omniglot PNGs found in {root}; expected {_LAYOUT}")
    names = sorted({e[0] for e in entries})
    index = {n: i for i, n in enumerate(names)}
    images = []
    for _, _, src in entries:
        if isinstance(src, tuple):
            zf, member = src
            images.append(_decode(zf.read(member), img_size))
        else:
            images.append(_decode(src, img_size))
    labels = torch.tensor([index[e[0]] for e in entries], dtype=torch.int64)
    dataset = FewShotDataset(torch.stack(images), labels, names)
    if use_cache:
        save_checkpoint(
            {"images": dataset.images, "labels": labels, "class_names": names}, cache_file
        )
    return dataset


def omniglot_split(dataset: FewShotDataset, split: str, every: int = 10) -> FewShotDataset:
    """``"test"``: all characters; ``"val"``: every ``every``-th character; ``"train"``: the
    rest."""
    if split == "test":
        return dataset
    n = len(dataset.class_names)
    held = [c for c in range(n) if c % every == every - 1]
    keep = held if split == "val" else [c for c in range(n) if c % every != every - 1]
    remap = torch.full((n,), -1, dtype=torch.int64)
    remap[keep] = torch.arange(len(keep))
    new = remap[dataset.labels]
    sel = new >= 0
    return FewShotDataset(
        dataset.images[sel], new[sel], [dataset.class_names[c] for c in keep], dataset.rotations
    )
