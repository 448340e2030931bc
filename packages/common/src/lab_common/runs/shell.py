"""The run shell of a trainer: everything around its own step and evaluation.

A trainer opens a run, builds its data, model and optimiser, restores the checkpoint when
resuming, and hands each finished epoch's record and state to the shell::

    run = TrainingRun.open(cfg, RUN_FILES, resume=resume, overwrite=overwrite)
    ...                                         # data, model, optimiser (the trainer's)
    sampler = run.sampler(train_ds, cfg.seed, cfg.batch_size)  # this rank's share
    if resume:
        state = run.restore(asdict(cfg), allow_changed=..., always_allowed=..., fixed=...)
    ddp = run.begin(model, asdict(cfg), eval_split="val")
    for epoch in run.remaining():               # 0-based indices of the epochs left
        ...                                     # the trainer's step and evaluation
        run.end_epoch(record, state)            # log -> checkpoint (+ previous) -> barrier
    run.finish(weights)                         # model.pth, curves.png
    run.close()                                 # leave the process group

An iteration-based trainer opens it with ``unit="iteration"`` (``length`` iterations; its
checkpoints hold ``state["iteration"]``, its records ``"iteration"``) and calls :meth:`log` and
:meth:`checkpoint` at its own intervals instead of :meth:`end_epoch`. The folder rules and the
checkpoint's RNG states are :mod:`~lab_common.runs.folder`'s, the files
:mod:`~lab_common.runs.output`'s.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from ..checkpoint import save_checkpoint
from ..distributed import DistContext, barrier, cleanup_distributed, init_distributed
from ..logging import MetricsLogger, plot_metrics
from .folder import prepare_run_dir, resume_run_state, save_run_state
from .output import write_config

__all__ = ["TrainingRun", "UNITS", "optimizer_step"]

#: What a run counts: its length, its checkpoints' progress and its records' x-axis.
UNITS = ("epoch", "iteration")


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    clip: tuple[nn.Module, float] | None = None,
) -> None:
    """One training step of every trainer: zero the gradients, back-propagate the (scaled)
    ``loss``, clip the gradient norm of ``clip = (model, max_norm)``'s parameters (unscaled
    first), step and update the scaler."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(clip[0].parameters(), clip[1])
    scaler.step(optimizer)
    scaler.update()


