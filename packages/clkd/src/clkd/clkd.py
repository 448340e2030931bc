"""Class-aware Logit Knowledge Distillation (Zhang, Liu, Hopcroft, He, arXiv 2211.14773).

Logits ``Z ∈ R^{B×C}`` are compared at two levels: per instance (each row) and per class (each
column, i.e. one class's logits across the batch), plus a class-correlation term on the
``C × C`` covariance of the logits over the batch. No official code is public; the formulas
follow the reconstruction shared by two public re-implementations:

- ``L_ins`` = squared error between ``rownorm(Z_s)`` and ``rownorm(Z_t)`` (rows L2-normalised);
- ``L_cla`` = the same on the transposes (columns L2-normalised);
- ``G`` the ``(C, C)`` class-correlation matrix of the logits over the batch,
  ``L_cc = ‖G_s − G_t‖²_F / C²``; with ``correlation="covariance"`` (the literal
  reconstruction) ``G = Z̃ᵀ Z̃ / (C − 1)`` for ``Z̃`` centred over the batch (the public
  re-implementations' normaliser; the unbiased covariance over the batch would divide by
  ``B − 1``, which only rescales the term by ``((C − 1)/(B − 1))²``); with
  ``correlation="pearson"`` (default) ``G`` is the correlation matrix (entries in [−1, 1],
  invariant to the scale and shift of each class's logits, so no normaliser is involved);
- ``L = λ_ce·CE + μ·(L_ins + β·L_cla) + ν·L_cc``.

**Scale.** The re-implementations average the squared errors over all ``B·C`` entries
(``reduction="mean"``, clkd 0.1). On unit rows that is ``2(1 − cos)/C`` per row: with
``λ_ce = 0.1`` its gradient w.r.t. the student logits is about a tenth of KD's, and the student
trains like CE at a tenth of the learning rate. The default ``reduction="batchmean"`` sums the
squared error over each vector (``2(1 − cos)`` per row for ``L_ins``, per class column for
``L_cla``) and averages over the vectors; the default weights were chosen so that the
gradient at initialisation is on the order of KD's (``benchmarks/grad_norms.py``) and then on
the validation split (README). ``CLKDConfig(ce_weight=0.1, reduction="mean")`` is the public
re-implementations' reading.

``variant="softmax"`` reads the two levels as temperature-softened KL divergences instead:
along the class axis for instances, along the batch axis for classes (both ×T²).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lab_common.distill import softened_kl_div

from ._validation import prepare_logits

__all__ = [
    "CLKDConfig",
    "CLKDLoss",
    "class_correlation_loss",
    "class_correlation_matrix",
    "class_loss",
    "clkd_loss",
    "instance_loss",
]

Variant = Literal["mse", "softmax"]
Reduction = Literal["mean", "batchmean"]
_REDUCTIONS = ("mean", "batchmean")
_VARIANTS = ("mse", "softmax")
Correlation = Literal["pearson", "covariance"]
_CORRELATIONS = ("pearson", "covariance")
Axis = Literal["class", "batch"]
_AXES = ("class", "batch")


@dataclass(frozen=True)
class CLKDConfig:
    """CLKD hyperparameters (paper symbols in brackets).

    Defaults: CE weight 1 (as KD, DKD and TRG in this project), ``reduction="batchmean"`` and
    μ, β, ν chosen on a validation split (README); the re-implementations' reading is
    ``CLKDConfig(ce_weight=0.1, reduction="mean")``.

    Attributes:
        ce_weight: [λ_ce] weight of the cross-entropy with the labels.
        logit_weight: [μ] weight of the instance- and class-level terms.
        class_weight: [β] class-level term relative to the instance-level one (1 or 2).
        correlation_weight: [ν] weight of the class-correlation term.
        reduction: how the "mse" variant reduces the instance and class terms: "batchmean"
            (sum of squares over each vector, mean over the vectors; default) or "mean" (mean
            over all entries, as the public re-implementations read it).
        variant: "mse" (L2-normalised logits + MSE, default) or "softmax" (KL at ``temperature``).
        temperature: softmax temperature of the "softmax" variant (ignored by "mse").
        correlation: matrix compared by the class-correlation term: "pearson" (correlation
            matrix, bounded and scale-invariant, default) or "covariance" (raw covariance: the
            literal reconstruction, quartic in the logit scale and unstable at lr 0.05).
        correlation_axis: what the matrix correlates: "class" (``C × C``, the classes over the
            batch, default) or "batch" (``B × B``, the samples over the classes, centred per
            sample; with "covariance" divided by ``C − 1`` as the other public
            re-implementation does).
    """

    ce_weight: float = 1.0
    logit_weight: float = 0.5
    class_weight: float = 1.0
    correlation_weight: float = 0.4
    reduction: Reduction = "batchmean"
    variant: Variant = "mse"
    temperature: float = 4.0
    correlation: Correlation = "pearson"
    correlation_axis: Axis = "class"

    def __post_init__(self) -> None:
        if self.reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {self.reduction!r}")
        if self.variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {self.variant!r}")
        if self.correlation not in _CORRELATIONS:
            raise ValueError(
                f"correlation must be one of {_CORRELATIONS}, got {self.correlation!r}"
            )
        if self.correlation_axis not in _AXES:
            raise ValueError(
                f"correlation_axis must be one of {_AXES}, got {self.correlation_axis!r}"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        names = ("ce_weight", "logit_weight", "class_weight", "correlation_weight")
        weights = {k: getattr(self, k) for k in names}
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"CLKD weights must be >= 0, got {negative}")


def instance_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    variant: Variant = "mse",
    temperature: float = 4.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Instance-level term on ``(B, C)`` logits: each sample's row compared across classes.

    ``variant="mse"``: squared error of the L2-normalised rows, averaged over the ``B·C``
    entries (``reduction="mean"``) or summed over each row and averaged over the ``B`` rows
    (``"batchmean"``, ``C`` times larger). ``variant="softmax"``: ``T²``-scaled KL summed over
    each row and averaged over the rows (``reduction`` does not apply).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if variant == "mse":
        sq = (F.normalize(s, dim=1) - F.normalize(t, dim=1)).pow(2)
        return sq.mean() if reduction == "mean" else sq.sum(dim=1).mean()
    return softened_kl_div(s, t, temperature)


def class_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    variant: Variant = "mse",
    temperature: float = 4.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Class-level term on ``(B, C)`` logits: each class's column compared across the batch.

    :func:`instance_loss` of the transposes: ``"batchmean"`` sums over each column's ``B``
    entries and averages over the ``C`` columns (``B`` times the ``"mean"`` value).
    """
    return instance_loss(s.t(), t.t(), variant, temperature, reduction)


