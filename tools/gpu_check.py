"""The GPU check: CUDA tests, trainer smoke runs and the GPU benchmarks, one command.

    bash tools/gpu_check.sh              # on a CUDA machine: within 405 s (--time-limit + 30)
    bash tools/gpu_check.sh --dry-run    # anywhere, on CPU: the same code paths once, tiny sizes
    bash tools/gpu_check.sh --only lavit kd

Sections (``SECTIONS``), each with its own time budget inside the run's limit (``--time-limit``);
a failing section does not stop the others, and the exit status is 1 when any failed.

Optional dependencies (``pycocotools``, ``higher``) may be absent: tests skipped for a missing
one (``lab_common.testing.require_optional``) and the MAML rows without ``higher`` are noted, not
failed, unless the run was told to expect the module (``--expect``; ``gpu_check.sh`` expects
every wheel it installs from ``.whl/``).

``tests``
    ``pytest -m cuda`` in every package folder (a dry run: ``--collect-only``, > 0 per package).
``trainers``
    a few ``--amp`` steps of each trainer on tiny synthetic data (random-image folders); a dry
    run checks that every option of those commands parses (``--help``).
``lavit``
    LaViT vs PVTv2 inference throughput at 224x224, bf16 autocast, batch 256 and 64, eager and
    ``torch.compile``, each model in the faster memory format; the backbones (per-stage maps) at
    512x512 and 800x1216; peak memory; the lavit / pvt_v2 ratios against the targets.
``maml``
    gp_maml's MAML vs ``higher`` (when importable), loop vs vmap, first and second order, meta-batch
    4 and 32; GP-MAML vs MAML per task (tasks and baseline from ``gp_maml.reference``, as
    gp-maml's ``bench_speed.py``).
``kd``
    CLKD and TRG training-step time vs KD, ``cifar_resnet32x4 -> cifar_resnet8x4``, batch 64
    and 256 (the steps of the clkd and trg-kd ``bench_overhead.py``: SGD, one fixed batch).

Timing: CUDA events, warm-up first, rows interleaved round-robin over the repeats, medians.
"peak MiB": ``torch.cuda.max_memory_allocated`` during one call minus what was allocated before
it (the call's activations and workspace). Everything goes to
``<out>/gpu_check/`` (``gpu_check.log``, ``summary.json``, ``summary.md``), rewritten after every
row, so a run stopped from outside keeps what it measured. A dry run (no GPU needed, CPU, under
a minute) writes the same files with ``"dry_run": true``; its numbers are no measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import runpy
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import torch
from monorepo import PACKAGES, ROOT, package_dir

from lab_common import machine_description, markdown_table
from lab_common.testing import OPTIONAL_SKIP_PREFIX

FOLDER = "gpu_check"
LOG_NAME = "gpu_check.log"
#: seconds a section may run past its budget before it is interrupted (its budget is the soft
#: deadline: sections skip their remaining, lower-priority work once it has passed)
HARD_GRACE_S = 30.0
#: seconds a run may take (``--time-limit``): no section's soft deadline lies past it, and none
#: runs past it + ``HARD_GRACE_S``. With Python's start and the wheels' install the command
#: ends within 420 s of the device tool's 600-s call (the README's one command).
RUN_LIMIT_S = 375.0
#: optional modules the check reports (versions in the summary; see ``--expect``)
OPTIONAL_MODULES = ("pycocotools", "higher")
#: characters of a child process's output copied into the combined log
OUTPUT_TAIL = 20_000


# -- timing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Repeats:
    """``warmup`` untimed calls per row, then ``repeats`` round-robin rounds of ``iters`` calls."""

    warmup: int
    repeats: int
    iters: int = 1


DRY_REPEATS = Repeats(warmup=1, repeats=1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed_ms(fn: Callable[[], object], device: torch.device, iters: int = 1) -> float:
    """Milliseconds per call of ``iters`` back-to-back calls (CUDA events on a GPU)."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return 1e3 * (time.perf_counter() - t0) / iters


def interleaved_ms(
    fns: dict[str, Callable[[], object]], device: torch.device, plan: Repeats
) -> dict[str, float]:
    """Median milliseconds per call of each function, timed round-robin after a warm-up."""
    for fn in fns.values():
        for _ in range(plan.warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(plan.repeats):
        for name, fn in fns.items():
            times[name].append(elapsed_ms(fn, device, plan.iters))
    return {name: statistics.median(v) for name, v in times.items()}


def peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """MiB one call adds at its peak; None off CUDA.

    ``torch.cuda.max_memory_allocated`` during the call minus the memory allocated before it:
    activations and workspace, without the weights and inputs already there.
    """
    if device.type != "cuda":
        return None
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 1)


def bf16_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; off on CPU (a dry run), where bf16 matmuls are slow emulation."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# -- the run's record ------------------------------------------------------------------------


class Log:
    """Lines to a terminal stream and to the combined log file (thread-safe)."""

    def __init__(self, path: Path, stream: TextIO) -> None:
        self._file = path.open("a", encoding="utf-8")
        self._stream = stream  # held, so redirect_stdout (trainer --help) does not capture it
        self._lock = threading.Lock()

    def __call__(self, text: str = "") -> None:
        with self._lock:
            for out in (self._stream, self._file):
                out.write(text + "\n")
                out.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class SectionResult:
    """What one section reported: status, time, notes and named tables of rows."""

    title: str
    budget_s: float
    status: str = "pending"
    seconds: float = 0.0
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class Summary:
    """``summary.json`` and ``summary.md`` of a run, rewritten whenever something is added."""

    def __init__(
        self,
        folder: Path,
        sections: Sequence[Section],
        dry_run: bool,
        device: str,
        expect: Sequence[str] = (),
    ):
        self.folder = folder
        self.dry_run = dry_run
        self.device = device
        self.expected = list(expect)
        self.started = time.monotonic()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.results = {s.name: SectionResult(s.title, s.budget_s) for s in sections}
        self.machine = machine_description()
        self.versions = _versions([*OPTIONAL_MODULES, *expect])
        self.lock = threading.RLock()

    def status(self) -> str:
        states = {r.status for r in self.results.values()}
        if states & {"pending", "running"}:
            return "running"
        return "failed" if "failed" in states else "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "check": "gpu_check",
            "dry_run": self.dry_run,
            "status": self.status(),
            "device": self.device,
            "machine": self.machine,
            "versions": self.versions,
            "expected": self.expected,
            "started": self.started_at,
            "seconds": round(time.monotonic() - self.started, 1),
            "sections": {name: vars(r) for name, r in self.results.items()},
        }

    def write(self) -> None:
        with self.lock:
            data = self.as_dict()
            text = json.dumps(data, indent=2, default=str)
            (self.folder / "summary.json").write_text(text + "\n", encoding="utf-8")
            (self.folder / "summary.md").write_text(_markdown(data), encoding="utf-8")


