"""How one task's meta-gradient is computed: autograd through the inner loop, or compiled pieces.

Both strategies are called as ``strategy(params, rel_params, xs, ys, xq, yq, ways, n_tasks)``
for one task and return ``(loss, logits, picked, grads)``: the detached task loss, ``(N_q, N)``
query logits and number of picked queries, and ``grads``, a list of ``(parameter, gradient of
loss / n_tasks)`` pairs that the caller adds to the parameters' ``.grad``
(``batching.backward_task_by_task``). Neither writes anything itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp

__all__ = [
    "AutogradMetaGradient",
    "CompiledMetaGradient",
    "LossFn",
    "TaskGradient",
    "compile_loss",
    "cross_entropy_and_logits",
]

#: ``(loss, logits, picked, [(parameter, gradient), ...])`` of one task.
TaskGradient = tuple[Tensor, Tensor, Tensor, list[tuple[Tensor, Tensor]]]
#: ``(params, buffers, x, y) -> (loss, logits)``.
LossFn = Callable[[dict[str, Tensor], dict[str, Tensor], Tensor, Tensor], tuple[Tensor, Tensor]]


def cross_entropy_and_logits(
    model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """``(CE(f(x), y), f(x))`` for ``f = functional_call(model, (params, buffers))``,
    ``x`` ``(N, C, H, W)``, ``y`` ``(N,)``; logits ``(N, num_classes)``."""
    logits = functional_call(model, (params, buffers), (x,))
    return F.cross_entropy(logits, y), logits


def compile_loss(model: nn.Module) -> LossFn:
    """``cross_entropy_and_logits`` of ``model`` as one ``torch.compile`` graph (fixed shapes).

    ``model`` should hold the layer variants for graphs outside ``torch.func`` transforms
    (``FusedBatchNorm2d``, ``ElementwiseBackwardMaxPool2d``); the graph's backward is first
    order.
    """

    def loss(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor):
        return cross_entropy_and_logits(model, params, buffers, x, y)

    return torch.compile(loss, dynamic=False)


class AutogradMetaGradient:
    """Back-propagation of a task's loss through its (eager) inner loop: any learner.

    Args:
        task_loss: the learner's per-task function ``(params, rel_params, xs, ys, xq, yq,
            ways) -> (loss, logits, picked)`` outside ``torch.func`` transforms (e.g.
            ``functools.partial(learner.task_loss, mode="autograd")``).
    """

    def __init__(self, task_loss: Callable[..., tuple[Tensor, Tensor, Tensor]]) -> None:
        self.task_loss = task_loss

    def __call__(
        self,
        params: dict[str, Tensor],
        rel_params: dict[str, Tensor],
        xs: Tensor,
        ys: Tensor,
        xq: Tensor,
        yq: Tensor,
        ways: int,
        n_tasks: int,
    ) -> TaskGradient:
        """One task's ``(loss, logits, picked, grads)`` (see the module docstring)."""
        loss, logits, picked = self.task_loss(params, rel_params, xs, ys, xq, yq, ways)
        leaves = [t for t in (*params.values(), *rel_params.values()) if t.requires_grad]
        grads = torch.autograd.grad(loss / n_tasks, leaves, allow_unused=True)
        pairs = [(p, g) for p, g in zip(leaves, grads, strict=True) if g is not None]
        return loss.detach(), logits.detach(), picked.detach(), pairs


