"""A training run's output folder: what may be written into it, and what a resume must match.

Every trainer of the project follows the same rules:

- a fresh run refuses a non-empty ``--out`` unless ``--overwrite``, which deletes the run's own
  files (the list each trainer passes) and nothing else: not the user's other files or
  folders, not an input the command names (e.g. a teacher checkpoint kept in ``--out``);
- ``--resume`` needs a checkpoint in ``--out`` and refuses settings that differ from the
  checkpoint's unless ``--allow-changed`` names them; a setting the checkpoint's state is tied
  to (the model, the seed) cannot be named, and a named one applies from the resume on
  (:func:`load_optimizer_state` keeps the optimiser's settings of this run);
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
    "load_optimizer_state",
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
    run_files: Iterable[str],
    keep: Iterable[str | os.PathLike[str] | None] = (),
) -> Path:
    """Check (and create) a run's output folder by the rules above; returns it as a Path.

    Args:
        checkpoint: the file ``--resume`` continues from.
        run_files: every file or folder the trainer writes in ``out`` (names relative to it,
            checkpoints' previous generations included). ``overwrite`` deletes these (and the
            temporary files of their interrupted atomic writes) and nothing else; a folder
            holding none of them holds no previous run and is not replaced.
        keep: the run's input paths (``None`` and ``""`` are skipped): never deleted, even when
            one is a run file (a teacher checkpoint ``out/teacher.pt`` named as input), nor a
            run folder holding one; ``out`` holding only these counts as empty.

    Raises:
        ValueError: ``resume`` and ``overwrite`` together.
        FileNotFoundError: ``resume`` without a checkpoint (or its previous generation).
        FileExistsError: a fresh run into a non-empty folder, or ``overwrite`` of a folder
            that holds no previous run.
        NotADirectoryError: ``out`` is a file.
    """
    path = Path(out)
    run_files = tuple(run_files)
    kept = {Path(p).resolve() for p in keep if p}
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
    if path.is_dir() and any(p.resolve() not in kept for p in path.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"--out {path} is not empty; pass --resume to continue the run in it, "
                "--overwrite to replace the run's files in it, or choose another --out"
            )
        if not any((path / name).exists() for name in run_files):
            raise FileExistsError(
                f"--overwrite: {path} holds no previous run (none of {', '.join(run_files)}); "
                "refusing to write into it, choose another --out"
            )
        for name in run_files:
            target = path / name
            resolved = target.resolve()
            if any(k == resolved or resolved in k.parents for k in kept):
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            for tmp in target.parent.glob(f".{target.name}.*.tmp"):
                tmp.unlink()
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
    fixed: Iterable[str] = (),
) -> None:
    """Refuse a resume whose settings differ from the checkpoint's.

    Args:
        stored: the settings saved in the checkpoint (``asdict(config)``).
        current: the settings of this invocation.
        allow_changed: settings the user lets differ (``--allow-changed lr epochs``; dashes
            or underscores).
        always_allowed: settings that may always differ (e.g. ``progress``, ``device``).
        fixed: settings the checkpoint's state is tied to (the model, the seed of the restored
            RNG streams): ``allow_changed`` may not name them.

    Raises:
        ResumeSettingsError: naming each changed setting with both values, and the fix; or
            ``allow_changed`` naming a ``fixed`` setting.
        ValueError: ``allow_changed`` names unknown settings.
    """
    names = {name.replace("-", "_") for name in allow_changed}
    unknown = names - set(stored) - set(current)
    if unknown:
        raise ValueError(
            f"--allow-changed names unknown settings {sorted(unknown)}; "
            f"known: {', '.join(sorted(set(stored) | set(current)))}"
        )
    frozen = sorted(names & set(fixed))
    if frozen:
        raise ResumeSettingsError(
            f"--allow-changed {' '.join(frozen)}: the checkpoint's state is tied to "
            f"{', '.join(frozen)}, which cannot change on resume; start a new run (another --out)"
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
    fixed: Iterable[str] = (),
    metrics: str | os.PathLike[str] | None = None,
    metrics_key: str = "epoch",
    length_key: str = "epochs",
) -> dict[str, Any]:
    """Load a :func:`save_run_state` checkpoint to resume from; returns the state.

    Falls back to the previous generation (with a warning) when ``path`` is unreadable, refuses
    settings that differ from ``config`` (:func:`check_resume_settings`, with ``allow_changed``,
    ``always_allowed`` and ``fixed``) and a run length ``config[length_key]`` below the
    checkpoint's ``state[metrics_key]``, restores this rank's RNG states (rank 0's when the run
    had fewer ranks) and, on the main rank, drops the records of ``metrics`` (default: the
    ``metrics.jsonl`` beside ``path``) written after the checkpoint (``metrics_key`` greater
    than ``state[metrics_key]``).
    """
    path = Path(path)
    state = load_checkpoint(path, map_location="cpu", fallback=True)
    check_resume_settings(
        state["config"],
        config,
        allow_changed=allow_changed,
        always_allowed=always_allowed,
        fixed=fixed,
    )
    done, length = state[metrics_key], config[length_key]
    if done > length:
        option = "--" + length_key.replace("_", "-")
        raise ValueError(
            f"--resume: {path} is at {metrics_key} {done}, past {option} {length}; a run cannot "
            f"be shortened below its checkpoint, pass {option} {done} or more"
        )
    if "rng" not in state:
        raise ValueError(
            f"--resume: {path} holds no RNG states (a checkpoint of another version of the "
            "trainer); start the run again with --overwrite"
        )
    rng = state["rng"]
    set_rng_state(rng[ctx.rank] if ctx.rank < len(rng) else rng[0])
    if ctx.is_main:
        metrics = path.parent / "metrics.jsonl" if metrics is None else metrics
        truncate_metrics(metrics, metrics_key, state[metrics_key])
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a checkpoint's optimiser ``state`` into ``optimizer``, keeping its group settings.

    The moments and step counts are the checkpoint's; each param group's settings (``lr``,
    ``initial_lr``, ``weight_decay``, ``betas``, ...) stay those ``optimizer`` (and the scheduler
    built on it, which sets ``initial_lr``) was built with from this run's config, so a setting
    changed on resume applies. Set the groups' ``lr`` to the schedule's value at the resumed
    step afterwards.
    """
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, settings, strict=True):
        group.update(kept)