def _versions(optional: Sequence[str]) -> dict[str, str | None]:
    """Python, torch, CUDA, torchvision, timm, the GPU and each ``optional`` module (None: absent)."""
    import timm
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    } | {name: _module_version(name) for name in dict.fromkeys(optional)}


def _module_version(name: str) -> str | None:
    """``name``'s ``__version__``, else its distribution's; None when it does not import."""
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    version = getattr(module, "__version__", None)
    if version is None:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            version = importlib.metadata.version(name)
    return str(version or "installed")


def _markdown(data: dict[str, Any]) -> str:
    lines = ["# GPU check", ""]
    if data["dry_run"]:
        lines += [
            "**Dry run** on CPU: every section ran once at its smallest sizes; no figure "
            "below is a measurement.",
            "",
        ]
    lines += [
        f"Status **{data['status']}** after {data['seconds']:.0f} s, started {data['started']}; "
        f"device `{data['device']}`.",
        "",
        f"Machine: {data['machine']}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in data["versions"].items()),
        "",
        "Expected optional modules: " + (", ".join(data["expected"]) or "none"),
        "",
    ]

    def cells(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: "-" if v is None else v for k, v in row.items()} for row in rows]

    overview = [
        {
            "section": name,
            "status": r["status"],
            "seconds": r["seconds"],
            "budget (s)": r["budget_s"],
            "error": r["error"] or "",
        }
        for name, r in data["sections"].items()
    ]
    lines += [markdown_table(overview), ""]
    for name, r in data["sections"].items():
        lines += [f"## {name}: {r['title']}", ""]
        if r["error"]:
            lines += [f"**Failed:** {r['error']}", ""]
        lines += [f"- {note}" for note in r["notes"]]
        if r["notes"]:
            lines.append("")
        for table, rows in r["tables"].items():
            lines += [f"### {table}", "", markdown_table(cells(rows)), ""]
    return "\n".join(lines)


@dataclass
class Context:
    """What a section runs with, and how it reports (``add``, ``note``, ``fail``)."""

    device: torch.device
    dry_run: bool
    work: Path
    log: Log
    summary: Summary
    result: SectionResult
    #: soft deadline (``time.monotonic()``): the section's budget, at most the run's limit
    deadline: float
    #: optional modules that must import (``--expect``): their absence is a failure
    expect: tuple[str, ...] = ()
    failures: list[str] = field(default_factory=list)

    def add(self, table: str, row: dict[str, Any]) -> None:
        with self.summary.lock:
            self.result.tables.setdefault(table, []).append(row)
            self.summary.write()
        self.log(f"  [{table}] {json.dumps(row, default=str)}")

    def note(self, text: str) -> None:
        with self.summary.lock:
            self.result.notes.append(text)
            self.summary.write()
        self.log(f"  note: {text}")

    def fail(self, message: str) -> None:
        """Record a failure and carry on; the section ends as failed."""
        self.failures.append(message)
        self.log(f"  FAILED: {message}")

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def over_budget(self, what: str) -> bool:
        """True (and a note) when the section's budget is spent, so ``what`` is skipped."""
        if self.time_left() > 0:
            return False
        self.note(f"skipped {what}: the section's time budget is spent")
        return True


@dataclass(frozen=True)
class Section:
    """One part of the check: ``run(ctx)`` within ``budget_s`` seconds on the GPU."""

    name: str
    title: str
    budget_s: float
    run: Callable[[Context], None]
    #: runs child processes only, so a dry run overlaps it with the in-process sections
    children_only: bool = False


class SectionTimeout(BaseException):
    """A section ran past its hard limit (budget + ``HARD_GRACE_S``).

    A ``BaseException``, so the sections' own ``except Exception`` (rows recorded as errors) do
    not swallow it.
    """


