"""Meta-training CLI: ``python -m gp_maml.train`` / ``gp-maml-train``.

Writes to ``--out`` the files of ``RUN_FILES``: ``last.pt`` (atomic, every ``--ckpt-every``
iterations and at the end; the generation before as ``last.prev.pt``), ``best.pt`` (best
validation accuracy; none with ``--val-every 0``), ``config.json``, ``metrics.jsonl`` and
``curves.png``; ``--overwrite`` deletes these and nothing else. ``--resume`` continues exactly
from ``last.pt`` (parameters, optimizer, sampler and RNG states, iteration; ``last.prev.pt``
when ``last.pt`` is unreadable). A fresh run refuses a non-empty ``--out`` unless
``--overwrite``; ``--resume`` refuses settings that differ from the checkpoint's unless
``--allow-changed`` names them (the run-only settings ``device``, ``progress``, ``threads``
and ``out`` may always differ; the ``FIXED`` ones never), and a changed setting applies from
the resume on (the learning-rate schedule is recomputed from the settings at the resumed
iteration). A non-finite loss stops the run with a ``FloatingPointError`` before any
non-finite state is saved. Every checkpoint records the classes it trained on
(``train_classes``), which ``gp-maml-evaluate`` refuses to test on. Python callers pass a
``TrainConfig`` to ``train``; the command line only builds one. One process, or
``torchrun --nproc_per_node P``: each process meta-learns on ``--batch-size / P`` tasks of every
meta-batch and the meta-gradient is averaged (the update of one process with all of them).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lab_common import (
    DistContext,
    all_reduce_mean,
    average_gradients,
    load_checkpoint,
    mean_confidence_interval,
    progress,
    save_checkpoint,
    seed_everything,
)
from lab_common.cli import (
    HelpFormatter,
    add_run_arguments,
    config_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_console,
    start_options,
)
from lab_common.runs import (
    ACCURACY,
    TrainingRun,
    check_resume_settings,
    load_optimizer_state,
    print_summary,
    summary_line,
)

from .backbones import create_backbone
from .batching import BATCHING
from .data import EpisodeSampler, FewShotDataset
from .datasets import DATASETS, load_split
from .learners import (
    METHODS,
    PRESETS,
    MetaLearner,
    create_learner,
    paper_settings,
    tpn_relation_net,
)
from .picking import check_picking_rule

__all__ = ["TrainConfig", "build_learner", "cli", "evaluate_tasks", "main", "train"]

BACKBONES = ("conv4-32", "conv4-64", "resnet12")
RELATION_NETS = ("mlp", "tpn")
RUN_ONLY = ("device", "progress", "threads", "out")
#: The paper's code re-creates its Adam optimiser every 100 meta-iterations (``preset="paper"``).
PAPER_MOMENT_RESTART = 100
"""Settings a ``--resume`` may change without ``--allow-changed`` (they do not change the
run's numbers)."""
FIXED = (
    "method",
    "preset",
    "backbone",
    "dataset",
    "ways",
    "relation_net",
    "separate_lp_encoder",
    "seed",
)
"""Settings a ``--resume`` may not change: the checkpoint's learner is of that model, and its
sampler's and torch's RNG states continue the seed's streams."""
RUN_FILES = ("last.pt", "last.prev.pt", "best.pt", "config.json", "metrics.jsonl", "curves.png")
"""What a run writes in ``--out``: what ``--overwrite`` deletes."""


@dataclass(frozen=True)
class TrainConfig:
    """Meta-training settings (defaults follow the paper's code where it has one).

    ``batch_size`` is the number of tasks per meta-batch (``--batch-size``), the whole
    meta-batch: under ``torchrun`` each of the processes takes an equal share of its tasks and
    the meta-gradient is averaged over them, the same update as one process. ``threads`` sets
    torch's CPU threads (0: torch's default). Use ``TrainConfig.from_dict`` for a dict stored in a checkpoint
    (it also reads older checkpoints' ``meta_batch``).

    ``preset="paper"`` is the paper's code's rules (``learners.paper_rules``): it sets
    ``lp_loss_weight=1.0`` (another value than the package default or the paper's is refused
    as contradictory), ``class_mass_norm=False``, ``self_loops=True``, ``relation_net="tpn"``,
    ``separate_lp_encoder`` for GP-ANIL, ``pick_pool=75`` for GP methods (the code's ``pic_num``:
    the class-balanced pick at meta-training among the 75 most confident queries) and
    ``moment_restart=100`` (the code re-creates its Adam optimiser at every outer iteration of
    100 batches, so the moments and bias correction restart), and meta-tests the final
    checkpoint: no ``best.pt`` is written (validation is still logged). Its learning rates,
    Adam 1e-3 -> 1e-4 at 10k -> 1e-5 at 20k of 30k iterations, are the default ones. The default preset keeps the self-loops too
    (``self_loops=False`` zeroes the graph's diagonal); each of the other rules can be switched
    on alone (``relation_net="tpn"``, ``separate_lp_encoder``, ``class_mass_norm=False``); GP
    methods only, they are inert for base learners.

    ``alphabets`` (Omniglot): train on these alphabets of ``data_root`` only (``()``: all).
    ``val_rotations`` (Omniglot): the validation characters' four rotations are classes too, as
    the training characters' are with ``rotate`` (small1's 13 held-out characters give 52
    classes: enough for 20-way validation tasks).
    """

    method: str = "gp-maml"
    preset: str = "default"
    backbone: str = "conv4-64"
    dataset: str = "omniglot"
    data_root: str = ""
    alphabets: tuple[str, ...] = ()
    out: str = "runs/gp-maml"
    ways: int = 5
    shots: int = 1
    queries: int = 15
    batch_size: int = 4
    iterations: int = 30000
    inner_lr: float = 0.5
    inner_steps: int = 1
    first_order: bool = False
    lp_loss_weight: float = 0.01
    class_mass_norm: bool = True
    self_loops: bool = True
    relation_net: str = "mlp"
    separate_lp_encoder: bool = False
    pick_threshold: float | None = None
    fallback_threshold: float | None = None
    pick_pool: int | None = None
    lr: float = 1e-3
    #: restart Adam's moments (re-create the optimiser) every N meta-iterations; 0: never.
    moment_restart: int = 0
    milestones: tuple[int, ...] = (10000, 20000)
    gamma: float = 0.1
    rotate: bool = True
    val_rotations: bool = False
    val_every: int = 500
    val_tasks: int = 200
    ckpt_every: int = 100
    log_every: int = 10
    task_batching: str = "auto"
    compiled: bool = False
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        for name, choices in (
            ("method", METHODS),
            ("preset", PRESETS),
            ("backbone", BACKBONES),
            ("dataset", DATASETS),
            ("task_batching", BATCHING),
            ("relation_net", RELATION_NETS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"unknown {name} {getattr(self, name)!r}; choose one of {tuple(choices)}"
                )
        if self.preset == "paper":
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            paper = {**paper_settings(self.method), "moment_restart": PAPER_MOMENT_RESTART}
            for name, value in paper.items():
                if getattr(self, name) not in (defaults[name], value):
                    raise ValueError(
                        f"preset='paper' sets {name}={value!r}, got {getattr(self, name)!r}; "
                        "drop the option or use preset='default'"
                    )
                object.__setattr__(self, name, value)
        if not self.method.startswith("gp-"):
            gp_only = ("separate_lp_encoder", "pick_threshold", "fallback_threshold", "pick_pool")
            for name in gp_only:
                if getattr(self, name) not in (None, False):
                    raise ValueError(
                        f"{name} applies to GP methods only, not {self.method!r}; drop "
                        f"--{name.replace('_', '-')} or use a gp-* method"
                    )
        if self.ways < 2:
            raise ValueError(f"ways must be >= 2, got {self.ways}")
        for name in (
            "shots",
            "queries",
            "batch_size",
            "iterations",
            "inner_steps",
            "val_tasks",
            "ckpt_every",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("inner_lr", "gamma"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.pick_pool is not None and self.pick_pool < 1:
            raise ValueError(f"pick_pool must be >= 1 queries or None (all), got {self.pick_pool}")
        for name in ("lr", "lp_loss_weight", "threads", "moment_restart"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_picking_rule(self.pick_threshold, self.fallback_threshold)
        if self.val_every < 0:
            raise ValueError(f"val_every must be >= 0 (0: no validation), got {self.val_every}")
        if not isinstance(self.milestones, tuple) or any(m < 0 for m in self.milestones):
            raise ValueError(
                f"milestones must be a tuple of iterations >= 0, got {self.milestones!r}"
            )
        if not isinstance(self.alphabets, tuple):
            raise ValueError(f"alphabets must be a tuple of names, got {self.alphabets!r}")
        if self.alphabets and self.dataset != "omniglot":
            raise ValueError(
                f"alphabets applies to omniglot only, not {self.dataset!r}; drop --alphabets"
            )
        if self.val_rotations and self.dataset != "omniglot":
            raise ValueError(
                f"val_rotations applies to omniglot only, not {self.dataset!r}; drop "
                "--val-rotations"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """The config of ``values`` (e.g. a checkpoint's ``"config"``); lists become tuples,
        an older checkpoint's ``meta_batch`` is read as ``batch_size``, a config without
        ``self_loops`` gets ``False`` (the graph it was trained with), and a base learner's
        picking thresholds (inert) are dropped."""
        values = dict(values)
        # written before the field existed, when the graph's diagonal was always zeroed
        values.setdefault("self_loops", False)
        if not values.get("method", cls.method).startswith("gp-"):
            values.pop("pick_threshold", None)
            values.pop("fallback_threshold", None)
        if "meta_batch" in values:
            values.setdefault("batch_size", values.pop("meta_batch"))
        for name in ("milestones", "alphabets"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)


def build_learner(cfg: TrainConfig, data: FewShotDataset) -> MetaLearner:
    """The learner of ``cfg`` sized for ``data``'s images."""
    _, chans, size, _ = data.images.shape
    model = create_backbone(cfg.backbone, in_chans=chans, num_classes=cfg.ways, img_size=size)
    gp = cfg.method.startswith("gp-")
    return create_learner(
        cfg.method,
        model,
        preset=cfg.preset,
        inner_lr=cfg.inner_lr,
        inner_steps=cfg.inner_steps,
        first_order=cfg.first_order,
        lp_loss_weight=cfg.lp_loss_weight,
        class_mass_norm=cfg.class_mass_norm,
        self_loops=cfg.self_loops,
        relation_net=tpn_relation_net(model) if gp and cfg.relation_net == "tpn" else None,
        separate_lp_encoder=cfg.separate_lp_encoder,
        pick_threshold=cfg.pick_threshold,
        fallback_threshold=cfg.fallback_threshold,
        pick_pool=cfg.pick_pool,
        task_batching=cfg.task_batching,
        compiled=cfg.compiled,
    )


def evaluate_tasks(
    learner: MetaLearner,
    sampler: EpisodeSampler,
    tasks: int,
    batch_size: int,
    device: torch.device,
    show_progress: bool = False,
    shard: tuple[int, int] = (0, 1),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Query accuracy (percent) of each of ``tasks`` episodes, ``batch_size`` tasks per forward,
    and the pseudo-labelled queries picked per task (zeros for base learners; a GP task with 0
    picks fell back to ``theta'``); both ``(tasks,)``.

    ``shard=(rank, world)``: this process evaluates the batches ``rank``, ``rank + world``, ...
    of the same episodes and leaves the other tasks' entries 0, so the ranks' results sum
    (``all_reduce``) to the whole evaluation.
    """
    rank, world = shard
    learner.eval()
    accs, picks = torch.zeros(tasks), torch.zeros(tasks)
    steps = list(enumerate(range(0, tasks, batch_size)))
    for index, start in progress(steps, enabled=show_progress, desc="eval", leave=False):
        ep = sampler.sample_batch(min(batch_size, tasks - start))
        if index % world != rank:
            continue
        ep = ep.to(device)
        with torch.no_grad():
            out = learner(ep.xs, ep.ys, ep.xq, ep.yq)
        done = slice(start, start + len(ep.ys))
        accs[done] = (out.logits.argmax(-1) == ep.yq).float().mean(1).cpu() * 100
        picks[done] = out.picked.reshape(-1).cpu().float()
    learner.train()
    return accs, picks


def load_run_split(cfg: TrainConfig, split: str) -> FewShotDataset:
    """``split`` (``"train"``, ``"val"``, ``"test"``) of ``cfg``'s data as the run uses it:
    Omniglot's training characters rotation-augmented with ``rotate``, its validation
    characters with ``val_rotations``."""
    data = load_split(cfg.dataset, cfg.data_root, split, alphabets=cfg.alphabets)
    rotated = {"train": cfg.rotate, "val": cfg.val_rotations}.get(split, False)
    if cfg.dataset == "omniglot" and rotated:
        data = data.with_rotations()
    return data


def _scheduled_lr(cfg: TrainConfig, iteration: int) -> float:
    """The learning rate after ``iteration`` steps of ``cfg``'s schedule, computed as
    ``MultiStepLR`` does (the same float operations: a resumed run matches bit for bit)."""
    lr = cfg.lr
    for milestone, count in sorted(Counter(cfg.milestones).items()):
        if milestone <= iteration:
            lr *= cfg.gamma**count
    return lr


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changed: Sequence[str] = (),
) -> dict:
    """Meta-train with ``cfg``; returns the last logged metrics and the best validation accuracy
    (``-1.0`` without validation).

    Args:
        resume: continue from ``<cfg.out>/last.pt`` (or ``last.prev.pt``, with a warning, when
            ``last.pt`` is unreadable); metrics records written after that checkpoint are
            dropped. A resume with nothing left to train leaves the folder as it is.
        overwrite: delete a previous run's files (``RUN_FILES``) in ``cfg.out``, and nothing
            else (a fresh run refuses a non-empty folder otherwise).
        allow_changed: with ``resume``, settings that may differ from the checkpoint's (e.g.
            ``("iterations", "lr")``; not the ``FIXED`` ones); they apply from the resume on.
            ``RUN_ONLY`` settings always may.

    Raises:
        FileExistsError: a fresh run into a non-empty ``cfg.out`` without ``overwrite``.
        ValueError: changed or fixed settings on resume, ``cfg.iterations`` below the
            checkpoint's iteration, or a corrupt checkpoint (``CheckpointError``).
        FloatingPointError: a non-finite loss (or parameters); the checkpoints written before
            it are kept, and no non-finite state is saved.
    """
    run = TrainingRun.open(
        cfg, RUN_FILES, resume=resume, overwrite=overwrite, unit="iteration", keep=(cfg.data_root,)
    )
    ctx = run.ctx
    if resume:  # before any data is read: a refused resume fails at once
        check_resume_settings(
            load_checkpoint(run.last, fallback=True)["config"],
            asdict(cfg),
            allow_changed=allow_changed,
            always_allowed=RUN_ONLY,
            fixed=FIXED,
        )
    if cfg.batch_size % ctx.world_size:
        raise ValueError(
            f"--batch-size {cfg.batch_size} tasks do not split evenly over {ctx.world_size} "
            f"processes; pass a multiple of {ctx.world_size}"
        )
    share = cfg.batch_size // ctx.world_size
    tasks = slice(ctx.rank * share, (ctx.rank + 1) * share)  # this rank's share of a meta-batch
    seed_everything(cfg.seed)  # the same learner on every rank
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = ctx.device
    train_data = load_run_split(cfg, "train")
    val_data = load_run_split(cfg, "val") if cfg.val_every else None
    if val_data is not None and val_data.num_classes < cfg.ways:
        rotations = "" if cfg.val_rotations or cfg.dataset != "omniglot" else ", --val-rotations"
        raise ValueError(
            f"the validation split of {cfg.data_root} has {val_data.num_classes} classes, "
            f"fewer than ways={cfg.ways}; use a dataset with more classes{rotations} or "
            "--val-every 0 (train without validation; evaluate last.pt)"
        )
    sampler = EpisodeSampler(train_data, cfg.ways, cfg.shots, cfg.queries, seed=cfg.seed)
    learner = build_learner(cfg, train_data).to(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.milestones), cfg.gamma)
    best = -1.0
    if resume:  # the checkpoint's RNG states back, later metrics dropped (lab_common.runs)
        state = run.restore(
            asdict(cfg), allow_changed=allow_changed, always_allowed=RUN_ONLY, fixed=FIXED
        )
        best = state["best_val"]
        learner.load_state_dict(state["learner"])
        load_optimizer_state(optimizer, state["optimizer"])  # cfg's lr, from the resume on
        scheduler.last_epoch = run.start
        for group in optimizer.param_groups:
            group["lr"] = _scheduled_lr(cfg, run.start)
        sampler.load_state_dict(state["sampler"])
    run.begin(learner, asdict(cfg), "val", wrap=False)  # gradients: average_gradients
    saved = run.start if resume else None

    def diverged(step: int, what: str) -> FloatingPointError:
        if saved is None:
            return FloatingPointError(
                f"iteration {step}: {what}: the run diverged before its first checkpoint; "
                "lower --lr or --inner-lr and start again with --overwrite"
            )
        return FloatingPointError(
            f"iteration {step}: {what}: the run diverged; lower --lr or --inner-lr. {run.last} "
            f"holds iteration {saved}, the last finite state: continue from it with --resume "
            "--allow-changed lr inner_lr, or start again with --overwrite"
        )

    def run_state(iteration: int) -> dict[str, Any]:
        if not all(torch.isfinite(p).all() for p in learner.parameters()):
            raise diverged(iteration, "non-finite parameters")
        return {
            "learner": learner.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.state_dict(),
            "iteration": iteration,
            "best_val": best,
            "config": asdict(cfg),
            "train_classes": list(train_data.class_names),
        }

    record: dict = {}
    per_task_backward = learner.resolved_batching(device) == "loop"
    show = cfg.progress and ctx.is_main
    bar = progress(run.remaining(), total=cfg.iterations - run.start, enabled=show, desc=cfg.method)
    for it in bar:
        step = it + 1
        ep = sampler.sample_batch(cfg.batch_size)[tasks].to(device)
        optimizer.zero_grad(set_to_none=True)
        if per_task_backward:  # same gradients, one task's graph alive at a time
            result = learner.forward_backward(ep.xs, ep.ys, ep.xq, ep.yq)
        else:
            result = learner(ep.xs, ep.ys, ep.xq, ep.yq)
            result.loss.backward()
        average_gradients(learner.parameters())  # the whole meta-batch's mean under torchrun
        stats = torch.stack([result.loss.detach(), result.accuracy, result.picked.float().mean()])
        loss, accuracy, picked = all_reduce_mean(stats).tolist()
        if not math.isfinite(loss):
            raise diverged(step, f"non-finite loss {loss}")
        optimizer.step()
        scheduler.step()
        if cfg.moment_restart and step % cfg.moment_restart == 0:
            optimizer.state.clear()  # as a re-created optimiser: moments and step count restart
        if step % cfg.log_every == 0 or step == cfg.iterations:
            lr = scheduler.get_last_lr()[0]
            record = run.log(
                {"iteration": step, "loss": loss, "train_acc": accuracy, "picked": picked, "lr": lr}
            )
            if show:
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{accuracy:.1f}")
        if val_data is not None and (step % cfg.val_every == 0 or step == cfg.iterations):
            acc, ci = _validate(learner, val_data, cfg, ctx)
            record = run.log({"iteration": step, ACCURACY: acc, f"{ACCURACY}_ci95": ci})
            if acc > best:
                best = acc
                if cfg.preset != "paper":  # the paper meta-tests the last checkpoint
                    state = run_state(step)  # on every rank: a non-finite learner stops all
                    if ctx.is_main:
                        save_checkpoint(state, run.out / "best.pt")
        if step % cfg.ckpt_every == 0 or step == cfg.iterations:
            run.checkpoint(run_state(step))
            saved = step
    run.finish(None)  # curves.png; the weights are in last.pt and best.pt
    run.close()
    return {**record, f"best_{ACCURACY}": best}


def _validate(
    learner: MetaLearner, data: FewShotDataset, cfg: TrainConfig, ctx: DistContext
) -> tuple[float, float]:
    """Mean validation accuracy and its 95 % CI over ``cfg.val_tasks`` tasks (the same tasks at
    every validation), their batches shared out over the ranks."""
    sampler = EpisodeSampler(data, cfg.ways, cfg.shots, cfg.queries, seed=cfg.seed + 1)
    shard = (ctx.rank, ctx.world_size)
    accs, _ = evaluate_tasks(
        learner, sampler, cfg.val_tasks, cfg.batch_size, ctx.device, shard=shard
    )
    if ctx.distributed:
        accs = accs.to(ctx.device)
        torch.distributed.all_reduce(accs)
    return mean_confidence_interval(accs.cpu())


def _parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="gp-maml-train",
        description=__doc__.splitlines()[0],
        epilog="--batch-size is the number of tasks per meta-batch, split evenly over the "
        "processes under torchrun (the same update as one process with the whole meta-batch).",
        formatter_class=HelpFormatter,
    )
    add_run_arguments(p, d, duration="iterations", data_root_required=True)
    g = p.add_argument_group("task")
    g.add_argument("--method", default=d.method, choices=METHODS)
    g.add_argument(
        "--preset",
        default=d.preset,
        choices=PRESETS,
        help="paper: the paper's code's rules (self-loops, raw scores, TPN loss weight 1, TPN "
        "relation net, GP-ANIL's separate encoder; meta-test last.pt)",
    )
    g.add_argument("--backbone", default=d.backbone, choices=BACKBONES)
    g.add_argument("--dataset", default=d.dataset, choices=DATASETS)
    g.add_argument("--ways", type=positive_int, default=d.ways, help="classes per task (>= 2)")
    g.add_argument("--shots", type=positive_int, default=d.shots, help="support images per class")
    g.add_argument("--queries", type=positive_int, default=d.queries, help="queries per class")
    g.add_argument(
        "--alphabets",
        nargs="+",
        default=list(d.alphabets),
        metavar="ALPHABET",
        help="Omniglot: train on these alphabets of --data-root only (default: all)",
    )
    g.add_argument(
        "--no-rotate",
        dest="rotate",
        action="store_false",
        help="Omniglot: no rotation-augmented training classes",
    )
    g.add_argument(
        "--val-rotations",
        action="store_true",
        help="Omniglot: the validation characters' rotations are classes too (e.g. for 20-way "
        "validation on a small dataset)",
    )
    g = p.add_argument_group("learner")
    g.add_argument("--inner-lr", type=positive_float, default=d.inner_lr)
    g.add_argument("--inner-steps", type=positive_int, default=d.inner_steps)
    g.add_argument("--first-order", action="store_true")
    g.add_argument("--lp-loss-weight", type=non_negative_float, default=d.lp_loss_weight)
    g.add_argument(
        "--no-class-mass-norm",
        dest="class_mass_norm",
        action="store_false",
        help="GP methods: pick pseudo-labels from the raw propagated scores",
    )
    g.add_argument(
        "--no-self-loops",
        dest="self_loops",
        action="store_false",
        help="GP methods: zero the graph's diagonal (Zhou et al.; the default keeps each "
        "node's link to itself, as the paper's code)",
    )
    g.add_argument(
        "--relation-net",
        default=d.relation_net,
        choices=RELATION_NETS,
        help="GP methods: the scale network of label propagation (tpn: TPN's, the paper's code)",
    )
    g.add_argument(
        "--separate-lp-encoder",
        action="store_true",
        help="GP methods: embed for label propagation with a separate encoder trained by the "
        "TPN loss only (the paper's code, for GP-ANIL)",
    )
    g.add_argument(
        "--pick-threshold",
        type=positive_float,
        default=d.pick_threshold,
        help="GP methods: pick every query with at least this share of its propagated mass on "
        "one class, instead of the class-balanced rule (default)",
    )
    g.add_argument(
        "--fallback-threshold",
        type=positive_float,
        default=d.fallback_threshold,
        help="GP methods: class-balanced picking, and where it picks nothing, every query with "
        "at least this share of its mass on one class (default: none, keep θ′ there)",
    )
    g.add_argument(
        "--pick-pool",
        type=positive_int,
        default=d.pick_pool,
        help="GP methods: at meta-training, pick class-balanced among the N most confident "
        "queries only (the paper's code: 75; default: all)",
    )
    g.add_argument("--task-batching", default=d.task_batching, choices=BATCHING)
    g.add_argument(
        "--compile",
        dest="compiled",
        action="store_true",
        help="torch.compile the per-task meta-gradient (loop mode; see MetaLearner)",
    )
    g = p.add_argument_group("optimisation and bookkeeping")
    g.add_argument("--lr", type=non_negative_float, default=d.lr, help="Adam learning rate")
    g.add_argument(
        "--moment-restart",
        type=non_negative_int,
        default=d.moment_restart,
        metavar="N",
        help="restart Adam's moments every N meta-iterations, as re-creating the optimiser "
        "(the paper's code: 100; default 0: never)",
    )
    g.add_argument(
        "--milestones",
        type=non_negative_int,
        nargs="*",
        default=list(d.milestones),
        help="iterations where the learning rate is multiplied by --gamma",
    )
    g.add_argument("--gamma", type=positive_float, default=d.gamma)
    g.add_argument(
        "--val-every", type=non_negative_int, default=d.val_every, help="0: no validation"
    )
    g.add_argument("--val-tasks", type=positive_int, default=d.val_tasks)
    g.add_argument("--ckpt-every", type=positive_int, default=d.ckpt_every)
    g.add_argument("--log-every", type=positive_int, default=d.log_every)
    g.add_argument(
        "--threads", type=non_negative_int, default=d.threads, help="torch CPU threads (0: default)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, train, print the summary line; returns the final metrics."""
    args = _parser().parse_args(argv)
    cfg = config_from_args(TrainConfig, args)
    result = train(cfg, **start_options(args))
    out = Path(cfg.out)
    weights = out / "best.pt" if (out / "best.pt").is_file() else out / "last.pt"
    print_summary(summary_line("gp-maml-train", out / "metrics.jsonl", weights, x_key="iteration"))
    return result


def cli() -> int:
    """Console-script entry point: exit status 0 on success, 2 on a user error, 1 (one line)
    when the run diverges (a non-finite loss)."""
    return run_console(main, prog="gp-maml-train")


if __name__ == "__main__":
    raise SystemExit(cli())
