"""The study harness: accuracy studies as lists of runs of the packages' own trainers.

A study (one file beside this one) declares :class:`Run`\\ s — a trainer name, the keyword
arguments of that trainer's config dataclass and a seed — and :class:`Row`\\ s that group runs
over seeds. :func:`main` then

- runs every run through the trainer's library entry point (``clkd.train.train(cfg)``,
  ``trg_kd.train.train(cfg)``, ...) in its own folder ``<root>/<key>``, keyed by the trainer
  and the arguments the study gave (not by the trainer's defaults, so a package that gains an
  option keeps its finished runs); a run whose dependencies (:class:`Output`, e.g. a teacher
  checkpoint) are not finished waits for them;
- never recomputes a finished run: its record (config, final metrics, curve, wall time) is
  written to ``studies/records/<key>.json`` in the repository, with the files other runs read
  (``keep``, e.g. the teacher's weights), so a study also survives a new machine; an
  interrupted run resumes exactly through the trainer's ``resume``;
- runs ``--jobs N`` runs at a time in child processes with ``cores // N`` threads each and
  prints a line per run when it starts, every ``--report-every`` seconds (its newest epoch) and
  when it ends;
- aggregates: per row the seeds' final accuracies, mean ± 95 % CI (Student t) and the paired
  difference to the study's baseline row over the seeds both have, and writes
  ``docs/results/<study>.md``, ``.json`` and ``_curves.png``.

Run a study with ``python studies/<study>.py [--jobs 2] [--report-only]``; stop it at any
time and start it again.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RECORDS = REPO / "studies" / "records"
RESULTS = REPO / "docs" / "results"
ROOT_ENV = "LAB_STUDY_ROOT"


# ----------------------------------------------------------------------------- trainers
@dataclass(frozen=True)
class Trainer:
    """How the harness drives one package trainer.

    ``config`` / ``train`` are ``module:attribute`` names (imported in the child process only);
    ``checkpoints`` the files ``resume`` reads; ``metrics`` the JSON-lines log read for curves
    and progress, ``x_key`` its step key and ``acc_key`` the accuracy it reports (of the split
    the config names); ``result`` the file of final metrics a finished run leaves (None: the
    last metrics record that holds ``acc_key``).
    """

    config: str
    train: str
    checkpoints: tuple[str, ...]
    metrics: str
    acc_key: str
    x_key: str = "epoch"
    result: str | None = None


_DISTILL = {
    "checkpoints": ("student_last.pt", "student_last.prev.pt"),
    "metrics": "student_metrics.jsonl",
    "acc_key": "val_top1",
    "result": "result.json",
}
TRAINERS: dict[str, Trainer] = {
    "clkd": Trainer("clkd.train:TrainConfig", "clkd.train:train", **_DISTILL),
    "trg-kd": Trainer("trg_kd.train:TrainConfig", "trg_kd.train:train", **_DISTILL),
    "lavit": Trainer(
        "lavit.train:TrainConfig",
        "lavit.train:train",
        checkpoints=("last.pt", "last.prev.pt"),
        metrics="metrics.jsonl",
        acc_key="val_top1",
    ),
    "gp-maml": Trainer(
        "gp_maml.train:TrainConfig",
        "gp_maml.train:train",
        checkpoints=("last.pt", "last.prev.pt"),
        metrics="metrics.jsonl",
        acc_key="val_top1",
        x_key="iteration",
    ),
}

#: glibc allocator settings for the children (the caller's environment wins): freed blocks up
#: to 32 MiB stay in the process instead of going back to the OS, so each training step's large
#: tensors do not page-fault afresh. The same numbers; training steps 1.05-1.25x faster on the
#: study machine (gp-maml, LaViT, resnet8 students; idle AMD EPYC, one thread, 2026-12-07).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def _attr(name: str) -> Any:
    module, attr = name.split(":")
    return getattr(importlib.import_module(module), attr)


# --------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Output:
    """A file of another run's folder, as a config value (e.g. a teacher checkpoint).

    The run that reads it waits until ``run`` is finished; in the key it stands for
    ``run``'s key and ``name``, so it does not depend on where the runs live.
    """

    run: Run
    name: str

    def token(self) -> str:
        return f"@{self.run.key}/{self.name}"


@dataclass(frozen=True)
class Shared:
    """A path under the shared datasets folder, as a config value (machine-independent key)."""

    path: str

    def token(self) -> str:
        return f"shared:{self.path}"


class _Keyed:
    """Equality and hashing by ``key`` (a run's or evaluation's identity)."""

    key: str

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.key == self.key


@dataclass(frozen=True, eq=False)
class Run(_Keyed):
    """One trainer run: ``TRAINERS[trainer]``'s config built from ``kwargs`` and ``seed``.

    ``keep`` names files of the run folder that other runs read: they are stored with the
    run's record (``studies/records/<key>/``) and restored from there on another machine.
    """

    trainer: str
    kwargs: Mapping[str, Any]
    seed: int = 0
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.trainer not in TRAINERS:
            raise ValueError(f"unknown trainer {self.trainer!r}; use one of {sorted(TRAINERS)}")
        for name in ("out", "seed", "resume", "overwrite"):
            if name in self.kwargs:
                raise ValueError(f"{name!r} is set by the harness; remove it from the run's kwargs")

    @property
    def key(self) -> str:
        """``<trainer>-<12 hex>``: a hash of the trainer, the study's kwargs and the seed."""
        spec = json.dumps(
            {"trainer": self.trainer, "kwargs": _tokens(self.kwargs), "seed": self.seed},
            sort_keys=True,
        )
        return f"{self.trainer}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"

    @property
    def needs(self) -> list[Run]:
        return [v.run for v in self.kwargs.values() if isinstance(v, Output)]

    @property
    def trainer_spec(self) -> Trainer:
        return TRAINERS[self.trainer]


