"""Meta-test CLI: ``python -m gp_maml.evaluate`` / ``gp-maml-evaluate``.

Loads a checkpoint written by ``gp_maml.train`` and reports the mean query accuracy over
``--tasks`` episodes (default 10,000; at least 600) with a 95% confidence interval.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lab_common import load_checkpoint, resolve_device, seed_everything

from .data import EpisodeSampler
from .datasets import load_split
from .train import TrainConfig, build_learner, evaluate_tasks

__all__ = ["evaluate", "main"]


def evaluate(
    checkpoint: str | Path,
    data_root: str | Path | None = None,
    *,
    split: str = "test",
    tasks: int = 10000,
    batch: int | None = None,
    seed: int = 0,
    device: str = "auto",
    min_tasks: int = 600,
    threads: int = 0,
    show_progress: bool = True,
) -> dict:
    """Meta-test ``checkpoint`` on ``split``; returns ``{"accuracy", "ci95", "tasks", ...}``."""
    if tasks < min_tasks:
        raise ValueError(f"tasks={tasks} is too few for a meaningful 95% CI; use >= {min_tasks}")
    state = load_checkpoint(checkpoint)
    cfg = TrainConfig(**{**state["config"], "progress": False})
    if data_root is not None:
        cfg.data_root = str(data_root)
    seed_everything(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    data = load_split(cfg.dataset, cfg.data_root, split)
    learner = build_learner(cfg, data).to(dev)
    learner.load_state_dict(state["learner"])
    sampler = EpisodeSampler(data, cfg.ways, cfg.shots, cfg.queries, seed=seed)
    acc, ci = evaluate_tasks(learner, sampler, tasks, batch or cfg.meta_batch, dev, show_progress)
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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="gp-maml-evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt from gp-maml-train")
    p.add_argument("--data-root", default=None, help="test data (default: the training root)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--tasks", type=int, default=10000)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--out", default=None, help="optional JSON file for the result")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    a = p.parse_args(argv)
    result = evaluate(
        a.checkpoint, a.data_root, split=a.split, tasks=a.tasks, batch=a.batch, seed=a.seed,
        device=a.device, show_progress=a.progress, threads=a.threads,
    )  # fmt: skip
    print(f"{result['method']} {result['ways']}-way {result['shots']}-shot: "
          f"{result['accuracy']:.2f} +- {result['ci95']:.2f} % over {result['tasks']} tasks")  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
