"""The teacher's outputs for K fixed augmented views of every training image, computed once.

A frozen teacher gives the same outputs for the same input, so a student epoch need not run it:
:class:`TeacherCache` stores, for view ``v`` of training image ``i`` (a random crop + flip drawn
once from a seed), the teacher's logits ``(C,)`` and, for losses that read features (TRG), its
features; each student epoch draws one of the K views per image (:class:`CachedViews`) and the
distiller reads the stored outputs instead of running the teacher (as FKD, Shen and Xing, ECCV
2022, stores soft labels per crop). K views replace the endless stream of live augmentations by
K per image: ``teacher_cache`` is a trade of augmentation variety for speed.

Storage, in a folder beside the teacher checkpoint (``<teacher>.views<K>/``): ``views.npy``
``(N, K, 3)`` int16 (top, left, flip), ``logits.npy`` ``(N, K, C)`` float16 and optionally
``features.npy`` ``(N, K, ...)`` float16 (memory-mapped on load), and ``meta.json`` with the key
(teacher weights, data, K, augmentation, view seed, features) and a checksum of every array. A
folder whose key differs (a retrained teacher, other data) is rebuilt; a folder whose arrays do
not match their checksum raises a :class:`CacheError` naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from .data import TensorImageDataset

__all__ = ["CacheError", "CachedViews", "TeacherCache", "tensor_source"]

_FORMAT = 1
_FP16_MAX = float(np.finfo(np.float16).max)
#: ``fn(teacher, x (B, C, H, W)) -> (features or None, logits (B, K))``.
TeacherFn = Callable[[nn.Module, torch.Tensor], tuple["torch.Tensor | None", torch.Tensor]]


class CacheError(ValueError):
    """A teacher-cache folder is unreadable or does not match its checksums."""


def tensor_source(dataset: Dataset) -> tuple[TensorImageDataset, torch.Tensor]:
    """The in-memory dataset under ``dataset`` (through any ``Subset``\\ s) and the indices into it.

    Raises:
        ValueError: ``dataset`` is not backed by a :class:`TensorImageDataset` (an image folder).
    """
    index: torch.Tensor | None = None
    while isinstance(dataset, Subset):
        inner = torch.as_tensor(dataset.indices, dtype=torch.long)
        index = inner if index is None else inner[index]
        dataset = dataset.dataset
    if not isinstance(dataset, TensorImageDataset):
        raise ValueError(
            f"--teacher-cache needs an in-memory dataset (fashion-mnist, mnist, cifar10, "
            f"cifar100), got {type(dataset).__name__}; use --teacher-cache 0 for image folders"
        )
    return dataset, index if index is not None else torch.arange(len(dataset))


class CachedViews(Dataset):
    """The training set seen through cached views: items ``(x (C, H, W), label, position, view)``.

    ``position`` indexes the training set (and the cache), ``view`` is the cached view shown
    this epoch; :meth:`set_epoch` draws one view per image from a seed, so an epoch's images do
    not depend on worker processes or on what ran before.
    """

    def __init__(self, dataset: Dataset, views: np.ndarray) -> None:
        self.source, self.index = tensor_source(dataset)
        self.views = views
        self.choice = torch.zeros(len(self.index), dtype=torch.long)

    def set_epoch(self, seed: int) -> None:
        """Draw this epoch's view of every image from ``seed``."""
        gen = torch.Generator().manual_seed(seed)
        self.choice = torch.randint(self.views.shape[1], (len(self.index),), generator=gen)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        view = int(self.choice[position])
        top, left, flip = (int(v) for v in self.views[position, view])
        i = int(self.index[position])
        return self.source.image(i, (top, left, bool(flip))), self.source.labels[i], position, view


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class TeacherCache:
    """Stored teacher outputs, looked up per ``(position, view)``; build with :meth:`build_or_load`.

    Attributes:
        folder: where the arrays live.
        views: ``(N, K, 3)`` int16 view parameters (top, left, flip).
        logits: ``(N, K, C)`` float16, memory-mapped.
        features: ``(N, K, ...)`` float16, memory-mapped, or None.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        try:
            self.meta = json.loads(meta_path.read_text())
            arrays = {
                name: np.load(self.folder / f"{name}.npy", mmap_mode="r")
                for name in self.meta["checksums"]
            }
        except (OSError, ValueError, KeyError) as err:
            raise CacheError(
                f"teacher cache {self.folder} is unreadable ({type(err).__name__}: {err}); "
                "delete the folder to rebuild it"
            ) from err
        self.views = np.asarray(arrays["views"])
        self.logits = arrays["logits"]
        self.features = arrays.get("features")

    @property
    def key(self) -> str:
        return self.meta["key"]

    def verify(self) -> None:
        """Raise :class:`CacheError` naming the first array whose checksum does not match."""
        for name, expected in self.meta["checksums"].items():
            if _file_digest(self.folder / f"{name}.npy") != expected:
                raise CacheError(
                    f"teacher cache {self.folder / name}.npy does not match its checksum "
                    "(corrupt or changed); delete the folder to rebuild it"
                )

    def lookup(
        self, position: torch.Tensor, view: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(features or None, logits (B, C))`` as float32 on ``device`` for ``(B,)`` indices."""
        rows, cols = position.cpu().numpy(), view.cpu().numpy()
        logits = torch.from_numpy(np.asarray(self.logits[rows, cols])).to(device).float()
        if self.features is None:
            return None, logits
        feats = torch.from_numpy(np.asarray(self.features[rows, cols])).to(device).float()
        return feats, logits

    @staticmethod
    def folder_for(teacher_checkpoint: str | os.PathLike[str], views: int) -> Path:
        """``<teacher>.views<K>`` beside the teacher checkpoint."""
        path = Path(teacher_checkpoint)
        return path.with_name(f"{path.name}.views{views}")

    @staticmethod
    def cache_key(
        teacher_checkpoint: str | os.PathLike[str],
        dataset: Dataset,
        views: int,
        seed: int,
        with_features: bool,
    ) -> str:
        """Digest of everything the stored outputs depend on."""
        source, index = tensor_source(dataset)
        spec = {
            "format": _FORMAT,
            "views": views,
            "seed": seed,
            "features": with_features,
            "padding": source.padding,
            "flip": source.flip,
            "size": [source.height, source.width],
            "mean": source.mean.flatten().tolist(),
            "std": source.std.flatten().tolist(),
        }
        return _digest(
            Path(teacher_checkpoint).read_bytes(),
            source.images[index].numpy().tobytes(),
            source.labels[index].numpy().tobytes(),
            json.dumps(spec, sort_keys=True).encode(),
        )

    @classmethod
    def build_or_load(
        cls,
        teacher: nn.Module,
        dataset: Dataset,
        teacher_fn: TeacherFn,
        *,
        teacher_checkpoint: str | os.PathLike[str],
        views: int,
        device: torch.device,
        seed: int = 0,
        with_features: bool = False,
        batch_size: int = 256,
        progress: Callable[[Iterator[int]], Iterator[int]] = iter,
    ) -> TeacherCache:
        """The cache of ``teacher`` on ``dataset`` (built now unless an up-to-date one exists).

        Building runs ``teacher_fn`` once for each of the ``views`` views of every image (views
        drawn from ``seed``), in batches of ``batch_size``, and moves the finished folder into
        place atomically; concurrent callers wait on a lock file and load the result.
        """
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        folder = cls.folder_for(teacher_checkpoint, views)
        key = cls.cache_key(teacher_checkpoint, dataset, views, seed, with_features)
        with _locked(folder.with_name(folder.name + ".lock")):
            if (folder / "meta.json").is_file():
                cache = cls(folder)
                if cache.key == key:
                    cache.verify()
                    return cache
            tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            _build(
                tmp, key, teacher, dataset, teacher_fn, views, seed, device, batch_size, progress
            )
            if folder.exists():
                shutil.rmtree(folder)  # a stale cache (other teacher, data or views)
            os.replace(tmp, folder)
        return cls(folder)


