"""Teacher–student wrapper shared by the distillation packages (clkd, trg-kd).

A :class:`Distiller` owns a student, a frozen teacher and a distillation loss module. One
call runs the teacher (eval mode, ``no_grad``) and the student on the same batch and returns
the student's logits with the loss module's dictionary of already weighted ``loss_*`` terms,
so a training loop only sums the dictionary::

    distiller = Distiller(student, teacher, loss)
    optimizer = torch.optim.SGD(distiller.trainable_parameters(), lr=0.05, momentum=0.9)
    for x, y in loader:
        logits, losses = distiller(x, y)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    torch.save(distiller.student.state_dict(), "student.pt")

The loss-module contract (a plain ``nn.Module``; nothing to inherit):

- ``forward(student_logits (B, K), teacher_logits (B, K), target (B,), **features)``
  returns ``dict[str, Tensor]`` of scalar terms whose names start with ``loss_``.
- ``needs_features: bool`` (optional class attribute, default False). When True the distiller
  also passes ``student_features=`` and ``teacher_features=``: each model's unpooled output
  (e.g. ``(B, C, H, W)`` of a CNN or ``(B, N, D)`` of a ViT), taken by a *feature function*.
- ``set_epoch(epoch: int, num_epochs: int)`` (optional): called by :meth:`Distiller.set_epoch`
  at the start of every epoch, for schedules (DKD warm-up, a decreasing temperature). Losses
  keep no other training-time state, so a resumed run reproduces the schedule exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .checks import check_logits_targets

__all__ = ["Distiller", "FeatureFn", "SupervisedModel", "features_and_logits"]

#: ``fn(model, x) -> (features, logits)``; features in whatever layout the loss expects.
FeatureFn = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Default feature function: timm's ``forward_features`` then ``forward_head``.

    Works for every timm model and the ``lab_common.distill.zoo`` models: features are the unpooled
    last-stage output (``(B, C, H, W)`` for CNNs, ``(B, N, D)`` tokens for ViTs).
    """
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise TypeError(
            f"{type(model).__name__} has no forward_features/forward_head; pass a feature function "
            "fn(model, x) -> (features, logits) as Distiller(..., student_features=fn) / "
            "teacher_features=fn (e.g. built on torchvision.models.feature_extraction)"
        )
    feats = model.forward_features(x)
    return feats, model.forward_head(feats)


class Distiller(nn.Module):
    """Student + frozen teacher + distillation loss.

    Args:
        student: any classifier ``(B, ...) -> (B, K)`` logits; trained.
        teacher: a classifier with the same ``K`` outputs; frozen here (``requires_grad=False``),
            kept in eval mode whatever ``train()`` is called with, and run under ``no_grad``.
        loss: the loss module (contract in the module docstring); its own parameters (e.g.
            projection heads) are trained with the student.
        student_features / teacher_features: feature functions used when
            ``loss.needs_features`` is True (default :func:`features_and_logits`).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        loss: nn.Module,
        *,
        student_features: FeatureFn = features_and_logits,
        teacher_features: FeatureFn = features_and_logits,
    ) -> None:
        super().__init__()
        for name, value in (("student", student), ("teacher", teacher), ("loss", loss)):
            if not isinstance(value, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(value).__name__}")
        if student is teacher:
            raise ValueError("student and teacher are the same module; pass a separate teacher")
        self.student = student
        self.teacher = teacher.requires_grad_(False).eval()
        self.loss = loss
        self.student_features = student_features
        self.teacher_features = teacher_features

    @property
    def needs_features(self) -> bool:
        return bool(getattr(self.loss, "needs_features", False))

    def train(self, mode: bool = True) -> Distiller:
        """Set the student and loss to ``mode``; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """Tell the loss which epoch (0-based) of ``num_epochs`` starts (if it has schedules)."""
        if hasattr(self.loss, "set_epoch"):
            self.loss.set_epoch(epoch, num_epochs)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters for the optimiser: the student's, then the loss module's (projection heads)."""
        for module in (self.student, self.loss):
            yield from (p for p in module.parameters() if p.requires_grad)

    def forward(
        self,
        x: torch.Tensor,
        target: torch.Tensor,
        teacher_outputs: tuple[torch.Tensor | None, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x (B, ...)``, ``target (B,)`` → student logits ``(B, K)`` and the ``loss_*`` terms.

        ``teacher_outputs = (features or None, logits (B, K))`` computed earlier for this very
        ``x`` (e.g. read from a :class:`~lab_common.distill.TeacherCache`) replace running the
        teacher.
        """
        if teacher_outputs is not None:
            t_feats, t_logits = teacher_outputs
            if self.needs_features and t_feats is None:
                raise ValueError(
                    f"{type(self.loss).__name__} reads teacher features; teacher_outputs has none"
                )
        if self.needs_features:
            if teacher_outputs is None:
                with torch.no_grad():
                    t_feats, t_logits = self.teacher_features(self.teacher, x)
            s_feats, s_logits = self.student_features(self.student, x)
            losses = self.loss(
                s_logits,
                t_logits,
                target,
                student_features=s_feats,
                teacher_features=t_feats,
            )
        else:
            if teacher_outputs is None:
                with torch.no_grad():
                    t_logits = self.teacher(x)
            s_logits = self.student(x)
            losses = self.loss(s_logits, t_logits, target)
        if not isinstance(losses, dict) or not all(k.startswith("loss_") for k in losses):
            raise TypeError(
                f"{type(self.loss).__name__} must return a dict of 'loss_*' tensors, got "
                f"{list(losses) if isinstance(losses, dict) else type(losses).__name__}"
            )
        return s_logits, losses


class SupervisedModel(nn.Module):
    """Cross-entropy training with the Distiller's call signature (teacher training, CE baseline).

    ``forward(x (B, ...), target (B,)) -> (logits (B, K), {"loss_ce": scalar})``; the logits
    and targets are checked by :func:`~lab_common.distill.check_logits_targets`.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        """No schedules here; present for parity with :class:`Distiller`."""

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters that require gradients."""
        return (p for p in self.student.parameters() if p.requires_grad)

    def forward(
        self, x: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        target = check_logits_targets(logits, None, target, loss="cross-entropy")
        return logits, {"loss_ce": F.cross_entropy(logits.float(), target)}
