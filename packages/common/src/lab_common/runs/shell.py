"""The run shell of an epoch-based trainer: everything around its own step and evaluation.

A trainer opens a run, builds its data, model and optimiser, restores the checkpoint when
resuming, and hands each finished epoch's record and state to the shell::

    run = EpochRun.open(out, device=cfg.device, resume=resume, overwrite=overwrite,
                        run_files=RUN_FILES, epochs=cfg.epochs, stop_after=cfg.stop_after_epoch)
    ...                                         # data, model, optimiser (the trainer's)
    if resume:
        state = run.restore(asdict(cfg), allow_changed=..., always_allowed=..., fixed=...)
    ddp = run.begin(model, asdict(cfg), eval_split="val")
    for epoch in run.epochs_left():             # 0-based indices of the epochs left
        ...                                     # the trainer's step and evaluation
        run.end_epoch(record, state)            # log -> checkpoint (+ previous) -> barrier
    run.finish(weights)                         # model.pth, curves.png
    run.close()                                 # leave the process group

The folder rules and the checkpoint's RNG states are :mod:`~lab_common.runs.folder`'s, the
files :mod:`~lab_common.runs.output`'s.
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

from ..checkpoint import save_checkpoint
from ..distributed import DistContext, barrier, cleanup_distributed, init_distributed
from ..logging import MetricsLogger, plot_metrics
from .folder import prepare_run_dir, resume_run_state, save_run_state
from .output import write_config

__all__ = ["EpochRun", "optimizer_step"]


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
class EpochRun:
    """One epoch-based run in its folder ``out`` (``last.pt``, ``metrics.jsonl``, ...).

    ``start`` is the number of finished epochs (the checkpoint's after :meth:`restore`);
    ``stop_after`` ends this invocation after that epoch (``--stop-after-epoch``); ``prefix``
    names the files of one phase of a run with several (``"student_"``: ``student_last.pt``,
    ``student_metrics.jsonl``, ``student_curves.png``).
    """

    out: Path
    ctx: DistContext
    epochs: int
    stop_after: int | None = None
    start: int = 0
    prefix: str = ""
    logger: MetricsLogger | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        out: str | os.PathLike[str],
        *,
        device: str,
        resume: bool,
        overwrite: bool,
        run_files: Iterable[str],
        epochs: int,
        stop_after: int | None = None,
        keep: Iterable[str | os.PathLike[str] | None] = (),
    ) -> EpochRun:
        """Join ``torchrun``'s process group (or run alone) and apply the folder rules
        (:func:`~lab_common.runs.folder.prepare_run_dir`, main rank, then a barrier)."""
        ctx = init_distributed(device=device)
        if ctx.is_main:
            prepare_run_dir(out, resume=resume, overwrite=overwrite, run_files=run_files, keep=keep)
        barrier()
        return cls(Path(out), ctx, epochs, stop_after)

    @property
    def last(self) -> Path:
        """The resume checkpoint, ``<out>/<prefix>last.pt``."""
        return self.out / f"{self.prefix}last.pt"

    @property
    def metrics(self) -> Path:
        """The metrics log, ``<out>/<prefix>metrics.jsonl``."""
        return self.out / f"{self.prefix}metrics.jsonl"

    def restore(self, settings: Mapping[str, Any], **rules: Any) -> dict[str, Any]:
        """The checkpoint's state, with every rank's RNG states restored, the settings checked
        (``rules``: :func:`~lab_common.runs.folder.resume_run_state`'s) and the metrics of
        later epochs dropped; sets :attr:`start`."""
        state = resume_run_state(self.last, settings, self.ctx, **rules)
        self.start = state["epoch"]
        return state

    def begin(
        self,
        model: nn.Module,
        settings: Mapping[str, Any] | None = None,
        eval_split: str = "val",
    ) -> nn.Module:
        """Write ``config.json`` (main rank, when epochs remain; ``settings`` None: the caller
        wrote it) and open the metrics log; returns ``model`` wrapped for DDP under
        ``torchrun``."""
        if settings is not None and self.ctx.is_main and self.start < self.epochs:
            write_config(self.out, settings, eval_split)
        self.logger = MetricsLogger(self.metrics, enabled=self.ctx.is_main)
        if not self.ctx.distributed:
            return model
        cuda = self.ctx.device.type == "cuda"
        return DistributedDataParallel(model, device_ids=[self.ctx.device] if cuda else None)

    def epochs_left(self) -> Iterator[int]:
        """The 0-based indices of the epochs to run in this invocation."""
        for epoch in range(self.start, self.epochs):
            yield epoch
            if self.stop_after is not None and epoch + 1 >= self.stop_after:
                return

    def end_epoch(self, record: Mapping[str, Any], state: dict[str, Any]) -> None:
        """Log ``record`` (main rank), checkpoint ``state`` with every rank's RNG states
        (the previous generation kept as ``last.prev.pt``), then wait for every rank."""
        assert self.logger is not None, "begin() opens the metrics log"
        self.logger.log(**record)
        save_run_state(state, self.last, self.ctx)
        barrier()

    def finish(self, weights: Mapping[str, torch.Tensor] | None, name: str = "model.pth") -> None:
        """Save ``weights`` as ``<out>/<name>`` (None: the caller saves its own) and plot
        ``<prefix>curves.png`` (main rank, once an epoch is logged)."""
        if self.ctx.is_main and self.metrics.is_file() and self.metrics.stat().st_size:
            if weights is not None:
                save_checkpoint(weights, self.out / name)
            plot_metrics(self.metrics, self.out / f"{self.prefix}curves.png")

    def close(self) -> None:
        """Leave the process group (:meth:`open` joined it)."""
        cleanup_distributed()
