"""Inner-loop adaptation on plain parameter dicts (``torch.func``).

``adapt`` is a pure function: it never mutates the module or the parameter dict it is given.
With ``mode="func"`` (the default) it runs anywhere, also under ``torch.func.vmap`` over tasks;
``mode="autograd"`` is the same computation with less overhead for code that runs outside
``torch.func`` transforms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad

__all__ = ["adapt", "weighted_cross_entropy"]

_MODES = ("func", "autograd")


def weighted_cross_entropy(
    logits: Tensor, target: Tensor, sample_weight: Tensor | None = None
) -> Tensor:
    """Cross-entropy averaged with per-sample weights.

    Args:
        logits: ``(N, C)`` class scores.
        target: ``(N,)`` int64 labels.
        sample_weight: ``(N,)`` non-negative weights, or ``None`` for the plain mean. With weights
            the loss is ``sum(w * ce) / sum(w)`` (a 0/1 mask selects a subset without changing
            the tensor shapes, which keeps the function ``vmap``-able).

    Returns:
        Scalar loss.
    """
    per_sample = F.cross_entropy(logits, target, reduction="none")
    if sample_weight is None:
        return per_sample.mean()
    weight = sample_weight.to(per_sample.dtype)
    return (weight * per_sample).sum() / weight.sum().clamp_min(1e-12)


def adapt(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    *,
    adapted: Iterable[str] | None = None,
    steps: int = 1,
    lr: float = 0.5,
    first_order: bool = False,
    sample_weight: Tensor | None = None,
    mode: str = "func",
) -> dict[str, Tensor]:
    """Run ``steps`` SGD steps of the weighted cross-entropy on ``(x, y)``.

    Args:
        model: module evaluated with ``torch.func.functional_call(model, (params, buffers), x)``;
            it must map ``x`` to ``(N, C)`` logits.
        params: parameter dict (name -> tensor), e.g. ``dict(model.named_parameters())``.
        buffers: buffer dict (may be empty).
        x: ``(N, ...)`` inputs of one task.
        y: ``(N,)`` int64 labels.
        adapted: names of the parameters to adapt (the others stay fixed); ``None`` adapts all.
        steps: number of inner SGD steps (>= 0).
        lr: inner learning rate ``alpha``.
        first_order: if True the inner gradients are detached (first-order MAML); otherwise the
            returned parameters stay differentiable through the inner gradients (second order;
            with ``mode="autograd"`` only when grad mode is enabled).
        sample_weight: optional ``(N,)`` weights of the loss (see ``weighted_cross_entropy``).
        mode: ``"func"``: gradients by ``torch.func.grad``, valid everywhere (under ``vmap``,
            ``grad`` and outside them); ``"autograd"``: by ``torch.autograd.grad``, the same
            values with less overhead, but only outside ``torch.func`` transforms. Under
            ``torch.no_grad`` both still compute the inner gradients; ``"autograd"`` then keeps
            no graph.

    Returns:
        A new dict with every name of ``params``; adapted entries are ``theta - lr * grad``.
    """
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    names = list(params) if adapted is None else list(adapted)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ValueError(
            f"adapted names {unknown} are not in params (known: {list(params)[:8]}...)"
        )
    fixed = {n: p for n, p in params.items() if n not in set(names)}

    def loss_fn(sub: dict[str, Tensor]) -> Tensor:
        logits = functional_call(model, ({**fixed, **sub}, dict(buffers)), (x,))
        return weighted_cross_entropy(logits, y, sample_weight)

    sub = {n: params[n] for n in names}
    if mode == "func":
        for _ in range(steps):
            grads = grad(loss_fn)(sub)
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
            sub = {n: sub[n] - lr * grads[n] for n in names}
        return {**fixed, **sub} if names else dict(params)
    # plain autograd. Under torch.no_grad (meta-test) the inner gradients are still computed,
    # but no graph is kept for an outer backward.
    create_graph = not first_order and torch.is_grad_enabled()
    with torch.enable_grad():
        sub = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in sub.items()}
        for _ in range(steps):
            loss = loss_fn(sub)
            grads = torch.autograd.grad(loss, list(sub.values()), create_graph=create_graph)
            sub = {n: sub[n] - lr * g for n, g in zip(names, grads, strict=True)}
    return {**fixed, **sub} if names else dict(params)
