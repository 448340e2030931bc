"""JSON-lines metrics logging, progress (tqdm on a terminal, lines in a log) and curve plots."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

__all__ = ["LineProgress", "MetricsLogger", "progress", "read_metrics", "plot_metrics"]

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


class LineProgress(Iterable[T]):
    """Progress for logs and CI: one line every ``interval`` seconds and one at the end.

    Stands in for a tqdm bar where stderr is not a terminal (no carriage returns); supports
    ``set_postfix`` like tqdm, whose values are appended to the next line.
    """

    def __init__(
        self,
        iterable: Iterable[T],
        *,
        desc: str | None = None,
        total: int | None = None,
        interval: float = 30.0,
        file: TextIO | None = None,
    ) -> None:
        self.iterable = iterable
        self.desc = desc or "progress"
        self.total = total if total is not None else _length(iterable)
        self.interval = interval
        self.file = file if file is not None else sys.stderr
        self._postfix = ""

    def set_postfix(self, **values: Any) -> None:
        self._postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, done: int, elapsed: float) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        rate = done / elapsed if elapsed > 0 else 0.0
        extra = f" {self._postfix}" if self._postfix else ""
        print(f"{self.desc}: {done}{of} [{elapsed:.0f}s, {rate:.2f} it/s]{extra}", file=self.file)
        self.file.flush()

    def __iter__(self) -> Iterator[T]:
        start = last = time.monotonic()
        done = 0
        for item in self.iterable:
            yield item
            done += 1
            now = time.monotonic()
            if now - last >= self.interval:
                self._line(done, now - start)
                last = now
        self._line(done, time.monotonic() - start)


def _length(iterable: Iterable[Any]) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


class _Quiet(Iterable[T]):
    """The bare iterable, with tqdm's ``set_postfix`` as a no-op."""

    def __init__(self, iterable: Iterable[T]) -> None:
        self.iterable = iterable

    def set_postfix(self, **values: Any) -> None:
        pass

    def __iter__(self) -> Iterator[T]:
        return iter(self.iterable)


def progress(
    iterable: Iterable[T],
    enabled: bool = True,
    *,
    interval: float = 30.0,
    file: TextIO | None = None,
    **tqdm_kwargs: Any,
) -> Iterable[T]:
    """Progress over ``iterable``: a tqdm bar on a terminal, :class:`LineProgress` in a log.

    ``enabled=False`` (``--no-progress``, or a non-main process) shows nothing. All three
    kinds support ``set_postfix``; ``desc``, ``total`` and other tqdm options are passed on.
    Without tqdm installed a terminal gets progress lines too.
    """
    stream = file if file is not None else sys.stderr
    if not enabled:
        return _Quiet(iterable)
    if stream.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            tqdm_kwargs.setdefault("dynamic_ncols", True)
            return tqdm(iterable, file=stream, **tqdm_kwargs)
    return LineProgress(
        iterable,
        desc=tqdm_kwargs.get("desc"),
        total=tqdm_kwargs.get("total"),
        interval=interval,
        file=stream,
    )


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
    from matplotlib.figure import Figure

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
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):  # the grid may have spare axes
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
    return out
