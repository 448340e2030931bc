"""Omniglot (Lake et al., 2015) in the official layout, from a folder or straight from the zip.

Layout: ``[<top>/]<alphabet>/<character>/<id>_<drawer>.png`` (105x105 binary PNGs). Images are
resized to ``img_size`` and cached as one uint8 tensor file keyed by the source's path, size
and mtime, so repeated loads skip PNG decoding.

``load_omniglot_vinyals`` builds the standard protocol of Vinyals et al. (2016): the
characters of ``images_background`` then ``images_evaluation`` (each in sorted
``alphabet/character`` order), the first 1,200 for meta-training and the other 423 for
meta-testing, every character in its four rotations as four classes.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from lab_common import cache_dir as default_cache_dir
from lab_common import load_checkpoint, save_checkpoint

from ..data import FewShotDataset

__all__ = [
    "SMALL2_NEW_ALPHABETS",
    "load_omniglot",
    "load_omniglot_vinyals",
    "omniglot_split",
    "select_alphabets",
]

SMALL2_NEW_ALPHABETS = ("Japanese_(katakana)", "Sanskrit", "Tagalog")
"""The alphabets of ``images_background_small2`` that ``images_background_small1`` lacks (the
other two, Greek and Latin, are in both, byte for byte): meta-train on small1 and meta-test on
``load_omniglot(small2, alphabets=SMALL2_NEW_ALPHABETS)`` for a disjoint protocol."""

VINYALS_TRAIN, VINYALS_TOTAL = 1200, 1623

_LAYOUT = "<root>/[images_background/]<alphabet>/<character>/<image>.png (official Omniglot layout)"


def _decode(data: bytes | Path, img_size: int) -> torch.Tensor:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        img = img.convert("L").resize((img_size, img_size), Image.Resampling.LANCZOS)
        return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(
            1, img_size, img_size
        )


def _corrupt(root: Path, err: Exception) -> ValueError:
    return ValueError(
        f"Omniglot zip {root} is corrupt or truncated ({type(err).__name__}: {err}); "
        "download it again (or unzip a good copy and pass the folder)"
    )


def _entries(root: Path) -> list[tuple[str, str, object]]:
    """``(alphabet/character, file name, source)`` of every PNG, sorted."""
    out = []
    if root.is_file():
        try:
            zf = zipfile.ZipFile(root)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise _corrupt(root, err) from err
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
    alphabets: Sequence[str] = (),
) -> FewShotDataset:
    """Read every character of an Omniglot folder or zip.

    Args:
        root: an official folder (e.g. ``images_background``) or zip
            (e.g. ``images_background_small1.zip``).
        img_size: output side (images are ``(1, img_size, img_size)`` uint8; strokes dark).
        cache_dir: where the decoded tensor file goes (default ``lab_common.cache_dir()``).
        use_cache: read/write that cache.
        alphabets: keep only these alphabets (``()``: all); see ``select_alphabets``.

    Returns:
        A ``FewShotDataset`` with one class per character (``alphabet/character``).

    Raises:
        FileNotFoundError: no ``root``.
        ValueError: no PNGs in the layout, a corrupt zip or image, or an unknown alphabet.
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
        dataset = FewShotDataset(state["images"], state["labels"], state["class_names"])
        return select_alphabets(dataset, alphabets, source=root)
    entries = _entries(root)
    if not entries:
        raise ValueError(f"no Omniglot PNGs found in {root}; expected {_LAYOUT}")
    names = sorted({e[0] for e in entries})
    index = {n: i for i, n in enumerate(names)}
    images = []
    for _, _, src in entries:
        if isinstance(src, tuple):
            zf, member = src
            try:
                images.append(_decode(zf.read(member), img_size))
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
                raise _corrupt(root, err) from err
        else:
            try:
                images.append(_decode(src, img_size))
            except OSError as err:
                raise ValueError(
                    f"Omniglot image {src} is unreadable ({err}); replace it or delete it"
                ) from err
    labels = torch.tensor([index[e[0]] for e in entries], dtype=torch.int64)
    dataset = FewShotDataset(torch.stack(images), labels, names)
    if use_cache:
        save_checkpoint(
            {"images": dataset.images, "labels": labels, "class_names": names}, cache_file
        )
    return select_alphabets(dataset, alphabets, source=root)


