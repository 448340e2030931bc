"""The one output format of the project's trainers.

Every trainer writes into its run folder (``--out``):

- ``config.json``: the run's settings (``asdict(config)``) and ``"eval_split"``, the images the
  ``val_*`` metrics are measured on: ``"val"`` (held out from the training data) or ``"test"``
  (the dataset's test split); written before the first epoch (:func:`write_config`);
- ``metrics.jsonl`` (the distillation engine: ``teacher_metrics.jsonl`` and
  ``student_metrics.jsonl``): one JSON object per epoch, or per validation of a trainer counted
  in meta-iterations, numbered from 1 (``"epoch"`` / ``"iteration"``); classification accuracy
  is ``"val_top1"`` in percent (:data:`ACCURACY`);

and its console script ends with one line on stdout (:func:`summary_line`): the best and the
last accuracy and where the weights are.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..logging import read_metrics

__all__ = ["ACCURACY", "EVAL_SPLITS", "print_summary", "summary_line", "write_config"]

#: The accuracy key of every trainer's metrics (percent, on the config's ``eval_split``).
ACCURACY = "val_top1"
#: What ``eval_split`` in ``config.json`` may say.
EVAL_SPLITS = ("val", "test")


def write_config(out: str | os.PathLike[str], settings: Mapping[str, Any], eval_split: str) -> Path:
    """Write ``<out>/config.json``: ``settings`` and ``eval_split`` (atomically)."""
    if eval_split not in EVAL_SPLITS:
        raise ValueError(f"eval_split must be one of {EVAL_SPLITS}, got {eval_split!r}")
    path = Path(out) / "config.json"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.json.")
    with os.fdopen(fd, "w") as f:
        json.dump({**settings, "eval_split": eval_split}, f, indent=2)
    os.replace(tmp, path)
    return path


def print_summary(line: str) -> None:
    """Print ``line`` on stdout from the main process only (``torchrun``'s rank 0, or a run
    without ``torchrun``); the process group is gone by the time a trainer returns."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)


def summary_line(
    prog: str,
    metrics: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    *,
    x_key: str = "epoch",
    key: str = ACCURACY,
) -> str:
    """``"<prog>: best val_top1 91.20 (epoch 28), last 91.05 (epoch 30); weights: <path>"``
    from the records of ``metrics`` (a ``metrics.jsonl``) that hold ``key``."""
    rows = [r for r in read_metrics(metrics) if isinstance(r.get(key), (int, float))]
    if not rows:
        return f"{prog}: no {key} recorded in {metrics}; weights: {weights}"
    best = max(rows, key=lambda r: r[key])
    last = rows[-1]
    return (
        f"{prog}: best {key} {best[key]:.2f} ({x_key} {best.get(x_key)}), "
        f"last {last[key]:.2f} ({x_key} {last.get(x_key)}); weights: {weights}"
    )
