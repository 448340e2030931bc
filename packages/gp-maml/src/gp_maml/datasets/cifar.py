"""CIFAR-FS (Bertinetto et al., 2019) and FC100 (Oreshkin et al., 2018) built from CIFAR-100.

Both pool the 600 images (train + test batches) of each CIFAR-100 class and split the classes:
CIFAR-FS by fine class (64/16/20), FC100 by superclass (12/4/4 superclasses = 60/20/20
classes). ``root`` is the folder torchvision's ``CIFAR100`` uses: it holds
``cifar-100-python/{train,test,meta}`` (the pickles are read directly, which also gives the
superclass labels torchvision drops).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from ..data import FewShotDataset

__all__ = ["CIFAR_FS_SPLITS", "FC100_SPLITS", "cifar_fs", "fc100"]

_LAYOUT = "<root>/cifar-100-python/{train,test,meta} (torchvision's CIFAR-100 layout)"

_CIFAR_FS_VAL = (
    "otter motorcycle television lamp crocodile shark butterfly beaver beetle tractor "
    "flatfish maple_tree camel crab sea cattle"
).split()
_CIFAR_FS_TEST = (
    "baby bed bicycle chimpanzee fox leopard man pickup_truck plain poppy rocket rose snail "
    "sweet_pepper table telephone wardrobe whale woman worm"
).split()
#: class names of the CIFAR-FS val/test splits (train: the other 64 classes)
CIFAR_FS_SPLITS = {"val": _CIFAR_FS_VAL, "test": _CIFAR_FS_TEST}
#: CIFAR-100 superclass ids of the FC100 splits
FC100_SPLITS = {
    "train": (1, 2, 3, 4, 5, 6, 9, 10, 15, 17, 18, 19),
    "val": (8, 11, 13, 16),
    "test": (0, 7, 12, 14),
}


def _read(root: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    base = Path(root) / "cifar-100-python"
    files = [base / n for n in ("train", "test", "meta")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-100 not found: missing {missing}; expected {_LAYOUT}")
    xs, fine, coarse = [], [], []
    try:
        for f in files[:2]:
            with open(f, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
            xs.append(torch.as_tensor(entry["data"], dtype=torch.uint8).view(-1, 3, 32, 32))
            fine += list(entry["fine_labels"])
            coarse += list(entry["coarse_labels"])
        with open(files[2], "rb") as fh:
            names = list(pickle.load(fh, encoding="latin1")["fine_label_names"])
    except (pickle.UnpicklingError, KeyError, EOFError, RuntimeError) as err:
        raise ValueError(
            f"CIFAR-100 files in {base} are malformed ({err!r}); expected {_LAYOUT}"
        ) from err
    return torch.cat(xs), torch.tensor(fine), torch.tensor(coarse), names


def _subset(images, fine, names, keep: list[int]) -> FewShotDataset:
    remap = torch.full((len(names),), -1, dtype=torch.int64)
    remap[keep] = torch.arange(len(keep))
    new = remap[fine]
    sel = new >= 0
    return FewShotDataset(images[sel].contiguous(), new[sel], [names[c] for c in keep])


def cifar_fs(root: str | Path, split: str) -> FewShotDataset:
    """CIFAR-FS ``split`` as ``(M, 3, 32, 32)`` uint8 images."""
    images, fine, _, names = _read(root)
    held = set(_CIFAR_FS_VAL) | set(_CIFAR_FS_TEST)
    if split == "train":
        keep = [i for i, n in enumerate(names) if n not in held]
    else:
        wanted = CIFAR_FS_SPLITS[split]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ValueError(
                f"CIFAR-100 meta in {root} lacks classes {unknown}; expected {_LAYOUT}"
            )
        keep = [names.index(n) for n in wanted]
    return _subset(images, fine, names, keep)


def fc100(root: str | Path, split: str) -> FewShotDataset:
    """FC100 ``split`` as ``(M, 3, 32, 32)`` uint8 images."""
    images, fine, coarse, names = _read(root)
    supers = set(FC100_SPLITS[split])
    keep = sorted(
        {int(f) for f, c in zip(fine.tolist(), coarse.tolist(), strict=True) if c in supers}
    )
    return _subset(images, fine, names, keep)
