"""The distillation training loop shared by ``clkd.train`` and ``trg_kd.train``.

A method package calls :func:`run_distillation` with its :class:`~lab_common.distill.DistillConfig`
(or a subclass) and a *loss factory* ``make_loss(num_classes) -> nn.Module | None`` (``None``
trains the student with cross-entropy only, no teacher). The engine then:

1. loads the data (:func:`~lab_common.distill.build_datasets`, or the ``datasets`` given);
2. loads the teacher from ``teacher_checkpoint`` or trains it with cross-entropy and caches it
   there (default ``<out>/teacher.pt``);
3. distils the student through :class:`~lab_common.distill.Distiller`: SGD with the
   protocol schedule of the config, optional AMP, ``torchrun`` DDP (``batch_size`` per
   process), progress, JSON-lines metrics and PNG curves, an atomic checkpoint after every
   epoch (holding ``asdict(config)``) and exact ``resume``.

Exact resume: every epoch reseeds all RNGs from ``(seed, epoch, rank)`` before building its
data iterator, so an epoch's shuffling, augmentation and dropout do not depend on what ran
before it (also with DataLoader workers); the checkpoint holds the trainable weights,
optimiser, scheduler, grad scaler and epoch counter. A run killed at any point (even
``SIGKILL`` mid-epoch) and resumed ends bit-identical to an uninterrupted one.

The output folder follows :mod:`lab_common.runs.folder`: a fresh run refuses a non-empty ``out``
unless ``overwrite``; ``resume`` needs a phase checkpoint there and refuses settings that
differ from the checkpoint's ``config`` unless ``allow_changed`` names them (where and how the
run runs, :data:`RUN_ONLY_SETTINGS`, may always change); the metrics records a killed run wrote
after its checkpoint are dropped. Each phase checkpoint keeps its previous generation
(``student_last.prev.pt``), and a resume falls back to it with a warning when the newest file
is unreadable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..checkpoint import load_checkpoint, previous_generation, save_checkpoint
from ..cli import check_model_name, config_from_args, start_options
from ..data.longtail import dataset_targets, longtail_indices, shot_splits, split_accuracy
from ..device import autocast
from ..distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
)
from ..logging import progress
from ..runs import (
    ACCURACY,
    TrainingRun,
    check_resume_settings,
    load_optimizer_state,
    optimizer_step,
    prepare_run_dir,
    print_summary,
    summary_line,
    truncate_metrics,
    write_config,
)
from ..seeding import seed_everything
from .config import DistillConfig, default_milestones
from .data import DistillDatasets, SeededSamples, build_datasets
from .distiller import Distiller, FeatureFn, SupervisedModel, features_and_logits
from .evaluate import evaluate
from .models import ZOO_HINT, create_model, default_lr
from .teacher_cache import CachedViews, TeacherCache

__all__ = ["RUN_ONLY_SETTINGS", "DistillResult", "LossFactory", "run_distillation"]

#: ``make_loss(num_classes) -> loss module``, or ``None`` for a cross-entropy-only student.
LossFactory = Callable[[int], "nn.Module | None"]

#: Settings a resumed run may change without ``allow_changed``: where and how it runs, not
#: what it computes.
RUN_ONLY_SETTINGS = ("out", "device", "workers", "progress", "stop_after", "download")

_PHASES = ("teacher", "student")
#: What a distillation run writes in ``out``: what ``overwrite`` deletes (a ``teacher_checkpoint``
#: the run names as input excepted).
_RUN_FILES = (
    "config.json",
    "teacher_last.pt",
    "teacher_last.prev.pt",
    "teacher_metrics.jsonl",
    "teacher_curves.png",
    "teacher.pt",
    "student_last.pt",
    "student_last.prev.pt",
    "student_metrics.jsonl",
    "student_curves.png",
    "student.pt",
    "result.json",
)


@dataclass
class DistillResult:
    """What :func:`run_distillation` produced.

    ``student`` is in eval mode, unwrapped from DDP; it and ``teacher`` are None when
    ``stop_after`` ended the run during teacher training. ``metrics`` is the last epoch's
    record plus ``completed`` (False when ``stop_after`` stopped early).
    """

    student: nn.Module | None
    teacher: nn.Module | None
    metrics: dict[str, Any]
    out_dir: Path

    def summary(self, prog: str) -> str:
        """The console script's last line (:func:`lab_common.runs.summary_line`) of the
        student phase, or of the teacher's when the run stopped there."""
        phase = "student" if self.student is not None else "teacher"
        weights = self.out_dir / ("student.pt" if self.student is not None else "teacher_last.pt")
        return summary_line(prog, self.out_dir / f"{phase}_metrics.jsonl", weights)