@dataclass(frozen=True, eq=False)
class Evaluation(_Keyed):
    """A measurement of a finished run: ``function(run_folder, **kwargs) -> dict`` in a child.

    ``function`` is ``"module:attribute"`` (a study module beside this file, or a package);
    its result is stored as the evaluation's record, keyed by the run and the arguments, so
    adding evaluations to a study never retrains a run.
    """

    run: Run
    function: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``<run key>.eval-<12 hex>``."""
        spec = json.dumps({"function": self.function, "kwargs": self.kwargs}, sort_keys=True)
        return f"{self.run.key}.eval-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"

    @property
    def needs(self) -> list[Run]:
        return [self.run]


Task = Run | Evaluation


def _tokens(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.token() if isinstance(v, (Output, Shared)) else v for k, v in kwargs.items()}


def final_accuracy(record: dict[str, Any]) -> float:
    """A run record's final validation accuracy (the trainer's ``acc_key``)."""
    return record["acc"]


@dataclass
class Row:
    """A table row: the same settings over several seeds (``runs`` one task per seed).

    ``metric`` reads a row's number from each task's record (default: a run's final accuracy;
    for evaluations, e.g. ``lambda r: r["result"]["accuracy"]``).
    """

    name: str
    runs: list[Task]
    note: str = ""
    metric: Callable[[dict[str, Any]], float] = final_accuracy

    @property
    def seeds(self) -> list[int]:
        return [t.seed if isinstance(t, Run) else t.run.seed for t in self.runs]


def seeds(trainer: str, kwargs: Mapping[str, Any], seed_list: Sequence[int]) -> list[Run]:
    """One :class:`Run` per seed of ``seed_list`` with the same trainer and kwargs."""
    return [Run(trainer, dict(kwargs), s) for s in seed_list]


# ------------------------------------------------------------------------------ storage
class Store:
    """Run folders under ``root`` and finished-run records under ``records``."""

    def __init__(self, root: Path, records: Path = RECORDS) -> None:
        self.root = root
        self.records = records

    def folder(self, run: Run) -> Path:
        return self.root / run.key

    def log(self, task: Task) -> Path:
        return self.root / f"{task.key}.log"

    def record_path(self, task: Task) -> Path:
        return self.records / f"{task.key}.json"

    def record(self, task: Task) -> dict[str, Any] | None:
        path = self.record_path(task)
        return json.loads(path.read_text()) if path.is_file() else None

    def finished(self, task: Task) -> bool:
        return self.record_path(task).is_file()

    def partial(self, run: Run) -> Path:
        """Where :meth:`save_partial` keeps an unfinished run's checkpoint in the records."""
        return self.records / "partial" / run.key

    def save_partial(self, run: Run) -> bool:
        """Copy an unfinished run's checkpoint and metrics into the records (for another
        machine to resume exactly from); False when the run has no checkpoint yet."""
        spec, folder = run.trainer_spec, self.folder(run)
        newest = [n for n in spec.checkpoints if (folder / n).is_file()][:1]
        if self.finished(run) or not newest:
            return False
        metrics = [spec.metrics] if (folder / spec.metrics).is_file() else []
        target = self.partial(run)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name in [*newest, *metrics]:
            shutil.copy2(folder / name, target / name)
        return True

    def restore_partial(self, run: Run) -> bool:
        """Copy a saved partial checkpoint back into a run folder that has none."""
        spec, folder, saved = run.trainer_spec, self.folder(run), self.partial(run)
        if not saved.is_dir() or any((folder / n).is_file() for n in spec.checkpoints):
            return False
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(saved, folder)
        return True

    def restore(self, run: Run) -> Path:
        """``run``'s folder, with its kept files copied back from the records if missing."""
        for name in run.keep:
            self.resolve(Output(run, name))
        return self.folder(run)

    def resolve(self, value: Any) -> Any:
        """A config value with :class:`Output` / :class:`Shared` replaced by the file's path
        (an output restored from the records if it was kept)."""
        if isinstance(value, Shared):
            from lab_common import shared_datasets_root

            return str(shared_datasets_root() / value.path)
        if not isinstance(value, Output):
            return value
        path = self.folder(value.run) / value.name
        kept = self.records / value.run.key / value.name
        if not path.is_file() and kept.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kept, path)
        return str(path)

    def write_record(self, run: Run, wall_s: float) -> dict[str, Any]:
        """Read a finished run folder and store its record (and ``keep`` files)."""
        spec = run.trainer_spec
        folder = self.folder(run)
        lines = (folder / spec.metrics).read_text().splitlines()
        curve = [r for r in map(json.loads, filter(str.strip, lines)) if spec.acc_key in r]
        result = json.loads((folder / spec.result).read_text()) if spec.result else curve[-1]
        config = json.loads((folder / "study_config.json").read_text())
        record = {
            "key": run.key,
            "trainer": run.trainer,
            "kwargs": _tokens(run.kwargs),
            "seed": run.seed,
            "config": config,
            "result": result,
            "acc": result[spec.acc_key],
            "curve": [{spec.x_key: r[spec.x_key], "acc": r[spec.acc_key]} for r in curve],
            "wall_s": round(wall_s, 1),
            "machine": machine(),
            "date": date.today().isoformat(),
        }
        for name in run.keep:
            (self.records / run.key).mkdir(parents=True, exist_ok=True)
            shutil.copy2(folder / name, self.records / run.key / name)
        self._write(run, record)
        return record

    def write_evaluation(self, evaluation: Evaluation, wall_s: float) -> dict[str, Any]:
        """Store the result a finished evaluation child left beside its log."""
        result_path = self.root / f"{evaluation.key}.result.json"
        record = {
            "key": evaluation.key,
            "run": evaluation.run.key,
            "function": evaluation.function,
            "kwargs": dict(evaluation.kwargs),
            "result": json.loads(result_path.read_text()),
            "wall_s": round(wall_s, 1),
            "machine": machine(),
            "date": date.today().isoformat(),
        }
        self._write(evaluation, record)
        return record

    def _write(self, task: Task, record: dict[str, Any]) -> None:
        self.records.mkdir(parents=True, exist_ok=True)
        tmp = self.record_path(task).with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, self.record_path(task))


