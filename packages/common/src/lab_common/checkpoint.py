"""Atomic checkpoint save and load, with one previous generation kept on request.

``save_checkpoint(state, "last.pt", keep_previous=True)`` first moves the current
``last.pt`` to ``last.prev.pt``; ``load_checkpoint("last.pt", fallback=True)`` falls back to
``last.prev.pt`` with a warning when the newest file is unreadable (truncated or corrupted at
rest), so one bad file never loses the run.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "load_checkpoint", "previous_generation", "save_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not a torch checkpoint."""


def previous_generation(path: str | os.PathLike[str]) -> Path:
    """Where the generation before ``path`` is kept: ``last.pt`` -> ``last.prev.pt``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.prev{p.suffix}")


def save_checkpoint(
    state: dict[str, Any], path: str | os.PathLike[str], *, keep_previous: bool = False
) -> Path:
    """Save ``state`` to ``path`` atomically.

    The state is written to a temporary file in the same folder, flushed to disk, then
    moved over ``path`` with ``os.replace``: a crash at any point leaves either the old
    checkpoint or the new one, never a partial file. With ``keep_previous`` the file being
    replaced is first moved to :func:`previous_generation` (``last.prev.pt``).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and target.is_file():
            os.replace(target, previous_generation(target))
        os.replace(tmp_name, target)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return target


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    *,
    fallback: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (or any ``torch.save`` dict).

    With ``fallback``, an unreadable (or missing) ``path`` whose previous generation exists
    loads that one instead, with a ``UserWarning`` naming both files.

    Raises:
        CheckpointError: the file does not exist, is truncated/corrupt, or holds no dict
            (and, with ``fallback``, neither does its previous generation).
    """
    try:
        return _load(Path(path), map_location)
    except CheckpointError as err:
        previous = previous_generation(path)
        if not (fallback and previous.is_file()):
            raise
        state = _load(previous, map_location)
        warnings.warn(f"{err}; resuming from the previous generation {previous}", stacklevel=2)
        return state


def _load(p: Path, map_location: str | torch.device) -> dict[str, Any]:
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p} (check the path or drop --resume)")
    try:
        state = torch.load(p, map_location=map_location, weights_only=False)
    except (
        RuntimeError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        ValueError,
    ) as err:
        raise CheckpointError(
            f"checkpoint {p} is corrupt or not a torch checkpoint ({type(err).__name__}: {err}); "
            "delete it or point to another file"
        ) from err
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {p} holds a {type(state).__name__}, expected a dict")
    return state