@dataclass
class TrainingRun:
    """One run of ``length`` epochs (or iterations: ``unit``) in its folder ``out``
    (``last.pt``, ``metrics.jsonl``, ...).

    ``start`` is the number of finished epochs (the checkpoint's after :meth:`restore`);
    ``stop_after`` ends this invocation after that epoch (``--stop-after-epoch``); ``prefix``
    names the files of one phase of a run with several (``"student_"``: ``student_last.pt``,
    ``student_metrics.jsonl``, ``student_curves.png``).
    """

    out: Path
    ctx: DistContext
    length: int
    unit: str = "epoch"
    stop_after: int | None = None
    start: int = 0
    prefix: str = ""
    logger: MetricsLogger | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unknown unit {self.unit!r}; choose one of {UNITS}")

    @classmethod
    def open(
        cls,
        cfg: Any,
        run_files: Iterable[str],
        *,
        resume: bool,
        overwrite: bool,
        unit: str = "epoch",
        keep: Iterable[str | os.PathLike[str] | None] = (),
    ) -> TrainingRun:
        """Join ``torchrun``'s process group (or run alone) and apply the folder rules
        (:func:`~lab_common.runs.folder.prepare_run_dir`, main rank, then a barrier) for the
        trainer config ``cfg``: its ``out``, ``device``, length (``epochs`` or ``iterations``,
        by ``unit``) and, where it has one, ``stop_after_epoch``."""
        ctx = init_distributed(device=cfg.device)
        if ctx.is_main:
            prepare_run_dir(
                cfg.out, resume=resume, overwrite=overwrite, run_files=run_files, keep=keep
            )
        barrier()
        length, stop_after = getattr(cfg, f"{unit}s"), getattr(cfg, f"stop_after_{unit}", None)
        return cls(Path(cfg.out), ctx, length, unit, stop_after)

    @property
    def last(self) -> Path:
        """The resume checkpoint, ``<out>/<prefix>last.pt``."""
        return self.out / f"{self.prefix}last.pt"

    @property
    def metrics(self) -> Path:
        """The metrics log, ``<out>/<prefix>metrics.jsonl``."""
        return self.out / f"{self.prefix}metrics.jsonl"

    def sampler(self, dataset: Dataset, seed: int, batch_size: int) -> DistributedSampler:
        """This rank's shuffled share of ``dataset`` (the whole of it alone), the same shares
        for a ``seed`` and an epoch (``set_epoch``); the remainder is dropped. Refuses a
        share smaller than one ``batch_size`` (per process)."""
        size, world = len(dataset), self.ctx.world_size  # type: ignore[arg-type]
        if size // world < batch_size:
            raise ValueError(
                f"{size} training samples over {world} process(es) give {size // world} per "
                f"process, fewer than one global batch (--batch-size {batch_size} per process); "
                "lower --batch-size"
            )
        return DistributedSampler(
            dataset,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )

    def restore(self, settings: Mapping[str, Any], **rules: Any) -> dict[str, Any]:
        """The checkpoint's state, with every rank's RNG states restored, the settings checked
        (``rules``: :func:`~lab_common.runs.folder.resume_run_state`'s) and the metrics of
        later epochs dropped; sets :attr:`start`."""
        state = resume_run_state(
            self.last,
            settings,
            self.ctx,
            metrics=self.metrics,
            metrics_key=self.unit,
            length_key=f"{self.unit}s",
            **rules,
        )
        self.start = state[self.unit]
        return state

    def begin(
        self,
        model: nn.Module,
        settings: Mapping[str, Any] | None = None,
        eval_split: str = "val",
        wrap: bool = True,
    ) -> nn.Module:
        """Write ``config.json`` (main rank, when epochs remain; ``settings`` None: the caller
        wrote it) and open the metrics log; returns ``model`` wrapped for DDP under
        ``torchrun`` (``wrap=False``: as it is, the trainer averages its own gradients)."""
        if settings is not None and self.ctx.is_main and self.start < self.length:
            write_config(self.out, settings, eval_split)
        self.logger = MetricsLogger(self.metrics, enabled=self.ctx.is_main)
        if not (self.ctx.distributed and wrap):
            return model
        cuda = self.ctx.device.type == "cuda"
        return DistributedDataParallel(model, device_ids=[self.ctx.device] if cuda else None)

    def remaining(self) -> Iterator[int]:
        """The 0-based indices of the epochs (iterations) to run in this invocation."""
        for step in range(self.start, self.length):
            yield step
            if self.stop_after is not None and step + 1 >= self.stop_after:
                return

    def log(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``record`` to the metrics log (main rank); returns it as logged."""
        assert self.logger is not None, "begin() opens the metrics log"
        return self.logger.log(**record)

    def checkpoint(self, state: dict[str, Any]) -> None:
        """Checkpoint ``state`` with every rank's RNG states (the previous generation kept as
        ``last.prev.pt``), then wait for every rank. Call it on every rank."""
        save_run_state(state, self.last, self.ctx)
        barrier()

    def end_epoch(self, record: Mapping[str, Any], state: dict[str, Any]) -> None:
        """:meth:`log` ``record``, then :meth:`checkpoint` ``state``."""
        self.log(record)
        self.checkpoint(state)

    def finish(self, weights: Mapping[str, torch.Tensor] | None, name: str = "model.pth") -> None:
        """Save ``weights`` as ``<out>/<name>`` (None: the caller saves its own) and plot
        ``<prefix>curves.png`` against the :attr:`unit` (main rank, once a record is logged)."""
        if self.ctx.is_main and self.metrics.is_file() and self.metrics.stat().st_size:
            if weights is not None:
                save_checkpoint(weights, self.out / name)
            plot_metrics(self.metrics, self.out / f"{self.prefix}curves.png", x_key=self.unit)

    def close(self) -> None:
        """Leave the process group (:meth:`open` joined it)."""
        cleanup_distributed()
