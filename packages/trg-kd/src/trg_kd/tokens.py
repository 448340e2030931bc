"""Token alignment: feature maps to tokens, common grid, prefix tokens, projection, sampling.

A CNN feature map ``(B, C, H, W)`` gives ``H·W`` tokens of width ``C``; ViT patch tokens are
``(B, N, D)`` with ``N`` a square grid once class/distillation tokens are dropped. Teacher and
student grids are average-pooled to the smaller grid when one divides the other.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "to_tokens",
    "drop_prefix_tokens",
    "align_token_grids",
    "sample_token_index",
    "TokenProjector",
]


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, H·W, C)`` (row-major over the grid); ``(B, N, D)`` is returned as is."""
    if x.ndim == 4:
        return x.flatten(2).transpose(1, 2)
    if x.ndim == 3:
        return x
    raise ValueError(
        f"expected tokens (B, N, D) or a feature map (B, C, H, W), got {tuple(x.shape)}"
    )


def drop_prefix_tokens(tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Remove the leading class/distillation/register tokens: ``(B, P + N, D)`` → ``(B, N, D)``."""
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, N, D), got shape {tuple(tokens.shape)}")
    if not 0 <= num_prefix_tokens < tokens.shape[1]:
        raise ValueError(
            f"num_prefix_tokens={num_prefix_tokens} must be in [0, {tokens.shape[1]}) for "
            f"{tokens.shape[1]} tokens"
        )
    return tokens[:, num_prefix_tokens:]


def _as_map(x: torch.Tensor, name: str) -> torch.Tensor | None:
    """``(B, C, H, W)`` as is; square ``(B, N, D)`` tokens as a ``(B, D, √N, √N)`` map; else None."""
    if x.ndim == 4:
        return x
    if x.ndim != 3:
        raise ValueError(
            f"{name} must be tokens (B, N, D) or a feature map (B, C, H, W), got {tuple(x.shape)}"
        )
    side = math.isqrt(x.shape[1])
    if side * side != x.shape[1]:
        return None
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def _pool_to(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == grid:
        return x
    kh, kw = x.shape[-2] // grid[0], x.shape[-1] // grid[1]
    return F.avg_pool2d(x, kernel_size=(kh, kw), stride=(kh, kw))


def align_token_grids(
    student: torch.Tensor, teacher: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring student and teacher features to one token grid.

    Each input is a feature map ``(B, C, H, W)`` or tokens ``(B, N, D)`` (prefix tokens already
    dropped). The common grid is the smaller one per axis; the larger grid is average-pooled when
    its size is an integer multiple. Non-square token sets align only when ``N`` is equal.

    Returns:
        ``(student (B, N, D_s), teacher (B, N, D_t))``.
    """
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"student batch {student.shape[0]} != teacher batch {teacher.shape[0]} "
            f"(shapes {tuple(student.shape)} and {tuple(teacher.shape)})"
        )
    s_map, t_map = _as_map(student, "student"), _as_map(teacher, "teacher")
    if s_map is None or t_map is None:
        if student.ndim == teacher.ndim == 3 and student.shape[1] == teacher.shape[1]:
            return student, teacher
        raise ValueError(
            f"cannot align student {tuple(student.shape)} with teacher {tuple(teacher.shape)}: "
            "non-square token counts must be equal; drop class/distillation tokens first"
        )
    s_grid, t_grid = tuple(s_map.shape[-2:]), tuple(t_map.shape[-2:])
    grid = (min(s_grid[0], t_grid[0]), min(s_grid[1], t_grid[1]))
    for name, g in (("student", s_grid), ("teacher", t_grid)):
        if g[0] % grid[0] or g[1] % grid[1]:
            raise ValueError(
                f"cannot align token grids: student {s_grid[0]}x{s_grid[1]}, teacher "
                f"{t_grid[0]}x{t_grid[1]}; the {name} grid {g[0]}x{g[1]} is not a multiple of "
                f"{grid[0]}x{grid[1]} (change the input size or the feature layer)"
            )
    return to_tokens(_pool_to(s_map, grid)), to_tokens(_pool_to(t_map, grid))


def sample_token_index(
    batch_size: int,
    num_tokens: int,
    tokens_per_image: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-image sample of distinct token positions, ``(B, S)`` int64, sorted within each row.

    Draws only from ``generator`` (a fresh, unseeded generator when None), never from torch's
    global RNG. ``tokens_per_image >= num_tokens`` keeps every token.
    """
    if tokens_per_image < 1:
        raise ValueError(f"tokens_per_image must be >= 1, got {tokens_per_image}")
    if tokens_per_image >= num_tokens:
        return torch.arange(num_tokens, device=device).expand(batch_size, num_tokens)
    if generator is None:
        generator = torch.Generator()
        generator.seed()
    keys = torch.rand(batch_size, num_tokens, generator=generator, device=generator.device)
    index = keys.argsort(dim=1)[:, :tokens_per_image].sort(dim=1).values
    return index.to(device)


class TokenProjector(nn.Module):
    """Learned linear map of student tokens to the teacher's width: ``(B, N, D_s)`` → ``(B, N, D_t)``."""

    def __init__(self, student_dim: int, teacher_dim: int, bias: bool = True) -> None:
        super().__init__()
        if student_dim < 1 or teacher_dim < 1:
            raise ValueError(f"dims must be >= 1, got student={student_dim}, teacher={teacher_dim}")
        self.proj = nn.Linear(student_dim, teacher_dim, bias=bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.proj.in_features:
            raise ValueError(
                f"student tokens have width {tokens.shape[-1]}, projector expects "
                f"{self.proj.in_features} (student_dim)"
            )
        return self.proj(tokens)
