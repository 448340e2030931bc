"""Global relationship loss: token-level InfoNCE with a dynamic temperature.

Student token ``i`` (projected to the teacher's width) must pick out teacher token ``i`` (the same
token of the same image) among all ``M`` sampled teacher tokens of the batch. The temperature
starts high (coarse structure) and decreases over training: :class:`TemperatureSchedule` maps the
training progress in ``[0, 1]`` to a temperature; the trainer passes the progress explicitly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["TemperatureSchedule", "global_relation_loss"]

_KINDS = ("cosine", "linear", "exp", "constant")


@dataclass(frozen=True)
class TemperatureSchedule:
    """Temperature as a function of training progress ``p ∈ [0, 1]``.

    ``cosine``: ``end + (start − end)·(1 + cos(πp))/2``; ``linear``: straight line;
    ``exp``: geometric interpolation ``start·(end/start)^p``; ``constant``: always ``start``.
    """

    start: float = 1.0
    end: float = 0.1
    kind: str = "cosine"

    def __post_init__(self) -> None:
        if self.start <= 0 or self.end <= 0:
            raise ValueError(f"temperatures must be > 0, got start={self.start}, end={self.end}")
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")

    def __call__(self, progress: float) -> float:
        if not 0.0 <= progress <= 1.0:
            raise ValueError(f"progress must be in [0, 1] (e.g. epoch / epochs), got {progress}")
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (self.end - self.start) * progress
        if self.kind == "exp":
            return self.start * (self.end / self.start) ** progress
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def global_relation_loss(
    student_nodes: torch.Tensor,
    teacher_nodes: torch.Tensor,
    temperature: float,
    *,
    query_index: torch.Tensor | None = None,
    normalize: bool = True,
) -> torch.Tensor:
    """InfoNCE from student tokens to teacher tokens, averaged over the query tokens.

    Args:
        student_nodes: ``(Q, D)`` student tokens (projected to the teacher's width ``D``); row ``i``
            is the query whose positive is teacher node ``query_index[i]``.
        teacher_nodes: ``(M, D)`` teacher tokens, the keys; detached.
        temperature: softmax temperature ``τ > 0``.
        query_index: ``(Q,)`` positive key of each query (default ``arange(Q)``, needs ``Q == M``).
        normalize: L2-normalise both sides first (cosine similarities).

    Returns:
        A scalar: ``mean_i −log softmax_j(s_i·t_j / τ)[query_index[i]]``.
    """
    if student_nodes.ndim != 2 or teacher_nodes.ndim != 2:
        raise ValueError(
            f"expected student (Q, D) and teacher (M, D) nodes, got "
            f"{tuple(student_nodes.shape)} and {tuple(teacher_nodes.shape)}"
        )
    if student_nodes.shape[1] != teacher_nodes.shape[1]:
        raise ValueError(
            f"student width {student_nodes.shape[1]} != teacher width {teacher_nodes.shape[1]}; "
            "project the student tokens to the teacher's width first"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if query_index is None:
        if student_nodes.shape[0] != teacher_nodes.shape[0]:
            raise ValueError(
                f"{student_nodes.shape[0]} student vs {teacher_nodes.shape[0]} teacher nodes: "
                "pass query_index to say which teacher node each student node matches"
            )
        query_index = torch.arange(student_nodes.shape[0], device=student_nodes.device)
    teacher_nodes = teacher_nodes.detach()
    if normalize:
        student_nodes = F.normalize(student_nodes, dim=1)
        teacher_nodes = F.normalize(teacher_nodes, dim=1)
    logits = student_nodes @ teacher_nodes.T / temperature  # (Q, M)
    return F.cross_entropy(logits, query_index)
