"""TRG: knowledge distillation via a token-level relationship graph (Zhang, Liu, He, 2023).

``L = CE + λ·KD + α·L_inner + β·L_local + γ·L_global``:

- ``L_inner`` (:func:`~trg_kd.contextual.contextual_loss`): within each image, MSE between the
  teacher's and the student's token self-similarity maps (all aligned tokens).
- ``L_local`` (:func:`~trg_kd.local.local_preserving_loss`): over a graph whose nodes are
  ``tokens_per_image`` tokens sampled from every image of the batch, KL between the teacher's and the
  student's softmax-normalised Gaussian edge weights on the teacher's k-NN edges.
- ``L_global`` (:func:`~trg_kd.contrastive.global_relation_loss`): InfoNCE between projected
  student tokens and teacher tokens over the same nodes, temperature from a schedule over training
  progress.

Under ``torchrun`` the graph nodes of all ranks are gathered (student nodes with autograd), and each
rank takes the loss over its own query nodes against the whole graph; with DDP's gradient averaging
this gives the gradient of the single-process loss over the global batch.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from lab_common.distill import check_logits_targets, softened_kl_div
from trg_kd.contextual import contextual_loss
from trg_kd.contrastive import TemperatureSchedule, global_relation_loss
from trg_kd.local import local_preserving_loss
from trg_kd.tokens import TokenProjector, align_token_grids, sample_token_index

__all__ = ["TRGConfig", "TRGLoss"]


@dataclass(frozen=True)
class TRGConfig:
    """Hyperparameters of :class:`TRGLoss` (defaults chosen by the Fashion-MNIST sweep, README).

    The global InfoNCE term is **off by default** (``global_weight=0``): at γ = 0.1
    its gradient was about 1/50 of the other terms' (``clkd/benchmarks/grad_norms.py``),
    γ = 5 (gradient on the order of the others') did not beat γ = 0 on the CIFAR-10 validation
    split, nor γ = 0.1 in the Fashion-MNIST ablation (README). Set ``global_weight`` to use it.

    Attributes:
        ce_weight: weight of cross-entropy on the targets.
        kd_weight: ``λ``, weight of Hinton KD; ``kd_temperature`` its temperature.
        inner_weight: ``α``, contextual (within-image self-similarity) loss.
        local_weight: ``β``, local-preserving loss on the k-NN token graph.
        global_weight: ``γ``, global InfoNCE loss (0: off, the default).
        k: neighbours per node in the token graph.
        sigma: Gaussian kernel width ``σ`` in ``exp(−d²/(2σ))``.
        tokens_per_image: tokens sampled per image as graph nodes (all when ``>=`` the grid size).
        temperature: InfoNCE temperature as a function of training progress.
        normalize_nodes: L2-normalise graph nodes, so ``σ`` has a fixed scale (``d² ∈ [0, 4]``).
        local_reduction: ``"mean"`` or ``"sum"`` of the local loss over nodes.
        chunk_size: query rows per block of the k-NN distance computation.
        gather_distributed: gather graph nodes across ranks under ``torch.distributed``.
        seed: seed of the loss's own token-sampling generator.
    """

    ce_weight: float = 1.0
    kd_weight: float = 1.0
    kd_temperature: float = 4.0
    inner_weight: float = 500.0
    local_weight: float = 50.0
    global_weight: float = 0.0
    k: int = 4
    sigma: float = 1.0
    tokens_per_image: int = 16
    temperature: TemperatureSchedule = field(default_factory=TemperatureSchedule)
    normalize_nodes: bool = True
    local_reduction: str = "mean"
    chunk_size: int = 1024
    gather_distributed: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("ce_weight", "kd_weight", "inner_weight", "local_weight", "global_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma}")
        if self.tokens_per_image < 1:
            raise ValueError(f"tokens_per_image must be >= 1, got {self.tokens_per_image}")
        if self.local_reduction not in ("mean", "sum"):
            raise ValueError(
                f"local_reduction must be 'mean' or 'sum', got {self.local_reduction!r}"
            )
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")


def _float32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _grid(features: torch.Tensor) -> str:
    """``"HxW"`` of a ``(B, C, H, W)`` map, ``"N tokens"`` of ``(B, N, D)`` tokens."""
    if features.ndim == 4:
        return f"{features.shape[2]}x{features.shape[3]}"
    return f"{features.shape[1]} tokens"


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """Concatenate ``(M, D)`` from all ranks to ``(W·M, D)``; backward sums the gradients of the
    copies over ranks and returns this rank's slice (all_reduce, so it also works on gloo)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


class TRGLoss(nn.Module):
    """TRG loss with its learned student-to-teacher token projection.

    Args:
        student_dim: width of the student tokens (channels of its feature map).
        teacher_dim: width of the teacher tokens.
        config: hyperparameters; keyword ``overrides`` replace single fields
            (``TRGLoss(64, 256, k=4)``).

    Follows the ``lab_common.Distiller`` loss contract (``needs_features``, ``set_epoch``). The
    InfoNCE temperature follows ``config.temperature(progress)``; the trainer advances it with
    :meth:`set_epoch` / :meth:`set_progress` (or passes ``progress=`` per call). The progress and the sampling generator
    are saved in ``state_dict`` (extra state), so a resumed run samples the same tokens.
    """

    def __init__(
        self, student_dim: int, teacher_dim: int, config: TRGConfig | None = None, **overrides: Any
    ) -> None:
        super().__init__()
        self.config = replace(config or TRGConfig(), **overrides)
        self.projector = TokenProjector(student_dim, teacher_dim)
        self.progress = 0.0
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self._warned_grid = False

    needs_features = True

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Progress ``epoch / (num_epochs − 1)``: the last epoch uses the final temperature."""
        if not 0 <= epoch < num_epochs:
            raise ValueError(f"epoch must be in [0, {num_epochs}), got {epoch}")
        self.set_progress(epoch / max(num_epochs - 1, 1))

    def set_progress(self, progress: float) -> None:
        """Set training progress in ``[0, 1]`` (e.g. ``epoch / epochs``) for the temperature."""
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1], got {progress}")
        self.progress = float(progress)

    @property
    def temperature(self) -> float:
        """Current InfoNCE temperature."""
        return self.config.temperature(self.progress)

    def get_extra_state(self) -> dict[str, Any]:
        return {"progress": self.progress, "generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.progress = float(state["progress"])
        self.generator.set_state(state["generator"].cpu())  # checkpoints may be mapped to GPU

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        target: torch.Tensor,
        student_features: torch.Tensor,
        teacher_features: torch.Tensor,
        *,
        progress: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Weighted loss terms.

        Args:
            student_logits: ``(B, C)``.
            teacher_logits: ``(B, C)``; detached.
            target: ``(B,)`` class indices.
            student_features: ``(B, N, D_s)`` tokens or ``(B, D_s, H, W)`` feature map.
            teacher_features: ``(B, N, D_t)`` tokens or ``(B, D_t, H, W)``; detached.
            progress: training progress for this call (default: the value of :meth:`set_progress`).
            generator: token-sampling generator for this call (default: the loss's own).

        Returns:
            ``{"loss_ce", "loss_kd", "loss_inner", "loss_local", "loss_global"}``, each already
            weighted (a term with weight 0 is a constant zero and is not computed); the total is
            their sum.
        """
        cfg = self.config
        target = check_logits_targets(
            student_logits,
            teacher_logits,
            target,
            loss="TRGLoss",
            finite={"student_features": student_features, "teacher_features": teacher_features},
        )
        sizes = {
            "student_logits": student_logits.shape[0],
            "teacher_logits": teacher_logits.shape[0],
            "target": target.shape[0],
            "student_features": student_features.shape[0],
            "teacher_features": teacher_features.shape[0],
        }
        if len(set(sizes.values())) != 1:
            raise ValueError(f"mismatched batch sizes: {sizes}")
        batch = student_logits.shape[0]
        graph_terms = cfg.local_weight > 0 or cfg.global_weight > 0
        if graph_terms and batch < 2:
            raise ValueError(
                f"batch of {batch} is too small for the token graph: edges cross images, "
                "so at least 2 images per batch (per rank) are needed"
            )
        teacher_logits, teacher_features = teacher_logits.detach(), teacher_features.detach()
        with torch.autocast(student_logits.device.type, enabled=False):
            return self._terms(
                _float32(student_logits),
                _float32(teacher_logits),
                target,
                _float32(student_features),
                _float32(teacher_features),
                self.progress if progress is None else progress,
                self.generator if generator is None else generator,
            )

    def _terms(
        self,
        s_logits: torch.Tensor,
        t_logits: torch.Tensor,
        target: torch.Tensor,
        s_feat: torch.Tensor,
        t_feat: torch.Tensor,
        progress: float,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        zero = s_logits.new_zeros(())
        out = {
            "loss_ce": cfg.ce_weight * F.cross_entropy(s_logits, target) if cfg.ce_weight else zero,
            "loss_kd": cfg.kd_weight * softened_kl_div(s_logits, t_logits, cfg.kd_temperature)
            if cfg.kd_weight
            else zero,
        }
        s_tok, t_tok = align_token_grids(s_feat, t_feat)  # (B, N, D_s), (B, N, D_t)
        if s_tok.shape[1] < 2 and cfg.inner_weight and not self._warned_grid:
            self._warned_grid = True
            warnings.warn(
                f"TRGLoss: the feature grids (student {_grid(s_feat)}, teacher {_grid(t_feat)}) "
                f"give {s_tok.shape[1]} token per image, so loss_inner (each image's token "
                "self-similarity) is 0; take features from an earlier stage "
                "(TokenExtractor(index=...)) or use larger inputs",
                UserWarning,
                stacklevel=2,
            )
        s_tok = self.projector(s_tok)  # (B, N, D_t)
        out["loss_inner"] = (
            cfg.inner_weight * contextual_loss(s_tok, t_tok) if cfg.inner_weight else zero
        )
        if not (cfg.local_weight or cfg.global_weight):
            return out | {"loss_local": zero, "loss_global": zero}

        batch, num_tokens = s_tok.shape[:2]
        idx = sample_token_index(
            batch, num_tokens, cfg.tokens_per_image, generator=generator, device=s_tok.device
        )  # (B, S)
        s_nodes = s_tok.gather(1, idx[..., None].expand(-1, -1, s_tok.shape[2])).flatten(0, 1)
        t_nodes = t_tok.gather(1, idx[..., None].expand(-1, -1, t_tok.shape[2])).flatten(0, 1)
        if cfg.normalize_nodes:
            s_nodes, t_nodes = F.normalize(s_nodes, dim=1), F.normalize(t_nodes, dim=1)
        s_all, t_all, query = self._gather(s_nodes, t_nodes)
        if cfg.k >= t_all.shape[0]:
            raise ValueError(
                f"k={cfg.k} needs more than {cfg.k} graph nodes, got {t_all.shape[0]} "
                f"({t_all.shape[0] // idx.shape[1]} images x {idx.shape[1]} tokens per image); "
                "lower k or raise the batch size / tokens_per_image"
            )
        out["loss_local"] = (
            cfg.local_weight
            * local_preserving_loss(
                s_all,
                t_all,
                cfg.k,
                sigma=cfg.sigma,
                query_index=query,
                chunk_size=cfg.chunk_size,
                reduction=cfg.local_reduction,
            )
            if cfg.local_weight
            else zero
        )
        out["loss_global"] = (
            cfg.global_weight
            * global_relation_loss(
                s_nodes, t_all, cfg.temperature(progress), query_index=query, normalize=True
            )
            if cfg.global_weight
            else zero
        )
        return out

    def _gather(
        self, s_nodes: torch.Tensor, t_nodes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All ranks' nodes ``(W·M, D)`` (student with autograd) and this rank's rows ``(M,)``."""
        rank, world = _world()
        local = torch.arange(s_nodes.shape[0], device=s_nodes.device)
        if world == 1 or not self.config.gather_distributed:
            return s_nodes, t_nodes, local
        s_all = _AllGather.apply(s_nodes)
        t_parts = [torch.empty_like(t_nodes) for _ in range(world)]
        dist.all_gather(t_parts, t_nodes.contiguous())
        return s_all, torch.cat(t_parts), local + rank * s_nodes.shape[0]