def _keep_classes(dataset: FewShotDataset, keep: list[int]) -> FewShotDataset:
    """The classes ``keep`` of ``dataset`` (in that order), relabelled ``0..len(keep)-1``."""
    n = len(dataset.class_names)
    remap = torch.full((n,), -1, dtype=torch.int64)
    remap[keep] = torch.arange(len(keep))
    new = remap[dataset.labels]
    sel = new >= 0
    return FewShotDataset(
        dataset.images[sel], new[sel], [dataset.class_names[c] for c in keep], dataset.rotations
    )


def select_alphabets(
    dataset: FewShotDataset, alphabets: Sequence[str], *, source: object = "the dataset"
) -> FewShotDataset:
    """The characters of ``dataset`` whose alphabet (the part of the class name before ``/``)
    is one of ``alphabets``; ``()`` keeps all.

    Raises:
        ValueError: an alphabet not in ``dataset`` (the message lists the ones there).
    """
    if not alphabets:
        return dataset
    present = sorted({name.split("/")[0] for name in dataset.class_names})
    unknown = [a for a in alphabets if a not in present]
    if unknown:
        raise ValueError(f"alphabets {unknown} are not in {source}; it has: {', '.join(present)}")
    wanted = set(alphabets)
    keep = [i for i, name in enumerate(dataset.class_names) if name.split("/")[0] in wanted]
    return _keep_classes(dataset, keep)


def load_omniglot_vinyals(
    background: str | Path,
    evaluation: str | Path,
    *,
    train_characters: int | None = None,
    img_size: int = 28,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> tuple[FewShotDataset, FewShotDataset]:
    """The standard Omniglot split (Vinyals et al., 2016): 1,200 training / 423 test characters.

    The characters of ``background`` then those of ``evaluation`` (each sorted by
    ``alphabet/character``) are taken in that fixed order; the first ``train_characters`` are
    meta-training classes, the rest meta-test classes, each character in its four rotations
    (0, 90, 180, 270 degrees) as four classes. On the full release (964 + 659 = 1,623
    characters) that is all of ``images_background`` and the first 236 characters of
    ``images_evaluation`` (its first alphabets in sorted order) for training, 1,200 x 4 = 4,800
    classes, and the other 423 x 4 = 1,692 for testing. The 1,200 / 423 sizes are the paper's;
    which 1,200 is this fixed, documented order (published implementations differ here: some
    shuffle with a seed), so numbers match the literature statistically, not bit for bit.

    Args:
        background, evaluation: the two official folders or zips.
        train_characters: where the split falls; default 1,200 on the full 1,623 characters,
            and the same fraction (``round(n * 1200 / 1623)``) for smaller stand-ins.
        img_size, cache_dir, use_cache: as for ``load_omniglot``.

    Returns:
        ``(train, test)`` datasets with ``rotations == (0, 1, 2, 3)``.

    Raises:
        ValueError: a character in both sources (they would leak into the test split), or a
            ``train_characters`` that leaves either side empty.
    """
    kw = dict(img_size=img_size, cache_dir=cache_dir, use_cache=use_cache)
    bg, ev = load_omniglot(background, **kw), load_omniglot(evaluation, **kw)
    both = sorted(set(bg.class_names) & set(ev.class_names))
    if both:
        raise ValueError(
            f"{len(both)} characters are in both {background} and {evaluation} (e.g. "
            f"{both[0]}); the two sources must be disjoint (the official background and "
            "evaluation sets are)"
        )
    n = len(bg.class_names) + len(ev.class_names)
    if train_characters is None:
        train_characters = round(n * VINYALS_TRAIN / VINYALS_TOTAL)
    if not 0 < train_characters < n:
        raise ValueError(f"train_characters must be in 1..{n - 1}, got {train_characters}")
    merged = FewShotDataset(
        torch.cat([bg.images, ev.images]),
        torch.cat([bg.labels, ev.labels + len(bg.class_names)]),
        bg.class_names + ev.class_names,
    )
    rot = (0, 1, 2, 3)
    train = _keep_classes(merged, list(range(train_characters))).with_rotations(rot)
    test = _keep_classes(merged, list(range(train_characters, n))).with_rotations(rot)
    return train, test


def omniglot_split(dataset: FewShotDataset, split: str, every: int = 10) -> FewShotDataset:
    """``"test"``: all characters; ``"val"``: every ``every``-th character; ``"train"``: the
    rest."""
    if split == "test":
        return dataset
    n = len(dataset.class_names)
    held = [c for c in range(n) if c % every == every - 1]
    keep = held if split == "val" else [c for c in range(n) if c % every != every - 1]
    return _keep_classes(dataset, keep)