@contextlib.contextmanager
def hard_limit(seconds: float) -> Iterator[None]:
    """Raise ``SectionTimeout`` in the block after ``seconds`` (main thread only; else no limit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise SectionTimeout(f"interrupted after its hard limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_section(section: Section, ctx: Context) -> None:
    """Run one section, catching its failure into its result (status ``ok`` or ``failed``)."""
    result = ctx.result
    with ctx.summary.lock:
        result.status = "running"
        ctx.summary.write()
    ctx.log(f"== {section.name}: {section.title} (budget {section.budget_s:.0f} s)")
    start = time.monotonic()
    try:
        if not ctx.dry_run and ctx.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch.cuda.is_available() is False; use --dry-run without a GPU")
        if ctx.time_left() <= 0:
            raise RuntimeError("not run: the run's time limit (--time-limit) is spent")
        with hard_limit(ctx.time_left() + HARD_GRACE_S):
            section.run(ctx)
        if ctx.failures:
            raise RuntimeError("; ".join(ctx.failures))
        status, error = "ok", None
    except (Exception, SectionTimeout) as err:
        ctx.log(traceback.format_exc().rstrip())
        status, error = "failed", f"{type(err).__name__}: {err}"
    finally:
        if ctx.device.type == "cuda" and torch.cuda.is_available():
            gc.collect()
            torch.cuda.empty_cache()
    with ctx.summary.lock:
        result.status, result.error = status, error
        result.seconds = round(time.monotonic() - start, 1)
        ctx.summary.write()
    ctx.log(
        f"== {section.name}: {status} in {result.seconds:.0f} s" + (f" ({error})" if error else "")
    )


def run_check(
    sections: Sequence[Section],
    out: str | os.PathLike[str],
    *,
    dry_run: bool,
    device: str = "cuda",
    stream: TextIO | None = None,
    expect: Sequence[str] = (),
    limit_s: float | None = None,
) -> int:
    """Run ``sections`` and write ``<out>/gpu_check/``; 0 when every section is ok, else 1.

    ``expect``: optional modules that must import (see ``--expect``). ``limit_s``: the run's
    time limit (None: each section has its own budget only); a section whose turn comes after
    it fails unrun.
    """
    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    dev = torch.device("cpu" if dry_run else device)
    log = Log(folder / LOG_NAME, stream or sys.stdout)
    summary = Summary(folder, sections, dry_run, str(dev), expect)
    summary.write()
    run_end = summary.started + (math.inf if limit_s is None else limit_s)
    log(f"gpu_check: {'dry run on CPU' if dry_run else dev}; {summary.machine}")
    log(f"gpu_check: versions {json.dumps(summary.versions)}; expected {summary.expected}")
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:

            def context(section: Section) -> Context:
                work = Path(tmp) / section.name
                work.mkdir()
                deadline = min(time.monotonic() + section.budget_s, run_end)
                result = summary.results[section.name]
                return Context(
                    dev, dry_run, work, log, summary, result, deadline, expect=tuple(expect)
                )

            overlapped = [s for s in sections if dry_run and s.children_only]
            with ThreadPoolExecutor(max_workers=max(len(overlapped), 1)) as pool:
                futures = [pool.submit(run_section, s, context(s)) for s in overlapped]
                for section in sections:
                    if section not in overlapped:
                        run_section(section, context(section))
                for future in futures:
                    future.result()
        summary.write()
        status = summary.status()
        log(
            f"gpu_check: {status} in {time.monotonic() - summary.started:.0f} s; "
            f"summary in {folder / 'summary.md'}"
        )
        return 0 if status == "ok" else 1
    finally:
        log.close()


# -- child processes -------------------------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """A child process's exit status (None: killed at the time limit), output and duration."""

    returncode: int | None
    output: str
    seconds: float


