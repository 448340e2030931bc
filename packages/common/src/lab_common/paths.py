"""Where the shared real datasets and the writable cache live (pure ``pathlib``, no torchvision)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "shared_datasets_root"]

DATASETS_ENV = "LAB_DATASETS"
CACHE_ENV = "LAB_CACHE"


def shared_datasets_root() -> Path:
    """The folder of the project's shared real datasets.

    ``$LAB_DATASETS`` when set; otherwise the first ``<dir>/../shared/datasets`` that exists
    for ``dir`` in the current directory, its ancestors and this file's ancestors.
    """
    env = os.environ.get(DATASETS_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${DATASETS_ENV}={env} is not a directory")
        return path
    tried: list[Path] = []
    for start in (Path.cwd().resolve(), Path(__file__).resolve().parent):
        for base in (start, *start.parents):
            candidate = base.parent / "shared" / "datasets"
            if candidate.is_dir():
                return candidate
            tried.append(candidate)
    raise FileNotFoundError(
        "shared datasets folder not found; set $LAB_DATASETS or place it at ../shared/datasets "
        f"beside the repository (tried {', '.join(map(str, dict.fromkeys(tried)))})"
    )


def cache_dir() -> Path:
    """Writable cache folder (``$LAB_CACHE``, else ``~/.cache/lab-common``), created if needed."""
    path = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "lab-common")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
