"""How the tasks of a meta-batch run: a Python loop or ``torch.func.vmap``, or task by task with
a backward after each (``backward_task_by_task``, which writes the parameters' ``.grad``).

Each function takes per-task callables and the meta-batch ``xs`` ``(B, N_s, C, H, W)``, ``ys``
``(B, N_s)``, ``xq`` ``(B, N_q, C, H, W)``, ``yq`` ``(B, N_q)``, and returns the per-task
``(loss, logits, picked)`` stacked on a leading ``B`` dimension.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import vmap

from .meta_gradient import TaskGradient

__all__ = ["BATCHING", "backward_task_by_task", "loop_tasks", "resolve_batching", "vmap_tasks"]

BATCHING = ("loop", "vmap", "auto")
TaskFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def resolve_batching(task_batching: str, device: torch.device) -> str:
    """``"loop"`` or ``"vmap"`` for ``task_batching`` on ``device`` (``"auto"``: ``loop`` on
    CPU, where it measured faster for Conv-4, ``vmap`` on CUDA)."""
    if task_batching not in BATCHING:
        raise ValueError(f"task_batching must be one of {BATCHING}, got {task_batching!r}")
    if task_batching != "auto":
        return task_batching
    return "vmap" if device.type == "cuda" else "loop"


def loop_tasks(task_fn: TaskFn, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor):
    """``task_fn(xs[b], ys[b], xq[b], yq[b])`` for every task ``b``, stacked."""
    outs = [task_fn(xs[b], ys[b], xq[b], yq[b]) for b in range(xs.shape[0])]
    return tuple(torch.stack(t) for t in zip(*outs, strict=True))


def vmap_tasks(task_fn: TaskFn, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor):
    """``task_fn`` under ``torch.func.vmap`` over the tasks (it must be ``vmap``-able)."""
    return vmap(task_fn)(xs, ys, xq, yq)


def backward_task_by_task(
    task_gradient: Callable[[Tensor, Tensor, Tensor, Tensor, int], TaskGradient],
    xs: Tensor,
    ys: Tensor,
    xq: Tensor,
    yq: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """Add every task's gradient of ``loss / B`` to the parameters' ``.grad``, one task at a time.

    The gradients accumulate exactly as one ``.backward()`` of the mean loss would make them
    while only one task's graph is alive (``higher``'s memory profile).

    Args:
        task_gradient: ``(xs_b, ys_b, xq_b, yq_b, *, n_tasks) -> (loss, logits, picked, grads)``
            (a ``meta_gradient`` strategy), ``grads`` pairs of parameter and gradient.
        xs, ys, xq, yq: the meta-batch (module docstring).

    Returns:
        The detached per-task ``(loss, logits, picked)``, stacked.
    """
    n_tasks = xs.shape[0]
    outs = []
    for b in range(n_tasks):
        loss, logits, picked, grads = task_gradient(xs[b], ys[b], xq[b], yq[b], n_tasks=n_tasks)
        for p, g in grads:
            p.grad = g if p.grad is None else p.grad + g
        outs.append((loss, logits, picked))
    return tuple(torch.stack(t) for t in zip(*outs, strict=True))
