"""Throughput/latency measurement and benchmark tables shared by every package's benchmarks."""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Measurement",
    "machine_description",
    "markdown_table",
    "measure",
    "measure_interleaved",
    "write_benchmark",
]


@dataclass(frozen=True)
class Measurement:
    """Timings of ``repeats`` calls (seconds) and the peak memory they used (MiB)."""

    median_s: float
    mean_s: float
    min_s: float
    repeats: int
    peak_memory_mb: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _max_rss_bytes() -> int:
    """Lifetime peak resident set of this process (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _RssPeakSampler:
    """Samples the process RSS in a thread; ``peak - start`` approximates CPU working memory.

    A new lifetime peak (``ru_maxrss``) reached during the window also counts, so a spike that
    falls between two samples is still seen when it is the process's highest so far.
    """

    def __init__(self, interval_s: float = 0.002) -> None:
        self.interval_s = interval_s
        self.available = os.path.exists("/proc/self/statm")
        self.start = self.peak = _rss_bytes() if self.available else 0
        self._max_rss_before = _max_rss_bytes() if self.available else 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> _RssPeakSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, _rss_bytes())
            # a new lifetime peak reached between samples (e.g. while the GIL was held)
            max_rss = _max_rss_bytes()
            if max_rss > self._max_rss_before:
                self.peak = max(self.peak, max_rss)


def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any],
    *,
    warmup: int = 3,
    repeats: int = 10,
    device: torch.device | str | None = None,
) -> Measurement:
    """Time ``fn()``: ``warmup`` untimed calls, then the median of ``repeats`` timed calls.

    On CUDA the device is synchronised around each call and the peak is
    ``torch.cuda.max_memory_allocated``; on CPU the peak is the largest growth of the process's
    resident memory during a call (sampled every 2 ms).
    """
    return measure_interleaved({"fn": fn}, warmup=warmup, repeats=repeats, device=device)["fn"]


def measure_interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    warmup: int = 1,
    repeats: int = 5,
    device: torch.device | str | None = None,
) -> dict[str, Measurement]:
    """Time several ``fn()`` side by side: ``warmup`` calls each, then ``repeats`` rounds.

    Rounds alternate the order (A B, B A, ...), so drift in the machine's load hits every
    function alike; each gets the median of its calls. Peak memory is per call (CUDA:
    ``max_memory_allocated``; CPU: resident growth during the call, which allocator caches
    can hide — compare CPU memory in fresh processes).
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    dev = torch.device(device) if device is not None else None
    cuda = dev is not None and dev.type == "cuda"
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks = dict.fromkeys(names, 0.0)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            _synchronize(dev)
            if cuda:
                torch.cuda.reset_peak_memory_stats(dev)
            with _RssPeakSampler() as sampler:
                start = time.perf_counter()
                fns[name]()
                _synchronize(dev)
                times[name].append(time.perf_counter() - start)
            used = torch.cuda.max_memory_allocated(dev) if cuda else sampler.peak - sampler.start
            peaks[name] = max(peaks[name], used / 2**20)
    return {
        n: Measurement(
            median_s=statistics.median(times[n]),
            mean_s=statistics.fmean(times[n]),
            min_s=min(times[n]),
            repeats=repeats,
            peak_memory_mb=peaks[n],
        )
        for n in names
    }


def machine_description() -> str:
    """One line naming CPU, core count, GPU (if any) and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; Python {platform.python_version()}"
    )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Render dict rows as a Markdown table (columns default to the union of keys, in order)."""
    if not rows:
        raise ValueError("markdown_table needs at least one row")
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_benchmark(
    rows: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike[str],
    name: str,
    machine_note: bool = True,
    title: str | None = None,
) -> str:
    """Write ``<out_dir>/<name>.md`` (table) and ``<name>.json`` (rows + machine); return the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    md = markdown_table(rows)
    if title:
        md = f"### {title}\n\n{md}"
    if machine_note:
        md += f"\n\nMachine: {machine}\n"
    (out / f"{name}.md").write_text(md)
    payload = {"name": name, "machine": machine, "rows": list(rows)}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    return md