def run_parallel(
    jobs: dict[str, tuple[list[str], Path]], timeout: float, env: dict[str, str], work: Path
) -> dict[str, Finished]:
    """Run every ``name: (argv, cwd)`` at once; each is killed with its children at ``timeout``."""
    procs, files, starts = {}, {}, {}
    try:
        for name, (argv, cwd) in jobs.items():
            files[name] = (work / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.out").open("w+")
            starts[name] = time.monotonic()
            procs[name] = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdout=files[name],
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        ended: dict[str, float] = {}
        while len(ended) < len(procs) and time.monotonic() < deadline:
            for name, proc in procs.items():
                if name not in ended and proc.poll() is not None:
                    ended[name] = time.monotonic()
            time.sleep(0.2)
        done = {}
        for name, proc in procs.items():
            if name not in ended:  # killed below; returncode None
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            files[name].seek(0)
            seconds = ended.get(name, time.monotonic()) - starts[name]
            rc = proc.returncode if name in ended else None
            done[name] = Finished(rc, files[name].read(), round(seconds, 1))
        return done
    finally:  # also on SectionTimeout: no child outlives the section
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for f in files.values():
            f.close()


def _log_output(ctx: Context, name: str, output: str) -> None:
    tail = output[-OUTPUT_TAIL:]
    ctx.log(f"--- {name} output{' (tail)' if len(output) > len(tail) else ''}:")
    ctx.log(tail.rstrip())
    ctx.log(f"--- end of {name}")


def child_env(ctx: Context) -> dict[str, str]:
    """This process's environment, with caches and plots kept inside the section's folder."""
    return {**os.environ, "LAB_CACHE": str(ctx.work / "cache"), "MPLBACKEND": "Agg"}


# -- section: tests --------------------------------------------------------------------------

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")
_COLLECTED = re.compile(r"(\d+)(?:/(\d+))? tests? collected")
#: a line of ``pytest -rs``: ``SKIPPED [2] tests/test_x.py:12: <reason>``
_SKIPPED = re.compile(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", re.MULTILINE)
#: a skip for a missing optional module (``lab_common.testing.require_optional``)
_OPTIONAL_SKIP = re.compile(re.escape(OPTIONAL_SKIP_PREFIX) + r" ([\w.]+)")


def optional_skips(output: str) -> dict[str, int]:
    """``{module: tests}`` skipped for a missing optional module, read from ``pytest -rs``."""
    missing: dict[str, int] = {}
    for count, reason in _SKIPPED.findall(output):
        match = _OPTIONAL_SKIP.match(reason)
        if match:
            missing[match.group(1)] = missing.get(match.group(1), 0) + int(count)
    return missing


def _summary_line(output: str) -> str:
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    return lines[-1].strip("= ") if lines else "(no output)"


def check_expected(ctx: Context, modules: Sequence[str]) -> list[str]:
    """The ``modules`` that do not import; each expected one (``--expect``) is a failure."""
    missing = [m for m in modules if _module_version(m) is None]
    for name in missing:
        if name in ctx.expect:
            ctx.fail(f"{name} was expected (--expect) but does not import")
    return missing


def tests_section(ctx: Context) -> None:
    """``pytest -m cuda`` in each package folder (collect-only in a dry run), all at once.

    A CUDA test skipped on the GPU fails the section (CUDA was not usable), unless it was
    skipped for a missing optional module that the run does not expect.
    """
    check_expected(ctx, ctx.expect)
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda"]
    extra = ["--collect-only"] if ctx.dry_run else ["-rs"]
    jobs = {folder: ([*base, *extra, "tests"], package_dir(folder)) for folder in PACKAGES}
    finished = run_parallel(jobs, max(ctx.time_left(), 1.0), child_env(ctx), ctx.work)
    for folder, fin in finished.items():
        _log_output(ctx, f"pytest {folder}", fin.output)
        line = _summary_line(fin.output)
        ctx.log(f"  pytest {folder}: {line}")
        row: dict[str, Any] = {"package": folder, "exit": fin.returncode, "seconds": fin.seconds}
        if ctx.dry_run:
            match = _COLLECTED.search(fin.output)
            collected = int(match.group(1)) if match else 0
            row |= {
                "cuda tests collected": collected,
                "of": int(match.group(2) or match.group(1)) if match else 0,
            }
            ok = fin.returncode == 0 and collected > 0
        else:
            counts = {kind.rstrip("s"): int(n) for n, kind in _COUNT.findall(line)}
            row |= {k: counts.get(k, 0) for k in ("passed", "failed", "skipped", "error")}
            missing = optional_skips(fin.output)
            allowed = {m: n for m, n in missing.items() if m not in ctx.expect}
            row["skipped: optional module missing"] = (
                ", ".join(f"{m} ({n})" for m, n in missing.items()) or "-"
            )
            if allowed:
                ctx.note(
                    f"{folder}: tests skipped for missing optional modules (not expected): "
                    + ", ".join(f"{m} ({n} tests)" for m, n in allowed.items())
                )
            # any other skipped CUDA test on the GPU machine means CUDA was not usable there
            unexpected = row["skipped"] - sum(allowed.values())
            ok = fin.returncode == 0 and row["passed"] > 0 and unexpected == 0
        row |= {"pytest summary": line, "status": "ok" if ok else "FAILED"}
        ctx.add("pytest -m cuda", row)
        if not ok:
            timed_out = " (killed at the time budget)" if fin.returncode is None else ""
            ctx.fail(f"{folder}: {line}{timed_out}")


# -- section: trainers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Smoke:
    """A trainer's smoke run: ``python -m <module> <args>``.

    ``args`` is split at whitespace, then ``{images}`` (image folder with ``train/`` and
    ``val/``), ``{omniglot}`` (Omniglot layout), ``{out}``, ``{device}`` and ``{lavit_32px}``
    (LaViT model kwargs for 32x32 inputs) are filled in.
    """

    name: str
    module: str
    args: str


#: lavit_tiny's preset layout (7x7 windows, sr_ratios 1) shrunk for 32x32 inputs: grids 16/8/4/2
LAVIT_32PX = json.dumps(
    {
        "depths": [1, 1, 2, 1],
        "la_depths": [0, 0, 1, 0],
        "embed_dims": [16, 32, 48, 64],
        "num_heads": [1, 2, 2, 4],
        "patch_size": 2,
    }
)
_RUN = " --out {out} --device {device} --amp --no-progress"
_DISTILL = (
    " --dataset {images} --image-size 32 --teacher cifar_resnet8 --student cifar_resnet8"
    " --epochs 1 --teacher-epochs 1 --batch-size 8 --workers 0" + _RUN
)

#: The smoke runs, in the "One house" option dialect: the one place to adjust them.
SMOKE = (
    Smoke(
        "lavit-train",
        "lavit.train",
        "--dataset {images} --model lavit_tiny --model-kwargs {lavit_32px} --img-size 32"
        " --epochs 1 --warmup-epochs 0 --batch-size 8 --workers 0" + _RUN,
    ),
    Smoke("clkd-train", "clkd.train", "--method clkd" + _DISTILL),
    Smoke("trg-kd-train", "trg_kd.train", "--method trg" + _DISTILL),
    Smoke(
        "gp-maml-train",
        "gp_maml.train",
        "--method gp-maml --dataset omniglot --data-root {omniglot} --iterations 3"
        " --batch-size 2 --val-every 0 --log-every 1" + _RUN,
    ),
)
#: Flags a trainer may not have: its smoke run goes without (and the summary says so).
OPTIONAL_FLAGS = ("--amp",)

_OPTION = re.compile(r"--[A-Za-z0-9][\w-]*")


def listed_options(help_text: str) -> set[str]:
    """The ``--options`` an argparse help text offers (usage and option lines, not prose)."""
    options: set[str] = set()
    usage = True
    for line in help_text.splitlines():
        stripped = line.strip()
        if not stripped:
            usage = False
            continue
        if usage or stripped.startswith("-"):
            invocation = stripped if usage else re.split(r"\s{2,}", stripped)[0]
            options.update(_OPTION.findall(invocation))
    return options


def trainer_options(module: str) -> set[str]:
    """The options of ``python -m <module> --help``, run in this process (no torch re-import)."""
    argv, buffer = sys.argv, io.StringIO()
    sys.argv = [module, "--help"]
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_module(module, run_name="__main__")
    except SystemExit as done:
        if done.code not in (0, None):
            raise RuntimeError(f"python -m {module} --help exited with {done.code}") from None
    else:
        raise RuntimeError(f"python -m {module} --help did not exit (no argparse main?)")
    finally:
        sys.argv = argv
    return listed_options(buffer.getvalue())


def resolve_options(args: Sequence[str], accepted: set[str]) -> tuple[list[str], list[str]]:
    """``args`` without the ``OPTIONAL_FLAGS`` the trainer lacks (gp-maml-train has no ``--amp``).

    Returns the arguments and one note per dropped flag. Raises ``ValueError`` for any other
    option the trainer does not accept.
    """
    out, notes = [], []
    for arg in args:
        if not arg.startswith("--") or arg in accepted:
            out.append(arg)
        elif arg in OPTIONAL_FLAGS:
            notes.append(f"no {arg}: runs without it")
        else:
            raise ValueError(f"the trainer accepts no {arg}")
    return out, notes


def write_image_folder(root: Path, classes: int = 5, train: int = 8, val: int = 4) -> Path:
    """``root/{train,val}/<class>/<i>.png``: random 32x32 RGB images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def write_omniglot(root: Path, alphabets: int = 2, characters: int = 5, drawers: int = 20) -> Path:
    """Omniglot's layout ``root/<alphabet>/<character>/<id>_<drawer>.png``: random 28x28 strokes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for a in range(alphabets):
        for c in range(characters):
            folder = root / f"alphabet{a}" / f"character{c + 1:02d}"
            folder.mkdir(parents=True)
            for d in range(drawers):
                pixels = np.where(rng.random((28, 28)) < 0.2, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(
                    folder / f"{a * characters + c + 1:04d}_{d + 1:02d}.png"
                )
    return root


def fill(arg: str, values: dict[str, object]) -> str:
    """``arg`` with each ``{name}`` of ``values`` replaced (other braces, e.g. JSON, stay)."""
    for name, value in values.items():
        arg = arg.replace("{" + name + "}", str(value))
    return arg


def trainers_section(ctx: Context) -> None:
    """Each trainer for a few ``--amp`` steps on tiny random data (a dry run: options parse)."""
    places = {
        "images": write_image_folder(ctx.work / "images"),
        "omniglot": write_omniglot(ctx.work / "omniglot" / "images_background"),
        "device": ctx.device.type,
        "lavit_32px": LAVIT_32PX,
    }
    jobs, rows = {}, {}
    for smoke in SMOKE:
        out = ctx.work / "runs" / smoke.name
        args = [fill(a, {**places, "out": out}) for a in smoke.args.split()]
        try:
            args, notes = resolve_options(args, trainer_options(smoke.module))
        except (ValueError, RuntimeError) as err:
            ctx.add("smoke runs", {"trainer": smoke.name, "status": "FAILED", "error": str(err)})
            ctx.fail(f"{smoke.name}: {err}")
            continue
        argv = [sys.executable, "-m", smoke.module, *args]
        rows[smoke.name] = {
            "trainer": smoke.name,
            "options": "; ".join(notes) or "as written",
            "command": shlex.join(["python", *argv[1:]]),
        }
        jobs[smoke.name] = (argv, ROOT)
    if ctx.dry_run:
        for row in rows.values():
            ctx.add("smoke runs", row | {"status": "options parse"})
        return
    finished = run_parallel(jobs, max(ctx.time_left(), 1.0), child_env(ctx), ctx.work)
    for name, fin in finished.items():
        _log_output(ctx, name, fin.output)
        out = ctx.work / "runs" / name
        checkpoints = sorted(p.name for p in out.rglob("*.pt*")) if out.is_dir() else []
        metrics = (
            sorted(out.rglob("*metrics.jsonl"), key=lambda p: p.stat().st_mtime)
            if out.is_dir()
            else []
        )
        last = _summary_line(metrics[-1].read_text()) if metrics else _summary_line(fin.output)
        ok = fin.returncode == 0 and bool(checkpoints)
        ctx.add(
            "smoke runs",
            rows[name]
            | {
                "exit": fin.returncode,
                "seconds": fin.seconds,
                "checkpoints": ", ".join(checkpoints),
                "last record": last[:300],
                "status": "ok" if ok else "FAILED",
            },
        )
        if not ok:
            what = (
                "killed at the time budget" if fin.returncode is None else f"exit {fin.returncode}"
            )
            ctx.fail(f"{name}: {what}, checkpoints: {checkpoints or 'none'}")


# -- section: lavit --------------------------------------------------------------------------

#: (LaViT, PVTv2 baseline, the paper's FLOP ratio baseline / LaViT)
LAVIT_PAIRS = (("lavit_tiny", "pvt_v2_b1", 1.31), ("lavit_small", "pvt_v2_b2", 1.21))
LAVIT_TARGET = 1.2  # lavit / pvt_v2 images/s at 224x224, batch 256 (the target)
_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


@dataclass(frozen=True)
class LavitPlan:
    """Sizes of the lavit section (the first batch is the target's, 256 on the GPU)."""

    size: int
    batches: tuple[int, ...]
    backbone_sizes: tuple[tuple[int, int], ...]
    backbone_batch: int
    repeats: Repeats
    compile: bool


LAVIT_GPU = LavitPlan(224, (256, 64), ((512, 512), (800, 1216)), 8, Repeats(3, 5, 10), True)
LAVIT_DRY = LavitPlan(32, (2,), ((32, 32),), 1, DRY_REPEATS, False)


def build_model(name: str, size: tuple[int, int]) -> torch.nn.Module:
    """A timm model in eval mode for ``size`` inputs (LaViT is built per size; PVTv2 takes any)."""
    import timm

    import lavit  # noqa: F401  (registers lavit_* with timm)

    kwargs = {"img_size": size} if name.startswith("lavit") else {}
    return timm.create_model(name, **kwargs).eval()


def _classify(model: Callable[[torch.Tensor], object], x: torch.Tensor) -> object:
    """Logits, inference mode, bf16 autocast."""
    with torch.inference_mode(), bf16_autocast(x.device):
        return model(x)


def _stage_maps(model: torch.nn.Module, x: torch.Tensor) -> object:
    """The backbone's work: every stage's ``(B, C_i, H/s_i, W/s_i)`` map (no head), as above."""
    with torch.inference_mode(), bf16_autocast(x.device):
        return model.forward_intermediates(x, intermediates_only=True)


def throughput(
    ctx: Context,
    models: dict[str, Callable[[torch.Tensor], object]],
    x: torch.Tensor,
    formats: dict[str, str],
    plan: Repeats,
    call: Callable[[Any, torch.Tensor], object],
) -> dict[str, tuple[float, float | None]]:
    """``{name: (images/s, peak MiB)}`` of ``call(model, x)``, ``x`` in each model's format."""
    inputs = {n: x.contiguous(memory_format=_FORMATS[formats[n]]) for n in models}
    fns = {n: (lambda m=m, xn=inputs[n]: call(m, xn)) for n, m in models.items()}
    ms = interleaved_ms(fns, ctx.device, plan)
    return {n: (x.shape[0] * 1e3 / ms[n], peak_mib(fns[n], ctx.device)) for n in fns}


def lavit_section(ctx: Context) -> None:
    """LaViT vs PVTv2 inference throughput (bf16 autocast): classifiers, then backbones."""
    plan = LAVIT_DRY if ctx.dry_run else LAVIT_GPU
    dev, s = ctx.device, plan.size
    names = [n for pair in LAVIT_PAIRS for n in pair[:2]]
    torch.manual_seed(0)
    models = {n: build_model(n, (s, s)).to(dev) for n in names}
    fmt: dict[str, str] = {}
    classifiers = "classifiers (bf16 autocast, inference)"
    backbones = "backbones (per-stage maps, bf16 autocast, eager)"

    def ratios(label: str, batch: int, mode: str, ips: dict[str, float]) -> None:
        target = label == f"{LAVIT_GPU.size}x{LAVIT_GPU.size}" and batch == LAVIT_GPU.batches[0]
        for a, b, flops in LAVIT_PAIRS:
            if a in ips and b in ips:
                r = ips[a] / ips[b]
                ctx.add(
                    "lavit / pvt_v2 images/s",
                    {
                        "pair": f"{a} / {b}",
                        "input": label,
                        "batch": batch,
                        "mode": mode,
                        "ratio": round(r, 3),
                        "paper FLOP ratio": flops,
                        "target": f">= {LAVIT_TARGET}" if target else "-",
                        "met": ("yes" if r >= LAVIT_TARGET else "NO") if target else "-",
                    },
                )

    def memory_formats() -> None:
        """Both formats at the first batch, eager; each model keeps the faster one."""
        x = torch.randn(plan.batches[0], 3, s, s, device=dev)
        variants, formats = {}, {}
        for n, m in models.items():
            for f in _FORMATS:
                key = f"{n}|{f}"
                variants[key] = (
                    m
                    if f == "contiguous"
                    else copy.deepcopy(m).to(memory_format=torch.channels_last)
                )
                formats[key] = f
        rate = {
            k: r
            for k, (r, _) in throughput(ctx, variants, x, formats, plan.repeats, _classify).items()
        }
        for n in names:
            fmt[n] = max(_FORMATS, key=lambda f, n=n: rate[f"{n}|{f}"])
            models[n] = variants[f"{n}|{fmt[n]}"]
            ctx.add(
                "memory format (eager)",
                {
                    "model": n,
                    "input": f"{s}x{s}",
                    "batch": x.shape[0],
                    "contiguous images/s": round(rate[f"{n}|contiguous"], 1),
                    "channels_last images/s": round(rate[f"{n}|channels_last"], 1),
                    "kept": fmt[n],
                },
            )

    def classify(batch: int, mode: str) -> None:
        x = torch.randn(batch, 3, s, s, device=dev)
        ips: dict[str, float] = {}
        # compiled: pair by pair, so that a spent budget still leaves whole pairs
        groups = [names] if mode == "eager" else [list(p[:2]) for p in LAVIT_PAIRS]
        for group in groups:
            if mode == "compiled" and ctx.over_budget(f"compiled {' / '.join(group)} b{batch}"):
                continue
            run: dict[str, Callable[[torch.Tensor], object]] = {}
            compile_s: dict[str, float] = {}
            try:
                for n in group:
                    if mode == "eager":
                        run[n] = models[n]
                        continue
                    run[n] = torch.compile(models[n])
                    t0 = time.perf_counter()  # the first call compiles
                    _classify(run[n], x.contiguous(memory_format=_FORMATS[fmt[n]]))
                    synchronize(dev)
                    compile_s[n] = round(time.perf_counter() - t0, 1)
                measured = throughput(ctx, run, x, fmt, plan.repeats, _classify)
            except Exception as err:
                ctx.add(
                    classifiers,
                    {
                        "model": " / ".join(group),
                        "batch": batch,
                        "mode": mode,
                        "error": f"{type(err).__name__}: {str(err)[:300]}",
                    },
                )
                ctx.fail(f"{mode} {' / '.join(group)} b{batch}: {type(err).__name__}: {err}")
                continue
            for n, (rate, peak) in measured.items():
                ips[n] = rate
                ctx.add(
                    classifiers,
                    {
                        "model": n,
                        "input": f"{s}x{s}",
                        "batch": batch,
                        "mode": mode,
                        "memory format": fmt[n],
                        "images/s": round(rate, 1),
                        "ms/batch": round(batch * 1e3 / rate, 2),
                        "peak MiB": peak,
                        "compile s": compile_s.get(n, "-"),
                    },
                )
        ratios(f"{s}x{s}", batch, mode, ips)

    def backbone(size: tuple[int, int]) -> None:
        label, batch = f"{size[0]}x{size[1]}", plan.backbone_batch
        x = torch.randn(batch, 3, *size, device=dev)
        ready: dict[str, torch.nn.Module] = {}
        for n in names:
            try:  # a model that cannot run at this size is recorded, not a failure
                m = models[n]
                if n.startswith("lavit") and tuple(m.img_size) != size:
                    m = build_model(n, size).to(dev).to(memory_format=_FORMATS[fmt[n]])
                _stage_maps(m, x.contiguous(memory_format=_FORMATS[fmt[n]]))
                ready[n] = m
            except Exception as err:
                ctx.add(
                    backbones,
                    {
                        "model": n,
                        "input": label,
                        "batch": batch,
                        "error": f"{type(err).__name__}: {str(err)[:300]}",
                    },
                )
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
        ips = {}
        for n, (rate, peak) in throughput(ctx, ready, x, fmt, plan.repeats, _stage_maps).items():
            ips[n] = rate
            ctx.add(
                backbones,
                {
                    "model": n,
                    "input": label,
                    "batch": batch,
                    "memory format": fmt[n],
                    "images/s": round(rate, 2),
                    "peak MiB": peak,
                    "error": "",
                },
            )
        ratios(label, batch, "eager backbone", ips)

    # highest priority first (compilation, tens of seconds per model, last): a spent budget
    # drops the tail
    blocks: list[tuple[str, Callable[[], None]]] = [("memory formats", memory_formats)]
    blocks += [(f"eager b{b}", lambda b=b: classify(b, "eager")) for b in plan.batches]
    blocks += [
        (f"backbones {h}x{w}", lambda sz=(h, w): backbone(sz)) for h, w in plan.backbone_sizes
    ]
    if plan.compile:
        blocks += [(f"compiled b{b}", lambda b=b: classify(b, "compiled")) for b in plan.batches]
    else:
        ctx.note("dry run: fp32 on CPU (bf16 autocast is for CUDA) and no torch.compile rows")
    try:
        for what, block in blocks:
            if not ctx.over_budget(what):
                block()
    finally:
        if plan.compile:
            torch._dynamo.reset()  # drop the compiled graphs before the next section


# -- section: maml ---------------------------------------------------------------------------

#: name, method, task batching, backward per task (``forward_backward``, higher's memory profile)
MAML_ROWS = (
    ("gp_maml loop", "maml", "loop", True),
    ("gp_maml vmap", "maml", "vmap", False),
    ("GP-MAML loop", "gp-maml", "loop", True),
    ("GP-MAML vmap", "gp-maml", "vmap", False),
)
MAML_TARGET = 1.5  # gp_maml MAML / higher speed at meta-batch 32, second order (the target)


@dataclass(frozen=True)
class MamlPlan:
    """Sizes of the maml section (the target is read at the last batch, second order)."""

    batches: tuple[int, ...]
    orders: tuple[str, ...]  # "2nd" and/or "1st"
    repeats: Repeats


MAML_GPU = MamlPlan((4, 32), ("2nd", "1st"), Repeats(2, 5))
MAML_DRY = MamlPlan((1,), ("2nd",), DRY_REPEATS)


def maml_section(ctx: Context) -> None:
    """Meta-training steps (forward + backward) per task: gp_maml vs higher, GP-MAML vs MAML."""
    from gp_maml import Conv4, create_learner
    from gp_maml.reference import higher_maml_step, random_task_batch, torch_layers

    missing = check_expected(ctx, ["higher"])
    if missing:
        ctx.note(
            "higher is not importable here: MAML rows without the higher baseline (carry it "
            "as a wheel: tools/gpu_wheels.sh)"
        )
    dev, plan = ctx.device, MAML_DRY if ctx.dry_run else MAML_GPU
    torch.manual_seed(0)
    base = Conv4(1, 5, 64, 28)
    table = "meta-training step (Conv-4-64, 5-way 1-shot, 15 queries, 1 inner step)"
    for b in plan.batches:
        for order in plan.orders:
            first_order = order == "1st"
            if ctx.over_budget(f"meta-batch {b} {order} order"):
                continue
            batch = tuple(t.to(dev) for t in random_task_batch(b))
            networks: dict[str, torch.nn.Module] = {}  # whose gradients are compared
            runs: dict[str, Callable[[], None]] = {}
            if not missing:
                hmodel = torch_layers(base).to(dev)
                networks["higher"] = hmodel

                def higher_run(m=hmodel, fo=first_order, batch=batch) -> None:
                    m.zero_grad(set_to_none=True)
                    higher_maml_step(m, batch, fo)

                runs["higher"] = higher_run
            first_of: dict[str, torch.nn.Module] = {}  # method -> its first learner
            for name, method, batching, per_task in MAML_ROWS:
                learner = create_learner(
                    method, copy.deepcopy(base), task_batching=batching, first_order=first_order
                ).to(dev)
                # same weights for one method's rows (GP learners draw a relation net each)
                learner.load_state_dict(first_of.setdefault(method, learner).state_dict())
                networks[name] = learner.model

                def learner_run(ln=learner, per_task=per_task, batch=batch) -> None:
                    ln.zero_grad(set_to_none=True)
                    if per_task:
                        ln.forward_backward(*batch)
                    else:
                        ln(*batch).loss.backward()

                runs[name] = learner_run
            for run in runs.values():  # gradients for the check below (timing warms up again)
                run()
            grads = {n: [p.grad.clone() for p in m.parameters()] for n, m in networks.items()}
            # the calls above were each row's first warm-up call
            ms = interleaved_ms(runs, dev, replace(plan.repeats, warmup=plan.repeats.warmup - 1))
            for name, run in runs.items():
                ref = "GP-MAML loop" if name.startswith("GP") else "gp_maml loop"
                same = {"loop": "gp_maml loop", "vmap": "gp_maml vmap"}.get(name.split()[-1])
                err = max(
                    (x - y).abs().max().item() for x, y in zip(grads[name], grads[ref], strict=True)
                )
                ctx.add(
                    table,
                    {
                        "meta-batch": b,
                        "order": order,
                        "implementation": name,
                        "ms/task": round(ms[name] / b, 3),
                        "tasks/s": round(b * 1e3 / ms[name], 1),
                        "speed-up vs higher": round(ms["higher"] / ms[name], 2)
                        if "higher" in ms
                        else "-",
                        "cost vs MAML (same batching)": round(ms[name] / ms[same], 2)
                        if name.startswith("GP")
                        else "-",
                        "peak MiB": peak_mib(run, dev),
                        f"max |grad - {ref}|": f"{err:.2e}",
                    },
                )
            if b == plan.batches[-1] and order == "2nd" and "higher" in ms:
                for name in ("gp_maml vmap", "gp_maml loop"):
                    r = ms["higher"] / ms[name]
                    ctx.add(
                        "targets",
                        {
                            "what": f"{name} / higher speed, meta-batch {b}, 2nd order",
                            "ratio": round(r, 2),
                            "target": f">= {MAML_TARGET}",
                            "met": "yes" if r >= MAML_TARGET else "NO",
                        },
                    )


# -- section: kd -----------------------------------------------------------------------------

KD_TEACHER, KD_STUDENT = "cifar_resnet32x4", "cifar_resnet8x4"
#: (method, its KD baseline, the largest step-time ratio allowed)
KD_TARGETS = (("clkd: CLKD", "clkd: KD", 1.05), ("trg-kd: TRG", "trg-kd: KD", 1.5))


@dataclass(frozen=True)
class KdPlan:
    """Sizes of the kd section."""

    batches: tuple[int, ...]
    repeats: Repeats


KD_GPU = KdPlan((64, 256), Repeats(3, 5, 3))
KD_DRY = KdPlan((2,), DRY_REPEATS)


#: ``(student, teacher) -> loss`` of a distillation step (None: cross-entropy of the student alone)
LossMaker = Callable[[torch.nn.Module, torch.nn.Module], torch.nn.Module] | None


def _distill_step(
    make_loss: LossMaker,
    teacher: torch.nn.Module,
    batch: int,
    device: torch.device,
    features: Callable[..., Any] | None = None,
) -> Callable[[], None]:
    """One training step as the clkd and trg-kd ``bench_overhead.py`` time it.

    A fresh ``KD_STUDENT`` (100 classes) distilled from ``teacher`` through
    ``lab_common.distill.Distiller`` (``features``: both models' feature function, e.g.
    trg-kd's ``TokenExtractor``), on one fixed random ``(batch, 3, 32, 32)`` batch, SGD at lr 0
    (the same work every step, and no drift to NaN on a repeated batch).
    """
    import timm

    from lab_common.distill import Distiller

    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 100, (batch,), device=device)
    student = timm.create_model(KD_STUDENT, num_classes=100).to(device).train()
    if make_loss is None:
        model, params = student, list(student.parameters())
    else:
        hooks = (
            {} if features is None else {"student_features": features, "teacher_features": features}
        )
        model = Distiller(student, teacher, make_loss(student, teacher), **hooks).to(device)
        model.train()
        params = list(model.trainable_parameters())
    opt = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        if make_loss is None:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        else:
            loss = sum(model(x, y)[1].values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def kd_section(ctx: Context) -> None:
    """Training-step time of CLKD and TRG vs KD, resnet32x4 -> resnet8x4, 32x32, 100 classes."""
    import timm

    from clkd import CLKDLoss
    from lab_common.distill import KDLoss  # importing lab_common.distill registers cifar_*
    from lab_common.distill.kd import KD_DEFAULTS
    from trg_kd import TokenExtractor, TRGConfig, TRGLoss

    trg = TRGConfig()

    def trg_loss(student: torch.nn.Module, teacher: torch.nn.Module) -> torch.nn.Module:
        widths = [TokenExtractor().token_shape(m, (3, 32, 32))[1] for m in (student, teacher)]
        return TRGLoss(*widths, trg)

    def trg_kd_loss(student: torch.nn.Module, teacher: torch.nn.Module) -> torch.nn.Module:
        return KDLoss(ce_weight=1.0, kd_weight=trg.kd_weight, temperature=trg.kd_temperature)

    dev, plan = ctx.device, KD_DRY if ctx.dry_run else KD_GPU
    torch.manual_seed(0)
    teacher = timm.create_model(KD_TEACHER, num_classes=100).to(dev).eval()
    table = f"training step, {KD_TEACHER} -> {KD_STUDENT} (fp32, SGD)"
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    try:
        for b in plan.batches:
            if ctx.over_budget(f"batch {b}"):
                continue
            steps = {
                "CE only": _distill_step(None, teacher, b, dev),
                "clkd: KD": _distill_step(lambda s, t: KDLoss(**KD_DEFAULTS), teacher, b, dev),
                "clkd: CLKD": _distill_step(lambda s, t: CLKDLoss(variant="mse"), teacher, b, dev),
                # trg-kd's KD extracts the tokens as TRG does (as in its bench_overhead.py)
                "trg-kd: KD": _distill_step(trg_kd_loss, teacher, b, dev, TokenExtractor()),
                "trg-kd: TRG": _distill_step(trg_loss, teacher, b, dev, TokenExtractor()),
            }
            ms = interleaved_ms(steps, dev, plan.repeats)
            for name, step in steps.items():
                baseline = "trg-kd: KD" if name.startswith("trg") else "clkd: KD"
                ctx.add(
                    table,
                    {
                        "batch": b,
                        "method": name,
                        "ms/step": round(ms[name], 3),
                        "KD baseline": baseline,
                        "x KD": round(ms[name] / ms[baseline], 3),
                        "peak MiB": peak_mib(step, dev),
                    },
                )
            for method, baseline, limit in KD_TARGETS:
                r = ms[method] / ms[baseline]
                ctx.add(
                    "targets",
                    {
                        "what": f"{method} / {baseline} step time, batch {b}",
                        "ratio": round(r, 3),
                        "target": f"<= {limit}",
                        "met": "yes" if r <= limit else "NO",
                    },
                )
            del steps
    finally:
        torch.backends.cudnn.benchmark = previous


# -- command line ----------------------------------------------------------------------------

#: Budgets add up to 360 s, inside ``RUN_LIMIT_S``.
SECTIONS = (
    Section(
        "tests",
        "CUDA tests of every package (pytest -m cuda)",
        75.0,
        tests_section,
        children_only=True,
    ),
    Section("trainers", "trainer smoke runs (--amp, tiny random data)", 50.0, trainers_section),
    Section("lavit", "LaViT vs PVTv2 throughput", 145.0, lavit_section),
    Section("maml", "gp_maml MAML vs higher, GP-MAML vs MAML", 50.0, maml_section),
    Section("kd", "CLKD and TRG step time vs KD", 40.0, kd_section),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    p.add_argument(
        "--out",
        default="gpu_check_out",
        help=f"results go to <out>/{FOLDER}/ (log, summary.json, summary.md)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="no GPU: collect the tests, check the trainers' options, build every "
        "model and run each section once at its smallest sizes on CPU",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=[s.name for s in SECTIONS],
        metavar="SECTION",
        help=f"run these sections only ({', '.join(s.name for s in SECTIONS)})",
    )
    p.add_argument("--device", default="cuda", help="device of a full run (default cuda)")
    p.add_argument(
        "--expect",
        nargs="+",
        action="extend",
        default=[],
        metavar="MODULE",
        help="optional modules that must import (e.g. pycocotools higher): tests skipped for "
        "their absence fail the check (gpu_check.sh expects the wheels it installs)",
    )
    p.add_argument(
        "--time-limit",
        type=float,
        default=RUN_LIMIT_S,
        metavar="SECONDS",
        help=f"the run's time limit (default {RUN_LIMIT_S:.0f}): no section runs past it + "
        f"{HARD_GRACE_S:.0f} s",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sections = [s for s in SECTIONS if args.only is None or s.name in args.only]
    return run_check(
        sections,
        args.out,
        dry_run=args.dry_run,
        device=args.device,
        expect=args.expect,
        limit_s=args.time_limit,
    )


if __name__ == "__main__":
    raise SystemExit(main())
