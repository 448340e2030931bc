"""JSON-lines metrics logging, tqdm progress and training-curve plots."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tqdm.auto import tqdm

__all__ = ["MetricsLogger", "progress", "read_metrics", "plot_metrics"]

T = TypeVar("T")


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


class MetricsLogger:
    """Appends one JSON object per call to a ``.jsonl`` file (a no-op when not ``enabled``).

    Each record gets a ``time`` field (seconds since the logger was created) besides the
    given metrics; tensors and NumPy scalars are converted with ``.item()``.
    """

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._start = time.time()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **metrics: Any) -> dict[str, Any]:
        record = {k: _to_builtin(v) for k, v in metrics.items()}
        record["time"] = round(time.time() - self._start, 3)
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return record


def progress(iterable: Iterable[T], enabled: bool = True, **tqdm_kwargs: Any) -> Iterable[T]:
    """``tqdm(iterable)`` on the main process, the bare iterable elsewhere."""
    tqdm_kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not enabled, **tqdm_kwargs)


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSON-lines metrics file; a truncated last line (from a crash) is ignored."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"metrics file not found: {p}")
    records = []
    lines = p.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{p}:{i + 1} is not valid JSON: {err}") from err
    return records


def plot_metrics(
    jsonl_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    keys: Sequence[str] | None = None,
    x_key: str = "epoch",
) -> Path:
    """Plot numeric metrics of a JSON-lines file against ``x_key`` (one panel per metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(jsonl_path)
    if keys is None:
        keys = [
            k
            for k in dict.fromkeys(k for r in records for k in r)
            if k not in (x_key, "time", "step")
            and any(isinstance(r.get(k), (int, float)) for r in records)
        ]
    keys = [k for k in keys if any(k in r for r in records)]
    if not keys:
        raise ValueError(f"no numeric metrics to plot in {jsonl_path}")
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [
            (r.get(x_key, i), r[key])
            for i, r in enumerate(records)
            if isinstance(r.get(key), (int, float))
        ]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