class CompiledMetaGradient:
    """A base learner's meta-gradient from compiled pieces, no graph through the inner loop.

    ``theta_{i+1} = theta_i - lr * P grad L_S(theta_i)`` (``P`` keeps the adapted names); the
    meta-gradient of ``L_Q(theta_k)`` is ``v = grad L_Q(theta_k)`` followed, from the last step
    to the first, by ``v <- v - lr * H_S(theta_i) P v`` (second order only). The support and
    query gradients are backward passes of ``query_loss`` (a compiled forward+backward graph);
    ``H_S P v`` is a compiled ``torch.func`` Hessian-vector product of the inner loss of
    ``functional_model``. The same meta-gradient as ``AutogradMetaGradient`` (tested); only for
    learners without pseudo-labels (MAML, ANIL, BOIL).

    Args:
        query_loss: ``(params, buffers, x, y) -> (loss, logits)``, e.g. ``compile_loss(view)``
            of a view with fused batch-norm and the elementwise max-pool backward.
        functional_model: the network in ``torch.func``-safe layers (for the Hessian graph).
        buffers: the network's buffers (name -> tensor), looked up at every call.
        adapted: names of the parameters the inner loop adapts.
        inner_lr, inner_steps, first_order: the inner loop's settings.
    """

    def __init__(
        self,
        query_loss: LossFn,
        functional_model: nn.Module,
        buffers: Callable[[], dict[str, Tensor]],
        adapted: list[str],
        *,
        inner_lr: float,
        inner_steps: int,
        first_order: bool,
    ) -> None:
        self.query_loss = query_loss
        self.functional_model = functional_model
        self.buffers = buffers
        self.adapted = adapted
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self._hvp_graph = torch.compile(self._inner_hvp, dynamic=False)

    def _inner_hvp(
        self,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        vector: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
    ) -> dict[str, Tensor]:
        """``d/d params <grad_A L(params), vector>``: the inner loss's Hessian columns of the
        adapted names ``A`` times ``vector`` (keyed by ``A``); returns every name of ``params``."""

        def inner_grad(p: dict[str, Tensor]) -> dict[str, Tensor]:
            def loss(sub: dict[str, Tensor]) -> Tensor:
                model = self.functional_model
                return cross_entropy_and_logits(model, {**p, **sub}, buffers, x, y)[0]

            return grad(loss)({n: p[n] for n in self.adapted})

        return vjp(inner_grad, params)[1](vector)[0]

    def _loss_grads(
        self,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        names: list[str],
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """``(loss, logits, {name: d loss / d params[name]})`` for ``x`` ``(N, C, H, W)`` and
        ``y`` ``(N,)`` by ``query_loss``; no graph is kept."""
        leaves = {n: params[n].detach().requires_grad_() for n in names}
        with torch.enable_grad():
            loss, logits = self.query_loss({**params, **leaves}, buffers, x, y)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return loss.detach(), logits.detach(), dict(zip(names, grads, strict=True))

    def meta_gradient(
        self, params: dict[str, Tensor], xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One task's ``(loss, (N_q, N) logits, {name: meta-gradient})`` (class docstring)."""
        buffers = self.buffers()
        params = {n: t.detach() for n, t in params.items()}
        points = [params]
        for _ in range(self.inner_steps):
            g = self._loss_grads(points[-1], buffers, xs, ys, self.adapted)[2]
            points.append({**points[-1], **{n: points[-1][n] - self.inner_lr * g[n] for n in g}})
        loss, logits, v = self._loss_grads(points[-1], buffers, xq, yq, list(params))
        if not self.first_order:
            for point in reversed(points[:-1]):
                hv = self._hvp_graph(point, buffers, {n: v[n] for n in self.adapted}, xs, ys)
                v = {n: v[n] - self.inner_lr * hv[n] for n in v}
        return loss, logits, v

    def __call__(
        self,
        params: dict[str, Tensor],
        rel_params: dict[str, Tensor],
        xs: Tensor,
        ys: Tensor,
        xq: Tensor,
        yq: Tensor,
        ways: int,
        n_tasks: int,
    ) -> TaskGradient:
        """One task's ``(loss, logits, picked, grads)`` (see the module docstring)."""
        if rel_params:
            raise ValueError(
                "CompiledMetaGradient is for learners without pseudo-labels (maml, anil, "
                f"boil); got relation-net parameters {list(rel_params)[:4]}"
            )
        loss, logits, v = self.meta_gradient(params, xs, ys, xq, yq)
        pairs = [(p, v[n] / n_tasks) for n, p in params.items()]
        return loss, logits, loss.new_zeros(()), pairs