def distill_main(
    prog: str,
    parser: argparse.ArgumentParser,
    config_cls: type[DistillConfig],
    train: Callable[..., DistillResult],
    argv: Sequence[str] | None,
) -> DistillResult:
    """A distillation trainer's command line without the exit status (``clkd-train``,
    ``trg-kd-train``): parse ``argv`` into ``config_cls``, ``train`` it with the start options,
    print the summary line; returns the engine's result."""
    args = parser.parse_args(argv)
    result = train(config_from_args(config_cls, args), **start_options(args))
    print_summary(result.summary(prog))
    return result


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + rank) % 2**31


def _memory_format(cfg: DistillConfig) -> torch.memory_format:
    """The layout of the models' and the batches' 4-d tensors (``cfg.channels_last``)."""
    return torch.channels_last if cfg.channels_last else torch.preserve_format


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("teacher.")}


def _scheduler(
    optimizer: torch.optim.Optimizer, cfg: DistillConfig, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The phase's per-epoch learning-rate schedule (``cfg.schedule``)."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    milestones = list(cfg.milestones) if cfg.milestones is not None else default_milestones(epochs)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.lr_decay)


def _kept(epoch: int) -> str:
    """What a run stopped in 0-based ``epoch`` leaves to resume from."""
    return f"the checkpoint after epoch {epoch} is kept" if epoch else "no checkpoint was written"


def _advance(scheduler: torch.optim.lr_scheduler.LRScheduler, epochs: int) -> None:
    """Step a fresh ``scheduler`` through ``epochs`` finished epochs (a resume's position)."""
    with warnings.catch_warnings():  # stepping without optimizer.step() is the point here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epochs):
            scheduler.step()


def _fit(
    model: Distiller | SupervisedModel,
    train_ds: Dataset,
    test_ds: Dataset,
    cfg: DistillConfig,
    ctx: DistContext,
    *,
    phase: str,
    epochs: int,
    lr: float,
    state: dict[str, Any] | None,
    cache: TeacherCache | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``epochs`` with checkpoints ``<out>/<phase>_last.pt``; final metrics.

    ``state`` is the phase checkpoint to continue from (None: start at epoch 0). With ``cache``
    the student sees the cached views and the distiller reads the teacher's stored outputs.
    Every epoch's items are drawn from ``(seed, epoch, index)`` alone, so they do not depend on
    the number of DataLoader workers.
    """
    run = TrainingRun(Path(cfg.out), ctx, epochs, prefix=f"{phase}_")
    train_ds = CachedViews(train_ds, cache.views) if cache is not None else SeededSamples(train_ds)
    sampler = run.sampler(train_ds, cfg.seed, cfg.batch_size)
    layout = _memory_format(cfg)
    params = list(model.trainable_parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = _scheduler(optimizer, cfg, epochs)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg.amp and ctx.device.type == "cuda")
    if state is not None:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        if unexpected or any(not k.startswith("teacher.") for k in missing):
            raise ValueError(f"{run.last} does not match the model: {missing=} {unexpected=}")
        # the moments are the checkpoint's, the settings this run's: an allowed change of
        # lr, momentum, weight decay or schedule applies from the resumed epoch on
        load_optimizer_state(optimizer, state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        run.start = state["epoch"]
        _advance(scheduler, run.start)
    if cfg.stop_after is not None:  # this many epochs in this invocation
        run.stop_after = run.start + cfg.stop_after
    if ctx.is_main:  # keep the records of finished epochs only (a kill may leave one more)
        truncate_metrics(run.metrics, "epoch", run.start)
    ddp = run.begin(model)  # config.json is the caller's: one for both phases
    record: dict[str, Any] = {}
    for epoch in run.remaining():
        seed_everything(_epoch_seed(cfg.seed, epoch, ctx.rank))
        train_ds.set_epoch(_epoch_seed(cfg.seed, epoch, 0))
        sampler.set_epoch(epoch)
        model.set_epoch(epoch, epochs)
        loader = DataLoader(
            train_ds,
            batch_size=cfg.batch_size,
            sampler=sampler,
            drop_last=True,
            num_workers=cfg.workers,
            pin_memory=ctx.device.type == "cuda",
        )
        ddp.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=ctx.device)
        tic = time.perf_counter()
        bar = progress(
            loader,
            enabled=ctx.is_main and cfg.progress,
            desc=f"{phase} {epoch + 1}/{epochs}",
            leave=False,
        )
        for batch in bar:
            x = batch[0].to(ctx.device, non_blocking=True, memory_format=layout)
            y = batch[1].to(ctx.device, non_blocking=True)
            extra = {}
            if cache is not None:  # items (x, y, position, view): the teacher's stored outputs
                extra["teacher_outputs"] = cache.lookup(batch[2], batch[3], ctx.device)
            with autocast(ctx.device, enabled=cfg.amp):
                logits, losses = ddp(x, y, **extra)
            loss = sum(v.float() for v in losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{phase} epoch {epoch + 1}: non-finite loss "
                    f"{ {k: v.item() for k, v in losses.items()} }; {_kept(epoch)}; lower --lr "
                    "or disable --amp"
                )
            optimizer_step(loss, optimizer, scaler)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            correct += (logits.detach().argmax(1) == y).sum()
        if ctx.distributed:  # BN statistics drift apart per rank; average them
            for name, buf in model.named_buffers():
                if buf.is_floating_point() and not name.startswith("teacher."):
                    buf.copy_(all_reduce_mean(buf))
        steps = len(loader)
        train_stats = {k: all_reduce_mean(v / steps).item() for k, v in sums.items()}
        train_acc = all_reduce_mean(correct / (steps * cfg.batch_size)).item() * 100
        record = {
            "epoch": epoch + 1,
            "lr": optimizer.param_groups[0]["lr"],
            **train_stats,
            "train_acc": train_acc,
            **evaluate(model.student, test_ds, ctx, amp=cfg.amp),
            "epoch_time": time.perf_counter() - tic,
        }
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"{phase} epoch {epoch + 1}: non-finite {', '.join(bad)} (the weights diverged); "
                f"{_kept(epoch)}; lower --lr or disable --amp"
            )
        scheduler.step()
        checkpoint = {
            "model": _trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch + 1,
            "config": asdict(cfg),
        }
        run.end_epoch(record, checkpoint)
        if ctx.is_main and cfg.progress:
            numbers = " ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float))
            print(f"[{phase}] epoch {epoch + 1}/{epochs} {numbers}", flush=True)
    run.finish(None)  # the curves; the weights are the caller's (teacher.pt, student.pt)
    if not record and run.start:  # nothing left to run: report the checkpointed state
        record = {"epoch": run.start, **evaluate(model.student, test_ds, ctx, amp=cfg.amp)}
    record["completed"] = run.stop_after is None or run.stop_after >= epochs
    return record


def _teacher_path(cfg: DistillConfig) -> Path:
    return Path(cfg.teacher_checkpoint or Path(cfg.out) / "teacher.pt")


def _teacher(
    cfg: DistillConfig,
    ctx: DistContext,
    train_ds: Dataset,
    test_ds: Dataset,
    num_classes: int,
    in_chans: int,
    state: dict[str, Any] | None,
) -> nn.Module | None:
    """Load the teacher from ``teacher_checkpoint``, or train it there with cross-entropy.

    ``state`` is the teacher phase's checkpoint to continue from. Returns None when
    ``stop_after`` ended this invocation during teacher training.
    """
    path = _teacher_path(cfg)
    seed_everything(cfg.seed)
    teacher = create_model(cfg.teacher, num_classes, in_chans, option="--teacher")
    teacher.to(ctx.device, memory_format=_memory_format(cfg))
    if not path.is_file():
        epochs = cfg.teacher_epochs or cfg.epochs
        result = _fit(
            SupervisedModel(teacher),
            train_ds,
            test_ds,
            cfg,
            ctx,
            phase="teacher",
            epochs=epochs,
            lr=cfg.teacher_lr,
            state=state,
        )
        if not result["completed"]:
            return None
        if ctx.is_main:
            state = {
                "model": teacher.state_dict(),
                "model_name": cfg.teacher,
                "num_classes": num_classes,
                "in_chans": in_chans,
                ACCURACY: result[ACCURACY],
                "config": asdict(cfg),
            }
            save_checkpoint(state, path)
        barrier()
    state = load_checkpoint(path, map_location=ctx.device)
    if state.get("model_name", cfg.teacher) != cfg.teacher:
        raise ValueError(
            f"{path} holds a {state['model_name']!r} teacher but --teacher is {cfg.teacher!r}"
        )
    try:
        teacher.load_state_dict(state.get("model", state))
    except RuntimeError as err:
        raise ValueError(
            f"teacher checkpoint {path} does not fit {cfg.teacher} with {num_classes} classes and "
            f"{in_chans} input channels: {err}"
        ) from err
    return teacher.eval()


def _teacher_cache(
    cfg: DistillConfig, ctx: DistContext, model: Distiller, train_ds: Dataset
) -> TeacherCache:
    """The teacher's stored outputs for ``cfg.teacher_cache`` views of every training image."""

    def teacher_fn(teacher: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        with autocast(ctx.device, enabled=cfg.amp):
            if model.needs_features:
                return model.teacher_features(teacher, x)
            return None, teacher(x)

    def bar(steps: Any) -> Any:
        desc = f"teacher cache ({cfg.teacher_cache} views)"
        return progress(steps, enabled=ctx.is_main and cfg.progress, desc=desc, leave=False)

    return TeacherCache.build_or_load(
        model.teacher,
        train_ds,
        teacher_fn,
        teacher_checkpoint=_teacher_path(cfg),
        views=cfg.teacher_cache,
        device=ctx.device,
        with_features=model.needs_features,
        progress=bar,
    )


def _kernel_flags() -> tuple[bool, bool, bool, bool]:
    """Torch's process-wide kernel switches that ``seed_everything(deterministic=True)`` sets."""
    cudnn = torch.backends.cudnn
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
    )


def _set_kernel_flags(flags: tuple[bool, bool, bool, bool]) -> None:
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = flags[2:]


def _resume_states(
    cfg: DistillConfig,
    ctx: DistContext,
    allow_changed: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """The phase checkpoints a resume continues from, ``{phase: state}``.

    The student phase's when it has one, the teacher phase's when the teacher is still to be
    trained (no teacher file yet). The settings of the newest one (the student's if it exists)
    are checked against ``cfg``. Each falls back to its previous generation with a warning
    when the newest file is unreadable.
    """
    paths = {phase: Path(cfg.out) / f"{phase}_last.pt" for phase in _PHASES}
    present = [p for p, f in paths.items() if f.is_file() or previous_generation(f).is_file()]
    teacher_done = _teacher_path(cfg).is_file()
    states = {
        phase: load_checkpoint(paths[phase], map_location=ctx.device, fallback=True)
        for phase in present
        if phase == "student" or not teacher_done or "student" not in present
    }
    if states:
        newest = "student" if "student" in states else "teacher"
        stored = states[newest].get("config")
        if stored is None:
            raise ValueError(
                f"{paths[newest]} holds no run settings ('config'): not a resume state of this "
                "trainer; start the run again with --overwrite"
            )
        check_resume_settings(
            stored, asdict(cfg), allow_changed=allow_changed, always_allowed=RUN_ONLY_SETTINGS
        )
    if teacher_done:
        states.pop("teacher", None)  # the teacher is loaded from its file, not trained
    return states


def _prepare_out(
    cfg: DistillConfig, *, resume: bool, overwrite: bool, extra_files: Sequence[str]
) -> None:
    """Apply :func:`lab_common.runs.prepare_run_dir` to ``cfg.out`` with the engine's files
    (and the teacher cache of a teacher kept in ``out``), plus ``extra_files``; then check that
    ``out`` is writable (``PermissionError`` otherwise)."""
    out = Path(cfg.out)
    exists = {
        phase: any(
            p.is_file()
            for p in (out / f"{phase}_last.pt", previous_generation(out / f"{phase}_last.pt"))
        )
        for phase in _PHASES
    }
    if resume and not overwrite and out.is_dir() and not any(exists.values()):
        raise FileNotFoundError(
            f"--resume: no student_last.pt or teacher_last.pt in {out}; start the run without "
            "--resume (add --overwrite if the folder holds files of an earlier attempt)"
        )
    checkpoint = (
        "teacher_last.pt" if exists["teacher"] and not exists["student"] else "student_last.pt"
    )
    prepare_run_dir(
        out,
        resume=resume,
        overwrite=overwrite,
        checkpoint=checkpoint,
        run_files=(*_RUN_FILES, *_cache_files(cfg), *extra_files),
        keep=(cfg.teacher_checkpoint,),
    )
    try:  # a read-only folder fails now, not at the end of the first teacher epoch
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=out)
    except OSError as err:
        raise PermissionError(
            f"--out {out}: cannot write in it ({err.strerror}); choose another --out"
        ) from err
    os.close(fd)
    os.unlink(probe)


def _longtail(
    cfg: DistillConfig, train_ds: Dataset, num_classes: int
) -> tuple[Dataset, torch.Tensor]:
    """The long-tailed subset of ``train_ds`` (``cfg.imbalance_ratio``) and its ``(C,)`` counts."""
    targets = dataset_targets(train_ds)
    keep = longtail_indices(
        targets,
        cfg.imbalance_ratio,
        n_max=cfg.lt_n_max,
        num_classes=num_classes,
        seed=cfg.subset_seed,
    )
    return Subset(train_ds, keep.tolist()), torch.bincount(targets[keep], minlength=num_classes)


@torch.no_grad()
def _shot_accuracy(
    cfg: DistillConfig,
    student: nn.Module,
    test_ds: Dataset,
    train_counts: torch.Tensor,
    ctx: DistContext,
) -> dict[str, Any]:
    """Accuracy over the many-, medium- and few-shot classes of a long-tailed run
    (``val_top1_{all,many,medium,few}``; null for a split without classes), the training
    counts and the splits."""
    splits = shot_splits(train_counts, many=cfg.many_shot, few=cfg.few_shot)
    student.eval()
    preds, labels = [], []
    for x, y in DataLoader(test_ds, batch_size=256):
        with autocast(ctx.device, enabled=cfg.amp):
            preds.append(student(x.to(ctx.device)).argmax(1).cpu())
        labels.append(torch.as_tensor(y))
    accs = split_accuracy(torch.cat(preds), torch.cat(labels), splits)
    return {
        "train_counts": train_counts.tolist(),
        "shot_splits": splits,
        **{f"{ACCURACY}_{k}": None if math.isnan(v) else v for k, v in accs.items()},
    }


def _cache_files(cfg: DistillConfig) -> tuple[str, ...]:
    """The teacher cache's folder and lock file when they live in ``out`` (default teacher)."""
    if not cfg.teacher_cache or cfg.teacher_checkpoint is not None:
        return ()
    folder = TeacherCache.folder_for("teacher.pt", cfg.teacher_cache).name
    return folder, f"{folder}.lock"


def run_distillation(
    config: DistillConfig,
    make_loss: LossFactory,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changed: Sequence[str] = (),
    datasets: DistillDatasets | None = None,
    student_features: FeatureFn = features_and_logits,
    teacher_features: FeatureFn = features_and_logits,
    run_files: Sequence[str] = (),
) -> DistillResult:
    """Train (or load) the teacher, then train the student with ``make_loss(num_classes)``.

    Args:
        config: the run (a :class:`DistillConfig` or a method's subclass of it).
        make_loss: the method's loss factory; returning ``None`` trains the student with
            cross-entropy only (no teacher is built or trained).
        resume: continue exactly from the phase checkpoints in ``config.out`` (``--resume``).
        overwrite: replace the previous run in a non-empty ``config.out`` (``--overwrite``).
        allow_changed: settings a resume may change from the checkpoint's
            (``--allow-changed lr epochs``); :data:`RUN_ONLY_SETTINGS` may always change.
        datasets: ``(train, test, num_classes, in_chans)`` to use instead of
            :func:`~lab_common.distill.build_datasets` (e.g. a long-tailed subset); items
            ``(x (C, H, W), label)``.
        student_features / teacher_features: feature functions for losses that need features.
        run_files: files the caller writes into ``config.out`` besides the engine's (e.g. a
            plot), so that ``overwrite`` replaces them too.

    With ``config.imbalance_ratio`` the student (and a teacher trained here) train on a
    long-tailed subset of the training split, and ``result.json`` adds ``train_counts``,
    ``shot_splits`` and ``val_top1_{all,many,medium,few}`` (null for a split without classes).

    Writes to ``config.out``: ``teacher.pt`` (unless ``teacher_checkpoint`` names an existing
    file), ``{teacher,student}_last.pt`` (resume state; the epoch before it as
    ``*_last.prev.pt``), ``*_metrics.jsonl``, ``*_curves.png``, ``student.pt`` and
    ``result.json``.

    Raises:
        ValueError: an unknown model name; changed settings on resume (naming each, with both
            values); a dataset smaller than one batch; unreadable checkpoints (``CheckpointError``).
        FileExistsError / FileNotFoundError: the output-folder rules (module docstring).
    """
    if not isinstance(config, DistillConfig):
        raise TypeError(f"config must be a DistillConfig, got {type(config).__name__}")
    check_model_name(config.student, timm.is_model, "--student", ZOO_HINT)
    check_model_name(config.teacher, timm.is_model, "--teacher", ZOO_HINT)
    kernels = _kernel_flags()
    ctx = init_distributed(device=config.device)
    try:
        if ctx.is_main:
            _prepare_out(config, resume=resume, overwrite=overwrite, extra_files=run_files)
        barrier()
        states = _resume_states(config, ctx, allow_changed) if resume else {}
        seed_everything(config.seed, deterministic=config.deterministic)
        train_ds, test_ds, num_classes, in_chans = datasets or build_datasets(config)
        if ctx.is_main:  # after the data loaded: a failed start leaves --out reusable
            write_config(config.out, asdict(config), "val" if config.val_images else "test")
        train_counts = None
        if config.imbalance_ratio is not None:
            train_ds, train_counts = _longtail(config, train_ds, num_classes)
        loss = make_loss(num_classes)
        teacher = None
        out_dir = Path(config.out)
        if loss is not None:
            teacher = _teacher(
                config, ctx, train_ds, test_ds, num_classes, in_chans, states.get("teacher")
            )
            if teacher is None:  # stop_after ended the run inside teacher training
                return DistillResult(None, None, {"phase": "teacher", "completed": False}, out_dir)
        seed_everything(config.seed)
        student = create_model(config.student, num_classes, in_chans, option="--student")
        if loss is None:
            model: Distiller | SupervisedModel = SupervisedModel(student)
        else:
            model = Distiller(
                student,
                teacher,
                loss,
                student_features=student_features,
                teacher_features=teacher_features,
            )
        model.to(ctx.device, memory_format=_memory_format(config))
        cache = None
        if config.teacher_cache and isinstance(model, Distiller):
            cache = _teacher_cache(config, ctx, model, train_ds)
        lr = config.lr if config.lr is not None else default_lr(config.student)
        metrics = _fit(
            model,
            train_ds,
            test_ds,
            config,
            ctx,
            phase="student",
            epochs=config.epochs,
            lr=lr,
            state=states.get("student"),
            cache=cache,
        )
        if train_counts is not None and metrics["completed"]:
            metrics.update(_shot_accuracy(config, student, test_ds, train_counts, ctx))
        if ctx.is_main and metrics["completed"]:
            state = {
                "model": student.state_dict(),
                "model_name": config.student,
                "num_classes": num_classes,
                "in_chans": in_chans,
                "metrics": metrics,
                "config": asdict(config),
            }
            save_checkpoint(state, out_dir / "student.pt")
            (out_dir / "result.json").write_text(json.dumps(metrics, indent=2))
        return DistillResult(student.eval(), teacher, metrics, out_dir)
    finally:
        _set_kernel_flags(kernels)  # ``deterministic`` holds for this run only
        cleanup_distributed()
