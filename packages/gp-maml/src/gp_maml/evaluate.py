"""Meta-test CLI: ``python -m gp_maml.evaluate`` / ``gp-maml-evaluate``.

Loads a checkpoint written by ``gp_maml.train`` and reports the mean query accuracy over
``--tasks`` episodes (default 10,000; at least 600) with a 95% confidence interval. Options
share the trainers' names and meanings (``--data-root``, ``--batch-size``, ``--seed``,
``--device``, ``--no-progress``); ``--out`` names a JSON file for the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from lab_common import load_checkpoint, resolve_device, seed_everything
from lab_common.cli import add_deprecated_alias, non_negative_int, positive_int, run_console

from .data import EpisodeSampler
from .datasets import load_split
from .train import TrainConfig, build_learner, evaluate_tasks

__all__ = ["cli", "evaluate", "main"]


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path | None = None,
    *,
    split: str = "test",
    tasks: int = 10000,
    batch_size: int | None = None,
    seed: int = 0,
    device: str = "auto",
    min_tasks: int = 600,
    threads: int = 0,
    show_progress: bool = True,
) -> dict:
    """Meta-test ``checkpoint`` on ``split``; returns ``{"accuracy", "ci95", "tasks", ...}``.

    Args:
        checkpoint: ``best.pt`` or ``last.pt`` of ``gp_maml.train``.
        data_root: the test data (default: the checkpoint's training root).
        split: ``"train"``, ``"val"`` or ``"test"``.
        tasks: test episodes (at least ``min_tasks``).
        batch_size: tasks per forward (default: the training ``batch_size``).
        seed: seed of the test episodes.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        threads: torch CPU threads (0: torch's default).
        show_progress: progress bar or progress lines.
    """
    if tasks < min_tasks:
        raise ValueError(f"tasks={tasks} is too few for a meaningful 95% CI; use >= {min_tasks}")
    state = load_checkpoint(checkpoint)
    cfg = dataclasses.replace(TrainConfig.from_dict(state["config"]), progress=False)
    if data_root is not None:
        cfg = dataclasses.replace(cfg, data_root=str(data_root))
    seed_everything(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    data = load_split(cfg.dataset, cfg.data_root, split)
    learner = build_learner(cfg, data).to(dev)
    learner.load_state_dict(state["learner"])
    sampler = EpisodeSampler(data, cfg.ways, cfg.shots, cfg.queries, seed=seed)
    batch = batch_size or cfg.batch_size
    acc, ci = evaluate_tasks(learner, sampler, tasks, batch, dev, show_progress)
    return {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "ways": cfg.ways,
        "shots": cfg.shots,
        "tasks": tasks,
        "accuracy": acc,
        "ci95": ci,
        "iteration": state["iteration"],
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gp-maml-evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt from gp-maml-train")
    p.add_argument("--data-root", default=None, help="test data (default: the training root)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--tasks", type=positive_int, default=10000, help="test episodes (>= 600)")
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="tasks per forward (default: the training --batch-size)",
    )
    add_deprecated_alias(p, "--batch", "--batch-size", "batch_size", type=positive_int)
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
    result = evaluate(
        a.checkpoint,
        a.data_root,
        split=a.split,
        tasks=a.tasks,
        batch_size=a.batch_size,
        seed=a.seed,
        device=a.device,
        show_progress=a.progress,
        threads=a.threads,
    )
    print(
        f"{result['method']} {result['ways']}-way {result['shots']}-shot: "
        f"{result['accuracy']:.2f} +- {result['ci95']:.2f} % over {result['tasks']} tasks"
    )
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    return result


def cli() -> int:
    """Console-script entry point: exit status 0 on success, 2 on a user error."""
    return run_console(main)


if __name__ == "__main__":
    raise SystemExit(cli())