def class_correlation_matrix(
    z: torch.Tensor, correlation: Correlation = "pearson", axis: Axis = "class"
) -> torch.Tensor:
    """``(B, C)`` logits → covariance or Pearson correlation matrix.

    ``axis="class"``: ``(C, C)``, the classes over the batch (columns centred over the batch).
    ``axis="batch"``: ``(B, B)``, the samples over the classes (rows centred over the classes;
    the covariance divided by ``C − 1``). A constant column (row) has zero correlation with
    every other (it is not rescaled below a norm of 1e-12).
    """
    if axis == "batch":
        centred = z - z.mean(dim=1, keepdim=True)
        if correlation == "pearson":
            unit = F.normalize(centred, dim=1, eps=1e-12)
            return unit @ unit.t()
        return centred @ centred.t() / (z.shape[1] - 1)
    centred = z - z.mean(dim=0, keepdim=True)
    if correlation == "pearson":
        unit = F.normalize(centred, dim=0, eps=1e-12)
        return unit.t() @ unit
    return centred.t() @ centred / (z.shape[1] - 1)


def class_correlation_loss(
    s: torch.Tensor,
    t: torch.Tensor,
    correlation: Correlation = "pearson",
    axis: Axis = "class",
) -> torch.Tensor:
    """Mean squared difference of the two :func:`class_correlation_matrix` es: ``‖G_s − G_t‖²_F``
    over ``C²`` (``axis="class"``) or ``B²`` (``axis="batch"``) entries."""
    if correlation not in _CORRELATIONS:
        raise ValueError(f"correlation must be one of {_CORRELATIONS}, got {correlation!r}")
    if axis not in _AXES:
        raise ValueError(f"axis must be one of {_AXES}, got {axis!r}")
    diff = class_correlation_matrix(s, correlation, axis) - class_correlation_matrix(
        t, correlation, axis
    )
    return diff.pow(2).mean()


def clkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ce_weight: float = 1.0,
    logit_weight: float = 0.5,
    class_weight: float = 1.0,
    correlation_weight: float = 0.4,
    reduction: Reduction = "batchmean",
    variant: Variant = "mse",
    temperature: float = 4.0,
    correlation: Correlation = "pearson",
    correlation_axis: Axis = "class",
) -> dict[str, torch.Tensor]:
    """Weighted CLKD terms for logits ``(B, C)`` (B ≥ 2, C ≥ 2) and targets ``(B,)``.

    Returns ``loss_ce = λ_ce·CE``, ``loss_ins = μ·L_ins``, ``loss_cla = μ·β·L_cla`` and
    ``loss_cc = ν·L_cc`` (see the module docstring), computed in float32 (float64 inputs stay
    float64) with the teacher logits detached.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
    if correlation not in _CORRELATIONS:
        raise ValueError(f"correlation must be one of {_CORRELATIONS}, got {correlation!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    s, t, target = prepare_logits(
        student_logits, teacher_logits, target, min_batch=2, method="clkd_loss"
    )
    with torch.autocast(s.device.type, enabled=False):
        return {
            "loss_ce": ce_weight * F.cross_entropy(s, target),
            "loss_ins": logit_weight * instance_loss(s, t, variant, temperature, reduction),
            "loss_cla": logit_weight
            * class_weight
            * class_loss(s, t, variant, temperature, reduction),
            "loss_cc": correlation_weight
            * class_correlation_loss(s, t, correlation, correlation_axis),
        }


class CLKDLoss(nn.Module):
    """:func:`clkd_loss` as a module: ``CLKDLoss(class_weight=2.0)`` or ``CLKDLoss(CLKDConfig())``.

    ``forward(student_logits (B, C), teacher_logits (B, C), target (B,))`` returns the dict of
    weighted ``loss_*`` terms; their sum is the training loss.
    """

    def __init__(self, config: CLKDConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        self.config = replace(config or CLKDConfig(), **overrides)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        return clkd_loss(student_logits, teacher_logits, target, **asdict(self.config))

    def extra_repr(self) -> str:
        return repr(self.config)