def machine() -> str:
    """CPU model, core count and torch version of this machine (one line)."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


# ------------------------------------------------------------------------ one run, child
#: A child's exit status when another study process holds the run's lock.
BUSY = 75


def _lock_path(spec_path: Path) -> Path:
    return spec_path.with_name(spec_path.name.replace(".spec.json", ".lock"))


def _try_lock(path: Path) -> Any | None:
    """The open lock file of a run, locked exclusively, or None when another process holds it
    (the lock goes with the process, also when it is killed)."""
    handle = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def run_child(spec_path: Path) -> None:
    """Train one run (or evaluate one) in this process, the harness's child.

    A run resumes when its folder holds a checkpoint; an evaluation writes its result to
    ``<key>.result.json`` beside the spec. The child holds the run's lock (``<key>.lock``) while
    it works: a second study process started on the same run folder exits with :data:`BUSY`
    instead of writing into it too.
    """
    lock = _try_lock(_lock_path(spec_path))
    if lock is None:
        print(f"{spec_path.name}: another study process is running it; not run twice")
        raise SystemExit(BUSY)
    job = json.loads(spec_path.read_text())
    if job["kind"] == "evaluation":
        result = _attr(job["function"])(Path(job["out"]), **job["kwargs"])
        result_path = spec_path.with_name(spec_path.name.replace(".spec.json", ".result.json"))
        result_path.write_text(json.dumps(result, indent=1))
        return
    trainer = TRAINERS[job["trainer"]]
    out = Path(job["out"])
    config_cls = _attr(trainer.config)
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in job["kwargs"].items()}
    config = config_cls(**kwargs, out=str(out), seed=job["seed"])  # JSON lists were tuples
    resume = any((out / name).is_file() for name in trainer.checkpoints)
    if not resume and out.is_dir():  # killed before its first checkpoint: nothing to keep
        shutil.rmtree(out)
    added = _added_settings(out, trainer, config) if resume else []
    _attr(trainer.train)(config, resume=resume, allow_changed=added)
    if trainer.result and not (out / trainer.result).is_file():
        raise SystemExit(f"{out}: the trainer ended without {trainer.result}")
    config_json = {"trainer": job["trainer"], **dataclasses.asdict(config)}
    (out / "study_config.json").write_text(json.dumps(config_json, indent=1, default=str))


def _added_settings(out: Path, trainer: Trainer, config: Any) -> list[str]:
    """Settings a newer version of the trainer added since the run's checkpoint was written,
    at their defaults: a resume may pass them (the default keeps the old behaviour)."""
    import torch

    path = next(out / n for n in trainer.checkpoints if (out / n).is_file())
    stored = torch.load(path, map_location="cpu", weights_only=False).get("config", {})
    defaults = {f.name: f for f in dataclasses.fields(config)}
    added = []
    for name, f in defaults.items():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if name not in stored and getattr(config, name) == default:
            added.append(name)
    return added


# ------------------------------------------------------------------------------ scheduling
@dataclass
class _Job:
    run: Task
    proc: subprocess.Popen[bytes]
    started: float
    log: Any = field(repr=False)


def _progress_line(store: Store, run: Task, elapsed: float) -> str:
    if isinstance(run, Evaluation):
        return f"[{run.key}] evaluating ({elapsed / 60:.1f} min)"
    spec = run.trainer_spec
    path = store.folder(run) / spec.metrics
    last = ""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        if lines:
            try:
                rec = json.loads(lines[-1])
                acc = rec.get(spec.acc_key)
                last = f" {spec.x_key} {rec.get(spec.x_key)}" + (
                    f" acc {acc:.2f}" if isinstance(acc, float) else ""
                )
            except json.JSONDecodeError:
                pass
    return f"[{run.key}]{last} ({elapsed / 60:.1f} min)"


def execute(
    runs: Sequence[Task],
    store: Store,
    *,
    jobs: int,
    threads: int | None = None,
    report_every: float = 120.0,
) -> list[Task]:
    """Run every unfinished run or evaluation of ``runs`` (dependencies first); the failed ones.

    Each child gets ``threads`` torch threads (default: the cores split between the jobs).
    """
    todo: list[Task] = []
    for run in runs:  # dependencies first, each run once
        for dep in [*run.needs, run]:
            if dep not in todo:
                todo.append(dep)
    todo = [r for r in todo if not store.finished(r)]
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    running: list[_Job] = []
    failed: list[Task] = []
    last_report = time.monotonic()
    print(f"{len(todo)} run(s) to do, {jobs} at a time, {threads} thread(s) each", flush=True)
    while todo or running:
        for job in list(running):
            code = job.proc.poll()
            if code is None:
                continue
            running.remove(job)
            job.log.close()
            wall = time.monotonic() - job.started
            if code == 0 and isinstance(job.run, Evaluation):
                store.write_evaluation(job.run, wall)
                print(f"[{job.run.key}] done ({wall / 60:.1f} min)")
            elif code == BUSY:
                _leave_busy(job.run, failed)
            elif code == 0:
                record = store.write_record(job.run, wall)
                shutil.rmtree(store.partial(job.run), ignore_errors=True)
                print(f"[{job.run.key}] done: acc {record['acc']:.2f} ({wall / 60:.1f} min)")
            else:
                failed.append(job.run)
                print(f"[{job.run.key}] FAILED (exit {code}); see {store.log(job.run)}")
        blocked = set(failed)
        for run in list(todo):
            if len(running) >= jobs:
                break
            if any(dep in blocked for dep in run.needs):
                todo.remove(run)
                failed.append(run)
                print(f"[{run.key}] skipped: a run it needs failed")
                continue
            if not all(store.finished(dep) for dep in run.needs):
                continue
            todo.remove(run)
            started = _start(run, store, threads)
            if started is None:
                _leave_busy(run, failed)
            else:
                running.append(started)
        if time.monotonic() - last_report >= report_every:
            last_report = time.monotonic()
            for job in running:
                print(_progress_line(store, job.run, time.monotonic() - job.started), flush=True)
        if running and not any(j.proc.poll() is not None for j in running):
            time.sleep(2.0)
        elif not running and todo:  # only runs waiting for failed dependencies remain
            break
    return failed


def _leave_busy(run: Task, failed: list[Task]) -> None:
    """Leave ``run`` to the study process that holds its lock (it counts as not done here)."""
    failed.append(run)
    print(f"[{run.key}] busy: another study process is running it; left to it")


def _start(run: Task, store: Store, threads: int) -> _Job | None:
    """Start ``run``'s child; None when another study process holds the run's lock."""
    store.root.mkdir(parents=True, exist_ok=True)
    spec_path = store.root / f"{run.key}.spec.json"
    probe = _try_lock(_lock_path(spec_path))  # touch nothing of a run another process holds
    if probe is None:
        return None
    probe.close()
    if isinstance(run, Evaluation):
        folder = store.restore(run.run)
        spec = {"kind": "evaluation", "function": run.function, "kwargs": dict(run.kwargs)}
        spec["out"] = str(folder)
        label = f"{run.function} of {run.run.key} {dict(run.kwargs)}"
    else:
        folder = store.folder(run)
        store.restore_partial(run)
        kwargs = {k: store.resolve(v) for k, v in run.kwargs.items()}
        spec = {"kind": "run", "trainer": run.trainer, "kwargs": kwargs, "seed": run.seed}
        spec["out"] = str(folder)
        label = f"{run.trainer} seed {run.seed} {_tokens(run.kwargs)}"
    spec_path.write_text(json.dumps(spec, indent=1))
    env = {**CHILD_ENV, **os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONHASHSEED": "0"}
    log = store.log(run).open("ab")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(spec_path)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    resumed = isinstance(run, Run) and folder.is_dir() and any(folder.iterdir())
    print(f"[{run.key}] {'resuming' if resumed else 'starting'}: {label}", flush=True)
    return _Job(run, proc, time.monotonic(), log)


# ------------------------------------------------------------------------------ aggregation
def summarise(rows: Sequence[Row], store: Store, baseline: str | None) -> list[dict[str, Any]]:
    """Per row: finished seeds, their accuracies, mean ± CI and the paired Δ vs ``baseline``."""
    from lab_common import mean_confidence_interval

    by_name: dict[str, dict[int, float]] = {}
    out = []
    for row in rows:
        accs = {
            seed: row.metric(store.record(task))
            for seed, task in zip(row.seeds, row.runs, strict=True)
            if store.finished(task)
        }
        by_name[row.name] = accs
    for row in rows:
        accs = by_name[row.name]
        entry: dict[str, Any] = {"name": row.name, "seeds": sorted(accs), "note": row.note}
        entry["acc"] = [round(accs[s], 3) for s in sorted(accs)]
        if accs:
            mean, half = mean_confidence_interval(list(accs.values()))
            entry.update(mean=round(mean, 3), ci95=round(half, 3))
        base = by_name.get(baseline or "", {})
        common = sorted(set(accs) & set(base))
        if baseline and row.name != baseline and common:
            diff = [accs[s] - base[s] for s in common]
            mean, half = mean_confidence_interval(diff)
            entry["paired"] = {
                "baseline": baseline,
                "seeds": common,
                "mean": round(mean, 3),
                "ci95": round(half, 3),
            }
        out.append(entry)
    return out


def plot_curves(rows: Sequence[Row], store: Store, path: Path, x_key: str) -> Path | None:
    """Mean accuracy curve of every row over its finished seeds (one line a row)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    drawn = False
    for row in rows:
        curves = [store.record(r)["curve"] for r in row.runs if store.finished(r)]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        xs = [curves[0][i][x_key] for i in range(n)]
        ys = [sum(c[i]["acc"] for c in curves) / len(curves) for i in range(n)]
        ax.plot(xs, ys, label=f"{row.name} ({len(curves)} seed{'' if len(curves) == 1 else 's'})")
        drawn = True
    if not drawn:
        return None
    ax.set_xlabel(x_key)
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def mean_ci(mean: float, ci95: float, seeds: int, sign: str = "") -> str:
    """``mean ± ci95`` (two decimals; ``sign="+"`` signs the mean), or ``mean (1 seed, no CI)``:
    an interval over seeds needs two of them at least."""
    value = f"{mean:{sign}.2f}"
    return f"{value} ± {ci95:.2f}" if seeds > 1 else f"{value} (1 seed, no CI)"