@torch.no_grad()
def _build(
    folder: Path,
    key: str,
    teacher: nn.Module,
    dataset: Dataset,
    teacher_fn: TeacherFn,
    views: int,
    seed: int,
    device: torch.device,
    batch_size: int,
    progress: Callable[[Iterator[int]], Iterator[int]],
) -> None:
    source, index = tensor_source(dataset)
    n = len(index)
    gen = torch.Generator().manual_seed(seed)
    view_params = np.zeros((n, views, 3), dtype=np.int16)
    for i in range(n):
        for v in range(views):
            view_params[i, v] = source.draw_view(gen)
    folder.mkdir(parents=True)
    np.save(folder / "views.npy", view_params)
    was_training = teacher.training
    teacher.eval()
    arrays: dict[str, np.lib.format.open_memmap] = {}
    try:
        for start in progress(range(0, n * views, batch_size)):
            flat = torch.arange(start, min(start + batch_size, n * views))
            rows, cols = (flat // views).numpy(), (flat % views).numpy()
            x = torch.stack(
                [
                    source.image(int(index[r]), tuple(int(p) for p in view_params[r, c]))
                    for r, c in zip(rows, cols, strict=True)
                ]
            ).to(device)
            feats, logits = teacher_fn(teacher, x)
            outputs = {"logits": logits}
            if feats is not None:
                outputs["features"] = feats
            for name, value in outputs.items():
                peak = value.detach().float().abs().max().item()
                if not peak < _FP16_MAX:
                    raise ValueError(
                        f"the teacher's {name} reach {peak:.3g}, beyond float16's range that the "
                        "cache stores; check the teacher or use --teacher-cache 0"
                    )
                if name not in arrays:
                    shape = (n, views, *value.shape[1:])
                    arrays[name] = np.lib.format.open_memmap(
                        folder / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape
                    )
                arrays[name][rows, cols] = value.float().cpu().numpy().astype(np.float16)
    finally:
        teacher.train(was_training)
    for array in arrays.values():
        array.flush()
    del arrays
    names = ["views", "logits", *(["features"] if (folder / "features.npy").is_file() else [])]
    meta = {
        "key": key,
        "format": _FORMAT,
        "images": n,
        "views": views,
        "seed": seed,
        "checksums": {name: _file_digest(folder / f"{name}.npy") for name in names},
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
