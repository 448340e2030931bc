"""``trg-kd-train`` / ``python -m trg_kd.train``: teacher training or loading, then TRG distillation.

The library entry point is :func:`train`, which takes a frozen :class:`TrainConfig` (the
shared :class:`lab_common.distill.DistillConfig` plus the TRG, long-tail and t-SNE fields);
the command line only builds that config::

    from trg_kd.train import TrainConfig, train
    result = train(TrainConfig(dataset="fashion-mnist", imbalance_ratio=100, out="runs/lt"))

Built on the shared engine :mod:`lab_common.distill` (data, teacher cache, SGD protocol, AMP,
atomic checkpoints + ``--resume``, ``torchrun`` DDP, progress, JSON lines, PNG curves) with
the TRG loss and options on top: ``--imbalance-ratio`` for a long-tailed training set (with
many/medium/few-shot test accuracy in ``result.json``), ``--method kd|ce`` baselines (``kd``
is :class:`lab_common.distill.KDLoss` with CE 1 and KD λ = ``--kd-weight``), and ``--tsne N``
for a t-SNE plot of the student's features on N test images.

Under ``torchrun`` the token graph is gathered across ranks by default (``--graph gathered``):
student nodes through an autograd all-gather, so the loss and its gradient equal those of one
process holding the global batch; ``--graph per-rank`` builds one graph per rank from its own
images only (no communication, smaller graph). ``--batch-size`` is per process.

Example (Fashion-MNIST, long-tailed ρ = 100, few epochs on CPU)::

    trg-kd-train --dataset fashion-mnist --teacher cifar_resnet20 --student cifar_resnet8 \\
        --epochs 5 --imbalance-ratio 100 --out runs/fmnist_lt --tsne 500
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader

from lab_common.cli import (
    HelpFormatter,
    check_model_name,
    config_from_args,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_console,
)
from lab_common.distill import (
    ZOO_HINT,
    DistillConfig,
    DistillDatasets,
    DistillResult,
    KDLoss,
    add_distill_arguments,
    build_datasets,
    create_model,
    distill_main,
    run_distillation,
)
from trg_kd.contrastive import TemperatureSchedule
from trg_kd.extraction import TokenExtractor
from trg_kd.tokens import align_token_grids
from trg_kd.trg import TRGConfig, TRGLoss

__all__ = [
    "TrainConfig",
    "build_parser",
    "check_graph_settings",
    "cli",
    "main",
    "parse_config",
    "train",
]

_DEFAULTS = TRGConfig()


@dataclass(frozen=True)
class TrainConfig(DistillConfig):
    """A ``trg-kd-train`` run: :class:`~lab_common.distill.DistillConfig` plus TRG's fields.

    Attributes:
        method: ``trg``; ``kd`` (CE + λ·KD only); ``ce`` (the student without a teacher).
        kd_weight ... chunk_size: the :class:`~trg_kd.TRGConfig` fields (``tau_*`` its
            temperature schedule); ``kd_weight`` and ``kd_temperature`` also set ``kd``.
        graph: under torchrun, one graph over all ranks' tokens (``gathered``) or one per rank.
        tsne: t-SNE plot of the student's features on N test images (0: none).
    """

    method: Literal["trg", "kd", "ce"] = "trg"
    kd_weight: float = _DEFAULTS.kd_weight
    kd_temperature: float = _DEFAULTS.kd_temperature
    inner_weight: float = _DEFAULTS.inner_weight
    local_weight: float = _DEFAULTS.local_weight
    global_weight: float = _DEFAULTS.global_weight
    k: int = _DEFAULTS.k
    sigma: float = _DEFAULTS.sigma
    tokens_per_image: int = _DEFAULTS.tokens_per_image
    tau_start: float = _DEFAULTS.temperature.start
    tau_end: float = _DEFAULTS.temperature.end
    tau_schedule: Literal["cosine", "linear", "exp", "constant"] = _DEFAULTS.temperature.kind
    chunk_size: int = _DEFAULTS.chunk_size
    graph: Literal["gathered", "per-rank"] = "gathered"
    tsne: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = {"method": ("trg", "kd", "ce"), "graph": ("gathered", "per-rank")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.tsne < 0:
            raise ValueError(f"tsne (--tsne) must be >= 0 test images, got {self.tsne}")
        if self.kd_temperature <= 0:
            raise ValueError(
                f"kd_temperature (--kd-temperature) must be > 0, got {self.kd_temperature}"
            )
        self.trg_config()  # the loss fields are validated by TRGConfig

    def trg_config(self) -> TRGConfig:
        """The :class:`~trg_kd.TRGConfig` these fields describe."""
        return TRGConfig(
            kd_weight=self.kd_weight,
            kd_temperature=self.kd_temperature,
            inner_weight=self.inner_weight,
            local_weight=self.local_weight,
            global_weight=self.global_weight,
            k=self.k,
            sigma=self.sigma,
            tokens_per_image=self.tokens_per_image,
            temperature=TemperatureSchedule(self.tau_start, self.tau_end, self.tau_schedule),
            chunk_size=self.chunk_size,
            gather_distributed=self.graph == "gathered",
            seed=self.seed,
        )


def build_parser() -> argparse.ArgumentParser:
    """The shared distillation command line plus TRG, long-tail and t-SNE options."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="trg-kd-train",
        description="TRG: knowledge distillation via a token-level relationship graph",
        formatter_class=HelpFormatter,
    )
    add_distill_arguments(p, d)
    g = p.add_argument_group("TRG loss (defaults from the Fashion-MNIST sweep, see README)")
    g.add_argument(
        "--method",
        choices=("trg", "kd", "ce"),
        default=d.method,
        help="trg; kd = CE + λ·KD only; ce = student without a teacher",
    )
    g.add_argument("--kd-weight", type=non_negative_float, default=d.kd_weight, help="λ")
    g.add_argument("--kd-temperature", type=positive_float, default=d.kd_temperature)
    g.add_argument(
        "--inner-weight", type=non_negative_float, default=d.inner_weight, help="α, contextual"
    )
    g.add_argument(
        "--local-weight",
        type=non_negative_float,
        default=d.local_weight,
        help="β, local-preserving",
    )
    g.add_argument(
        "--global-weight",
        type=non_negative_float,
        default=d.global_weight,
        help="γ, global InfoNCE",
    )
    g.add_argument("--k", type=positive_int, default=d.k, help="graph neighbours per node")
    g.add_argument("--sigma", type=positive_float, default=d.sigma, help="Gaussian kernel width")
    g.add_argument("--tokens-per-image", type=positive_int, default=d.tokens_per_image)
    g.add_argument("--tau-start", type=positive_float, default=d.tau_start)
    g.add_argument("--tau-end", type=positive_float, default=d.tau_end)
    g.add_argument(
        "--tau-schedule", default=d.tau_schedule, choices=("cosine", "linear", "exp", "constant")
    )
    g.add_argument(
        "--chunk-size", type=positive_int, default=d.chunk_size, help="k-NN rows per block"
    )
    g.add_argument(
        "--graph",
        choices=("gathered", "per-rank"),
        default=d.graph,
        help="under torchrun: one graph over all ranks' tokens, or one per rank",
    )
    p.add_argument(
        "--tsne",
        type=non_negative_int,
        default=d.tsne,
        metavar="N",
        help="t-SNE plot of student features on N test images (needs trg-kd[tsne])",
    )
    return p


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` that the command line ``argv`` (default ``sys.argv[1:]``) describes."""
    return config_from_args(TrainConfig, build_parser().parse_args(argv))


def _tokens(name: str, option: str, num_classes: int, input_shape: Sequence[int]) -> torch.Tensor:
    """The ``(1, N, D)`` tokens model ``name`` gives the loss for one input of ``input_shape``."""
    model = create_model(name, num_classes, input_shape[0], option=option).eval()
    with torch.no_grad():
        return TokenExtractor()(model, torch.zeros(1, *input_shape))[0]


def _token_width(name: str, option: str, num_classes: int, input_shape: Sequence[int]) -> int:
    return _tokens(name, option, num_classes, input_shape).shape[2]


def check_graph_settings(config: TrainConfig, num_classes: int, input_shape: Sequence[int]) -> None:
    """Check the token graph's settings against the models and the data, before any training.

    The teacher may train for hours before the first TRG step; this finds what that step
    would reject now: token grids that do not align, a per-process batch of one image, or a
    ``k`` that needs more graph nodes than ``batch_size × tokens per image`` (× the number of
    processes with ``--graph gathered``) give. Draws no random numbers (the models it probes
    are built under a forked RNG).

    Raises:
        ValueError: naming the options to change.
    """
    if config.method != "trg" or not (config.local_weight or config.global_weight):
        return
    if config.batch_size < 2:
        raise ValueError(
            f"--batch-size {config.batch_size}: the token graph's edges cross images, so TRG "
            "needs at least 2 images per batch and process; raise --batch-size"
        )
    with torch.random.fork_rng(devices=[]):
        s_tok = _tokens(config.student, "--student", num_classes, input_shape)
        t_tok = _tokens(config.teacher, "--teacher", num_classes, input_shape)
    tokens = align_token_grids(s_tok, t_tok)[0].shape[1]  # ValueError if the grids do not align
    per_image = min(config.tokens_per_image, tokens)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    processes = world if config.graph == "gathered" else 1
    nodes = config.batch_size * per_image * processes
    if config.k >= nodes:
        raise ValueError(
            f"--k {config.k} needs more than {config.k} graph nodes, but a step has {nodes} "
            f"(--batch-size {config.batch_size} x {per_image} tokens per image of the "
            f"{tokens} aligned tokens x {processes} process(es)); lower --k or raise "
            "--batch-size / --tokens-per-image"
        )


@torch.no_grad()
def _predict(model: nn.Module, dataset, *, pooled: bool = False, limit: int | None = None):
    """Predictions (or mean-pooled tokens when ``pooled``) and labels over ``dataset``."""
    model.eval()
    device = next(model.parameters()).device
    ext = TokenExtractor()
    outs, labels, seen = [], [], 0
    for x, y in DataLoader(dataset, batch_size=256):
        tokens, logits = ext(model, x.to(device))
        outs.append(tokens.mean(1).cpu() if pooled else logits.argmax(1).cpu())
        labels.append(y)
        seen += len(y)
        if limit is not None and seen >= limit:
            break
    out, lab = torch.cat(outs), torch.cat(labels)
    return (out[:limit], lab[:limit]) if limit is not None else (out, lab)


def train(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changed: Sequence[str] = (),
    datasets: DistillDatasets | None = None,
) -> DistillResult:
    """Train (or load) the teacher, then distil the student with ``config.method``.

    ``resume`` continues exactly from the checkpoints in ``config.out``, refusing settings
    that differ from theirs unless ``allow_changed`` names them; a fresh run refuses a
    non-empty ``config.out`` unless ``overwrite`` (``--resume``, ``--allow-changed``,
    ``--overwrite``; see :func:`lab_common.distill.run_distillation`). The model names and
    the token graph's settings (:func:`check_graph_settings`) are checked before any training.
    ``datasets = (train, test, num_classes, in_chans)`` replaces loading ``config.dataset`` (the
    engine still applies a long-tailed subset, ``imbalance_ratio``, to ``train``). Besides the
    engine's outputs in ``config.out``, ``tsne > 0`` writes ``tsne.png``.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a trg_kd.train.TrainConfig, got {type(config).__name__}")
    check_model_name(config.student, timm.is_model, "--student", ZOO_HINT)
    check_model_name(config.teacher, timm.is_model, "--teacher", ZOO_HINT)
    train_ds, test_ds, num_classes, in_chans = datasets or build_datasets(config)
    input_shape = tuple(test_ds[0][0].shape)
    check_graph_settings(config, num_classes, input_shape)

    def make_loss(num_classes: int) -> nn.Module | None:
        if config.method == "ce":
            return None
        if config.method == "kd":
            return KDLoss(
                ce_weight=1.0, kd_weight=config.kd_weight, temperature=config.kd_temperature
            )
        return TRGLoss(
            _token_width(config.student, "--student", num_classes, input_shape),
            _token_width(config.teacher, "--teacher", num_classes, input_shape),
            config.trg_config(),
        )

    ext = TokenExtractor()
    result = run_distillation(
        config,
        make_loss,
        resume=resume,
        overwrite=overwrite,
        allow_changed=allow_changed,
        datasets=(train_ds, test_ds, num_classes, in_chans),
        student_features=ext,
        teacher_features=ext,
        run_files=("tsne.png",),
    )
    if int(os.environ.get("RANK", "0")) != 0 or result.student is None:
        return result
    out_dir = Path(config.out)
    extra: dict[str, object] = {}
    if config.tsne:
        from trg_kd.visualize import plot_tsne

        feats, labels = _predict(result.student, test_ds, pooled=True, limit=config.tsne)
        extra["tsne_png"] = str(plot_tsne(feats, labels, out_dir / "tsne.png", seed=config.seed))
    if extra and result.metrics.get("completed"):
        result.metrics.update(extra)
        (out_dir / "result.json").write_text(json.dumps(result.metrics, indent=2))
    return result


def main(argv: Sequence[str] | None = None) -> DistillResult:
    """Parse ``argv`` and :func:`train`, print the summary line; returns the engine's result."""
    return distill_main("trg-kd-train", build_parser(), TrainConfig, train, argv)


def cli() -> int:
    """Console-script entry point (``trg-kd-train``): exit status 0 on success."""
    return run_console(main, prog="trg-kd-train")


if __name__ == "__main__":
    raise SystemExit(cli())
