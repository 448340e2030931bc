"""A training run's output folder: what may be written into it, and what a resume must match.

Every trainer of the project follows the same rules:

- a fresh run refuses a non-empty ``--out`` unless ``--overwrite`` (which replaces a folder
  that holds a previous run, and nothing else);
- ``--resume`` needs a checkpoint in ``--out`` and refuses settings that differ from the
  checkpoint's unless ``--allow-changed`` names them;
- on resume, metrics records written after the checkpoint (by a run that was killed) are
  dropped, so ``metrics.jsonl`` reads as one uninterrupted run.

:func:`save_run_state` and :func:`resume_run_state` are the checkpoint side of those rules for
an epoch-based trainer: every rank's RNG states saved with the trainer's state, and restored,
checked and truncated in one call.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, previous_generation, save_checkpoint
from ..distributed import DistContext
from ..seeding import get_rng_state, set_rng_state

__all__ = [
    "check_resume_settings",
    "prepare_run_dir",
    "resume_run_state",
    "save_run_state",
    "truncate_metrics",
]

_MISSING = object()


def prepare_run_dir(
    out: str | os.PathLike[str],
    *,
    resume: bool,
    overwrite: bool = False,
    checkpoint: str = "last.pt",
    markers: Iterable[str] = ("config.json", "metrics.jsonl"),
) -> Path:
    """Check (and create) a run's output folder by the rules above; returns it as a Path.

    Args:
        checkpoint: the file ``--resume`` continues from.
        markers: other files whose presence shows a folder holds a previous run (only such
            a folder may be replaced by ``overwrite``); the default covers a run killed before
            its first checkpoint, which has written only its ``config.json``.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        FileNotFoundError: ``resume`` without a checkpoint (or its previous generation).
        FileExistsError: a fresh run into a non-empty folder, or ``overwrite`` of a folder
            that holds no previous run.
        NotADirectoryError: ``out`` is a file.
    """
    path = Path(out)
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other: pass one of them")
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out {path} is a file; choose a folder")
    if resume:
        ckpt = path / checkpoint
        if not (ckpt.is_file() or previous_generation(ckpt).is_file()):
            raise FileNotFoundError(
                f"--resume: no {checkpoint} in {path}; start the run without --resume"
            )
        return path
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"--out {path} is not empty; pass --resume to continue the run in it, "
                "--overwrite to replace it, or choose another --out"
            )
        if not any((path / name).exists() for name in (checkpoint, *markers)):
            raise FileExistsError(
                f"--overwrite: {path} holds no previous run (no {checkpoint} or "
                f"{', '.join(markers)}); refusing to delete it, choose another --out"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


class ResumeSettingsError(ValueError):
    """A resume whose settings differ from the checkpoint's (see :func:`check_resume_settings`)."""


def check_resume_settings(
    stored: Mapping[str, Any],
    current: Mapping[str, Any],
    *,
    allow_changed: Iterable[str] = (),
    always_allowed: Iterable[str] = (),
) -> None:
    """Refuse a resume whose settings differ from the checkpoint's.

    Args:
        stored: the settings saved in the checkpoint (``asdict(config)``).
        current: the settings of this invocation.
        allow_changed: settings the user lets differ (``--allow-changed lr epochs``; dashes
            or underscores).
        always_allowed: settings that may always differ (e.g. ``progress``, ``device``).

    Raises:
        ResumeSettingsError: naming each changed setting with both values, and the fix.
        ValueError: ``allow_changed`` names unknown settings.
    """
    names = {name.replace("-", "_") for name in allow_changed}
    unknown = names - set(stored) - set(current)
    if unknown:
        raise ValueError(
            f"--allow-changed names unknown settings {sorted(unknown)}; "
            f"known: {', '.join(sorted(set(stored) | set(current)))}"
        )
    allowed = names | set(always_allowed)
    changed = [
        f"{key}: {stored.get(key, '(unset)')!r} -> {current.get(key, '(unset)')!r}"
        for key in sorted(set(stored) | set(current))
        if key not in allowed and stored.get(key, _MISSING) != current.get(key, _MISSING)
    ]
    if changed:
        keys = " ".join(c.split(":")[0] for c in changed)
        raise ResumeSettingsError(
            "--resume with settings that differ from the checkpoint's: "
            f"{'; '.join(changed)}. Rerun with the checkpoint's settings, or pass "
            f"--allow-changed {keys}"
        )


def truncate_metrics(path: str | os.PathLike[str], key: str, last: float) -> int:
    """Drop the records of a JSON-lines file whose ``key`` is past ``last``; returns how many.

    Used on resume: records written after the checkpoint the run continues from would
    otherwise appear twice. Records without ``key`` are kept; a torn line (a crash
    mid-write) is removed. The file is rewritten atomically.
    """
    p = Path(path)
    if not p.is_file():
        return 0
    kept, dropped = [], 0
    for line in p.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record.get(key), (int, float)) and record[key] > last:
            dropped += 1
            continue
        kept.append(line)
    if dropped:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "w") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(tmp, p)
    return dropped


def save_run_state(state: dict[str, Any], path: str | os.PathLike[str], ctx: DistContext) -> None:
    """Save ``state`` plus every rank's RNG states (``state["rng"]``, a list by rank) to ``path``.

    Call it on every rank (the RNG states are gathered); the main rank writes, atomically,
    keeping the previous generation. ``state`` needs a ``"config"`` (a dict) for
    :func:`resume_run_state`.
    """
    rng = [get_rng_state()]
    if ctx.distributed:
        rng = [None] * ctx.world_size
        torch.distributed.all_gather_object(rng, get_rng_state())
    if ctx.is_main:
        save_checkpoint(state | {"rng": rng}, path, keep_previous=True)


def resume_run_state(
    path: str | os.PathLike[str],
    config: Mapping[str, Any],
    ctx: DistContext,
    *,
    allow_changed: Iterable[str] = (),
    always_allowed: Iterable[str] = (),
    metrics_key: str = "epoch",
) -> dict[str, Any]:
    """Load a :func:`save_run_state` checkpoint to resume from; returns the state.

    Falls back to the previous generation (with a warning) when ``path`` is unreadable, refuses
    settings that differ from ``config`` (:func:`check_resume_settings`), restores this rank's
    RNG states (rank 0's when the run had fewer ranks) and, on the main rank, drops the
    ``metrics.jsonl`` records beside ``path`` written after the checkpoint (``metrics_key``
    greater than ``state[metrics_key]``).
    """
    path = Path(path)
    state = load_checkpoint(path, map_location="cpu", fallback=True)
    check_resume_settings(
        state["config"], config, allow_changed=allow_changed, always_allowed=always_allowed
    )
    rng = state["rng"]
    set_rng_state(rng[ctx.rank] if ctx.rank < len(rng) else rng[0])
    if ctx.is_main:
        truncate_metrics(path.parent / "metrics.jsonl", metrics_key, state[metrics_key])
    return state