def _fmt_row(entry: dict[str, Any]) -> str:
    if "mean" not in entry:
        return f"| {entry['name']} | — | — | not run yet | |"
    seeds = ", ".join(f"{a:.2f}" for a in entry["acc"])
    paired = entry.get("paired")
    delta = mean_ci(paired["mean"], paired["ci95"], len(paired["seeds"]), "+") if paired else ""
    n = len(entry["seeds"])
    mean = mean_ci(entry["mean"], entry["ci95"], n)
    return f"| {entry['name']} | {n} | {mean} | {seeds} | {delta} |"


def write_report(
    study: str,
    *,
    title: str,
    protocol: dict[str, Any],
    rows: list[dict[str, Any]],
    baseline: str | None,
    command: str,
    text: str,
    curves: Path | None,
    extra: dict[str, Any] | None = None,
    sections: Sequence[str] = (),
    results: Path = RESULTS,
) -> tuple[Path, Path]:
    """Write ``<results>/<study>.md`` (``sections``: more Markdown after the table and the
    curves) and ``.json``; returns both paths."""
    results.mkdir(parents=True, exist_ok=True)
    payload = {
        "study": study,
        "machine": machine(),
        "command": command,
        "date": date.today().isoformat(),
        "protocol": protocol,
        "rows": rows,
        **(extra or {}),
    }
    json_path = results / f"{study}.json"
    json_path.write_text(json.dumps(payload, indent=1) + "\n")
    lines = [
        f"# {title}",
        "",
        text.strip(),
        "",
        f"Command: `{command}`  ",
        f"Machine: {payload['machine']}  ",
        f"Date: {payload['date']}",
        "",
        "Protocol: " + ", ".join(f"{k} {v}" for k, v in protocol.items()),
        "",
        f"| row | seeds | val. acc. (%) mean ± 95 % CI | per seed | paired Δ vs {baseline} |",
        "|---|---|---|---|---|",
        *(_fmt_row(r) for r in rows),
        "",
    ]
    if curves is not None:
        lines += [f"![curves]({curves.name})", ""]
    lines += [block for section in sections if section.strip() for block in (section.strip(), "")]
    md_path = results / f"{study}.md"
    md_path.write_text("\n".join(lines))
    return md_path, json_path


