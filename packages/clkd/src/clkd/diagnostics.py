"""Per-term gradient norms: how hard each weighted loss term pulls on the student.

A distillation loss is a sum of weighted terms; whether a term matters is decided by the size of
its gradient, not by the size of its value. :func:`term_gradient_norms` measures, for every
``loss_*`` term separately, the L2 norm of its gradient with respect to given tensors (the
student's logits, its feature map, or its parameters), so weights can be set on a common scale
(``benchmarks/grad_norms.py`` prints the table in the README).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["term_gradient_norms"]


def term_gradient_norms(
    terms: Mapping[str, torch.Tensor], wrt: torch.Tensor | Sequence[torch.Tensor]
) -> dict[str, float]:
    """``{name: ‖∂term/∂wrt‖₂}`` for every term, plus ``"total"`` for their sum.

    Args:
        terms: scalar loss terms (e.g. the dict a CLKD/KD/DKD/TRG loss returns), built from
            ``wrt`` with autograd.
        wrt: one tensor (e.g. the ``(B, C)`` student logits) or several (e.g. the student's
            parameters); the norm is taken over all of them together. A term that does not
            depend on ``wrt`` (a constant, or a feature term measured against the logits) has
            norm 0.

    The graph is kept (``retain_graph=True``), so the terms can still be back-propagated.
    """
    inputs = [wrt] if isinstance(wrt, torch.Tensor) else list(wrt)
    if not inputs or not all(x.requires_grad for x in inputs):
        raise ValueError("wrt must be tensors that require grad (e.g. student logits)")
    named = dict(terms)
    if not named:
        raise ValueError("terms is empty; pass the dict of loss_* terms")
    bad = {k: tuple(v.shape) for k, v in named.items() if v.ndim != 0}
    if bad:
        raise ValueError(f"terms must be scalars, got shapes {bad}")
    named["total"] = sum(named.values())
    norms = {}
    for name, value in named.items():
        if not value.requires_grad:
            norms[name] = 0.0
            continue
        grads = torch.autograd.grad(value, inputs, retain_graph=True, allow_unused=True)
        sq = sum(float(g.double().pow(2).sum()) for g in grads if g is not None)
        norms[name] = sq**0.5
    return norms
