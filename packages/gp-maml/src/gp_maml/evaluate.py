"""Meta-test CLI: ``python -m gp_maml.evaluate`` / ``gp-maml-evaluate``.

Loads a checkpoint written by ``gp_maml.train`` and reports the mean query accuracy over
``--tasks`` episodes (default 10,000; at least 600) with a 95% confidence interval. The test
data is always explicit (``--data-root``, no fallback to the training root), and classes the
checkpoint trained on are refused unless ``--allow-train-classes``, and so is a checkpoint with
non-finite weights (a diverged run). Options share the
trainers' names and meanings (``--data-root``, ``--batch-size``, ``--seed``, ``--device``,
``--no-progress``); ``--out`` names a JSON file for the result, checked to be writable before
the evaluation starts and written atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from lab_common import load_checkpoint, mean_confidence_interval, resolve_device, seed_everything
from lab_common.cli import (
    non_negative_int,
    positive_float,
    positive_int,
    run_console,
)

from .data import EpisodeSampler
from .train import TrainConfig, build_learner, evaluate_tasks, load_run_split

__all__ = ["cli", "evaluate", "main"]


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path,
    *,
    split: str = "test",
    alphabets: Sequence[str] = (),
    tasks: int = 10000,
    queries: int | None = None,
    pick_threshold: float | None = None,
    fallback_threshold: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    min_tasks: int = 600,
    threads: int = 0,
    allow_train_classes: bool = False,
    show_progress: bool = True,
) -> dict:
    """Meta-test ``checkpoint`` on ``split`` of ``data_root``; returns ``{"accuracy", "ci95",
    "tasks", ...}``.

    Args:
        checkpoint: ``best.pt`` or ``last.pt`` of ``gp_maml.train`` (``last.pt`` falls back to
            ``last.prev.pt``, with a warning, when unreadable).
        data_root: the test data (required: there is no fallback to the training root).
        split: ``"train"``, ``"val"`` or ``"test"``, as the run used it (``load_run_split``:
            Omniglot's training / validation characters rotation-augmented as configured).
        alphabets: Omniglot: test on these alphabets of ``data_root`` only (``()``: all).
        tasks: test episodes (at least ``min_tasks``).
        queries: test queries per class (default: the training ``queries``); 1 is a user
            classifying one new item of each class.
        pick_threshold: GP learners: test with confidence-threshold picking at this share
            (``MetaLearner``'s ``pick_threshold``; default: the checkpoint's rule).
        fallback_threshold: GP learners: test with class-balanced picking that falls back to
            this confidence share where it picks nothing (``MetaLearner``'s
            ``fallback_threshold``). Either threshold replaces the checkpoint's picking rule;
            both are refused for a base learner (MAML, ANIL, BOIL), which picks nothing.
        batch_size: tasks per forward (default: the training ``batch_size``).
        seed: seed of the test episodes.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        threads: torch CPU threads (0: torch's default).
        allow_train_classes: test even on classes the checkpoint trained on (the result is then
            not a test accuracy).
        show_progress: progress bar or progress lines.

    Raises:
        ValueError: too few tasks, test classes the checkpoint trained on (named), a checkpoint
            with non-finite weights, or a picking threshold for a base learner.
    """
    if tasks < min_tasks:
        raise ValueError(
            f"tasks={tasks} is too few for a meaningful 95% CI; use >= {min_tasks} "
            "(--tasks), or lower --min-tasks for a quick look"
        )
    if data_root is None or str(data_root) == "":
        raise ValueError("data_root is required: pass the test data (--data-root)")
    state = load_checkpoint(checkpoint, fallback=True)
    weights = state["learner"]
    bad = [k for k, v in weights.items() if v.is_floating_point() and not v.isfinite().all()]
    if bad:
        raise ValueError(
            f"{checkpoint} holds non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): its run "
            "diverged; evaluate an earlier checkpoint (best.pt, last.prev.pt) or train again "
            "with a lower --lr / --inner-lr"
        )
    cfg = dataclasses.replace(
        TrainConfig.from_dict(state["config"]),
        progress=False,
        data_root=str(data_root),
        alphabets=tuple(alphabets),
    )
    if pick_threshold is not None or fallback_threshold is not None:
        if not cfg.method.startswith("gp-"):
            option = "--pick-threshold" if pick_threshold is not None else "--fallback-threshold"
            raise ValueError(
                f"{option} applies to GP learners only; {checkpoint} holds a {cfg.method!r} "
                "learner, which picks no queries: drop the option"
            )
        cfg = dataclasses.replace(
            cfg, pick_threshold=pick_threshold, fallback_threshold=fallback_threshold
        )
    data = load_run_split(cfg, split)  # e.g. validation classes rotated as in training
    trained = state.get("train_classes")
    if trained is None:
        warnings.warn(
            f"{checkpoint} does not record the classes it trained on (written by gp-maml 0.1); "
            "make sure the test data is disjoint from the training data",
            stacklevel=2,
        )
    else:
        seen = sorted(set(data.class_names) & set(trained))
        if seen and not allow_train_classes:
            raise ValueError(
                f"{len(seen)} of the {len(data.class_names)} test classes of {data_root} "
                f"({split}) were trained on by {checkpoint} (e.g. {', '.join(seen[:3])}): "
                "that is no test; pass test data without them (e.g. --alphabets), or "
                "--allow-train-classes if you mean it"
            )
    seed_everything(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    learner = build_learner(cfg, data).to(dev)
    learner.load_state_dict(state["learner"])
    queries = queries or cfg.queries
    sampler = EpisodeSampler(data, cfg.ways, cfg.shots, queries, seed=seed)
    batch = batch_size or cfg.batch_size
    accs, picks = evaluate_tasks(learner, sampler, tasks, batch, dev, show_progress)
    acc, ci = mean_confidence_interval(accs)
    return {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "data_root": str(data_root),
        "split": split,
        "alphabets": list(alphabets),
        "ways": cfg.ways,
        "shots": cfg.shots,
        "queries": queries,
        "pick_threshold": cfg.pick_threshold,
        "fallback_threshold": cfg.fallback_threshold,
        "tasks": tasks,
        "accuracy": acc,
        "ci95": ci,
        # GP learners: mean pseudo-labelled queries per task, and how often none was picked
        "picked_mean": picks.mean().item(),
        "fallback_rate": (picks == 0).float().mean().item() if learner.gp else 0.0,
        "iteration": state["iteration"],
        # the same seed gives the same episodes: paired differences between checkpoints
        "per_task_accuracy": [round(a, 4) for a in accs.tolist()],
    }


def check_writable(path: str | Path) -> Path:
    """Check that a result file can be written at ``path`` (before any long work).

    Raises:
        ValueError: ``path`` is a folder.
        FileNotFoundError: its folder does not exist.
        PermissionError: its folder is not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--out {p} is a folder; name a JSON file")
    if not p.parent.is_dir():
        raise FileNotFoundError(f"--out {p}: folder {p.parent} does not exist; create it first")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    except OSError as err:
        raise PermissionError(f"--out {p}: cannot write in {p.parent} ({err.strerror})") from err
    os.close(fd)
    os.unlink(probe)
    return p


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="gp-maml-evaluate", description=__doc__.splitlines()[0]
    )
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt from gp-maml-train")
    p.add_argument(
        "--data-root", required=True, help="test data (required; never the training classes)"
    )
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "--alphabets",
        nargs="+",
        default=[],
        metavar="ALPHABET",
        help="Omniglot: test on these alphabets of --data-root only (default: all)",
    )
    p.add_argument(
        "--allow-train-classes",
        action="store_true",
        help="test even on classes the checkpoint trained on (then it is no test accuracy)",
    )
    p.add_argument(
        "--tasks", type=positive_int, default=10000, help="test episodes (>= --min-tasks)"
    )
    p.add_argument(
        "--min-tasks",
        type=positive_int,
        default=600,
        help="the fewest episodes accepted (a quick look: --tasks 20 --min-tasks 20; the CI is "
        "then wide)",
    )
    p.add_argument(
        "--queries",
        type=positive_int,
        default=None,
        help="test queries per class (default: the training --queries)",
    )
    p.add_argument(
        "--pick-threshold",
        type=positive_float,
        default=None,
        help="GP learners: pick queries by this confidence share instead of the checkpoint's "
        "rule (see gp-maml-train --pick-threshold)",
    )
    p.add_argument(
        "--fallback-threshold",
        type=positive_float,
        default=None,
        help="GP learners: class-balanced picking, falling back to this confidence share where "
        "it picks nothing, instead of the checkpoint's rule (see gp-maml-train)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="tasks per forward (default: the training --batch-size)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the test episodes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch CPU threads (0: default)"
    )
    p.add_argument("--out", default=None, help="optional JSON file for the result")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, meta-test, print one summary line and return the result."""
    a = _parser().parse_args(argv)
    out = check_writable(a.out) if a.out else None
    result = evaluate(
        a.checkpoint,
        a.data_root,
        split=a.split,
        alphabets=a.alphabets,
        tasks=a.tasks,
        min_tasks=a.min_tasks,
        queries=a.queries,
        pick_threshold=a.pick_threshold,
        fallback_threshold=a.fallback_threshold,
        batch_size=a.batch_size,
        seed=a.seed,
        device=a.device,
        show_progress=a.progress,
        threads=a.threads,
        allow_train_classes=a.allow_train_classes,
    )
    print(
        f"{result['method']} {result['ways']}-way {result['shots']}-shot: "
        f"{result['accuracy']:.2f} +- {result['ci95']:.2f} % over {result['tasks']} tasks, "
        f"{result['queries']} queries per class"
        + (
            f"; {result['picked_mean']:.1f} queries picked per task, no pick (theta' kept) in "
            f"{100 * result['fallback_rate']:.1f} % of tasks"
            if result["method"].startswith("gp-")
            else ""
        )
    )
    if out is not None:
        _write_atomic(out, json.dumps(result, indent=2))
    return result


def cli() -> int:
    """Console-script entry point: exit status 0 on success, 2 on a user error."""
    return run_console(main, prog="gp-maml-evaluate")


if __name__ == "__main__":
    raise SystemExit(cli())