# ------------------------------------------------------------------------------ command line
def default_root() -> Path:
    """Where run folders live: ``$LAB_STUDY_ROOT``, else ``~/.cache/lab-studies``."""
    return Path(os.environ.get(ROOT_ENV, Path.home() / ".cache" / "lab-studies")).expanduser()


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (threads split)")
    p.add_argument("--root", type=Path, default=None, help=f"run folders (default ${ROOT_ENV})")
    p.add_argument("--threads", type=int, default=None, help="per run (default cores // jobs)")
    p.add_argument("--report-only", action="store_true", help="aggregate finished runs only")
    p.add_argument("--report-every", type=float, default=120.0, help="seconds between lines")
    p.add_argument("--only", nargs="*", default=None, help="run only these rows (names)")
    p.add_argument(
        "--save-partial",
        action="store_true",
        help="copy the checkpoints of unfinished runs into the records and exit (commit them "
        "so that another machine resumes the study exactly)",
    )
    return p


def study_main(
    study: str,
    rows: Sequence[Row],
    report: Callable[[Store, str], None],
    argv: Sequence[str] | None = None,
    description: str = "",
) -> int:
    """Parse the harness options, run ``rows``' unfinished runs, then ``report(store, command)``."""
    args = build_parser(description).parse_args(argv)
    if args.jobs < 1:
        raise SystemExit("--jobs must be >= 1")
    store = Store(args.root or default_root())
    command = "python " + " ".join([f"studies/{study}.py", *(argv or sys.argv[1:])])
    failed: list[Task] = []
    if args.save_partial:
        runs = {t if isinstance(t, Run) else t.run for row in rows for t in row.runs}
        runs |= {dep for r in runs for dep in r.needs}
        saved = [r.key for r in sorted(runs, key=lambda r: r.key) if store.save_partial(r)]
        print(f"saved the checkpoints of {len(saved)} unfinished run(s): {', '.join(saved)}")
        return 0
    if not args.report_only:
        chosen = [r for r in rows if args.only is None or r.name in args.only]
        # seed 0 of every row first, then seed 1, ...: paired comparisons fill in early
        runs = sorted(
            (run for row in chosen for run in row.runs),
            key=lambda t: t.seed if isinstance(t, Run) else t.run.seed,
        )
        failed = execute(
            runs, store, jobs=args.jobs, threads=args.threads, report_every=args.report_every
        )
    report(store, command)
    return 1 if failed else 0


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--child":
    sys.path.insert(0, str(REPO / "studies"))
    run_child(Path(sys.argv[2]))
