"""MAML, ANIL, BOIL and their GP (adaptive pseudo-label) variants over any body/head network.

Per task (``N`` ways; support ``x_S, y_S``; query ``x_Q, y_Q``):

* base learner: ``theta' = adapt(theta, x_S, y_S)`` over the method's parameter subset (MAML
  all, ANIL the head, BOIL the body); loss ``CE(f_theta'(x_Q), y_Q)``.
* GP learner (Liu et al., arXiv 2207.04217): embed ``[x_S; x_Q]`` with ``theta'``, propagate
  the support labels (``label_propagation``), pick a class-balanced set of confident queries
  (``pick_pseudo_labels``), re-adapt *from theta* on the support plus the picked queries
  (gathered in a Python loop; under ``vmap`` a 0/1 weight over all queries, also in the
  batch-norm statistics), fall back to ``theta'`` when nothing is picked; loss
  ``CE(f_theta''(x_Q), y_Q) + CE(F, [y_S; y_Q])`` (the label-propagation term only in training).

The per-task function is pure and ``vmap``-able; the meta-batch runs as a Python loop or under
``torch.func.vmap`` (``task_batching``). With ``compiled=True`` a base learner's
``forward_backward`` computes each task's meta-gradient as compiled gradients plus compiled
Hessian-vector products of the inner loss (``_meta_gradient``), the same numbers as autograd
through the inner loop.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vjp, vmap

from .adaptation import _inside_functorch_transform, adapt
from .backbones import fast_compiled_layers, sample_weighted_batch_norm
from .label_propagation import RelationNet, class_mass_normalize, label_propagation
from .picking import pick_pseudo_labels

__all__ = [
    "METHODS",
    "MetaLearner",
    "MetaOutput",
    "check_no_running_stats",
    "create_learner",
]

METHODS = ("maml", "anil", "boil", "gp-maml", "gp-anil", "gp-boil")
_BATCHING = ("loop", "vmap", "auto")


@dataclass
class MetaOutput:
    """Result of a meta-batch: mean ``loss`` (scalar, differentiable), ``accuracy`` in percent
    (scalar), query ``logits`` ``(B, N_q, N)`` and ``picked`` pseudo-labelled queries per task
    ``(B,)`` (zeros for base learners)."""

    loss: Tensor
    accuracy: Tensor
    logits: Tensor
    picked: Tensor


def _has_fused_batch_norm(model: nn.Module) -> bool:
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm)
        and type(m).forward is nn.modules.batchnorm._BatchNorm.forward
        for m in model.modules()
    )


def check_no_running_stats(model: nn.Module) -> None:
    """Raise ``ValueError`` if a batch-norm layer of ``model`` tracks running statistics."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            raise ValueError(
                f"batch-norm layer {name!r} ({type(module).__name__}) tracks running statistics; "
                "meta-learning here uses per-task batch statistics (as MAML does). Build it "
                "with track_running_stats=False or call "
                "torch.func.replace_all_batch_norm_modules_(model) first."
            )


class MetaLearner(nn.Module):
    """A MAML-family meta-learner.

    Args:
        model: network mapping ``(B, C, H, W)`` to ``(B, N)`` logits whose last step is the
            submodule named ``head`` (its input is the embedding used by label propagation).
        method: one of ``METHODS``.
        head: name of the head submodule; parameters named ``head.*`` form the head, all others
            the body (use ``MetaLearner.from_modules`` to pass two modules instead).
        inner_lr: inner learning rate ``alpha``.
        inner_steps: inner SGD steps (also used for the GP re-training step).
        first_order: drop second-order terms of the inner loop.
        relation_net: scale network of label propagation (GP methods); built as
            ``RelationNet(model.num_features)`` when omitted.
        lp_alpha, lp_topk: label-propagation strength and neighbours per row.
        lp_loss_weight: weight of the label-propagation loss ``CE(F, [y_S; y_Q])`` in the
            meta-training objective (the paper adds it with weight 1; 0.01 measured better here,
            see the README). Under Adam the relation net, trained by this term alone, learns at
            the same speed for any weight > 0; the weight sets its pull on the shared network.
        class_mass_norm: pick pseudo-labels from class-mass-normalised query scores
            (``class_mass_normalize``) instead of the raw ``F`` (see the README's design
            choices: with raw ``F`` the class-balanced rule almost never picks anything).
        task_batching: ``"loop"``, ``"vmap"`` or ``"auto"`` (``loop`` on CPU, where it measured
            faster than ``vmap`` for Conv-4, see the README; ``vmap`` on CUDA).
        compiled: ``torch.compile`` the per-task work (``loop`` mode). ``forward_backward`` of
            MAML/ANIL/BOIL then gets each task's meta-gradient from compiled pieces: the support
            and query gradients are compiled forward+backward graphs, and the second-order term
            is an explicit Hessian-vector product of the inner loss (a compiled
            ``torch.func`` graph) instead of a backward through an eager inner loop; the same
            meta-gradient (tested). GP learners and ``forward`` compile the query forward (its
            backward is first order, so second-order gradients still flow). Costs seconds of
            compilation per input shape.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str = "maml",
        head: str = "head",
        inner_lr: float = 0.5,
        inner_steps: int = 1,
        first_order: bool = False,
        relation_net: nn.Module | None = None,
        lp_alpha: float = 0.99,
        lp_topk: int = 20,
        lp_loss_weight: float = 0.01,
        class_mass_norm: bool = True,
        task_batching: str = "auto",
        compiled: bool = False,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
        if task_batching not in _BATCHING:
            raise ValueError(f"task_batching must be one of {_BATCHING}, got {task_batching!r}")
        if inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
        check_no_running_stats(model)
        names = [n for n, _ in model.named_parameters()]
        head_names = [n for n in names if n.startswith(head + ".")]
        if not head_names:
            raise ValueError(
                f"no parameter of the model starts with head prefix {head!r}. "
                f"Parameters: {names[:6]}...; pass head=<name of the classifier submodule>."
            )
        body_names = [n for n in names if n not in head_names]
        self.model = model
        self.method = method
        self.head = head
        self.gp = method.startswith("gp-")
        base = method.removeprefix("gp-")
        self.adapted = {"maml": names, "anil": head_names, "boil": body_names}[base]
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.lp_alpha = lp_alpha
        self.lp_topk = lp_topk
        self.lp_loss_weight = lp_loss_weight
        self.class_mass_norm = class_mass_norm
        self.task_batching = task_batching
        self.compiled = compiled
        self._loss_graph = torch.compile(self._loss_and_logits, dynamic=False) if compiled else None
        self._hvp_graph = torch.compile(self._inner_hvp, dynamic=False) if compiled else None
        if self.gp and relation_net is None:
            num_features = getattr(model, "num_features", None)
            if num_features is None:
                raise ValueError(
                    f"method {method!r} needs a relation_net, or a model with a num_features "
                    "attribute (the embedding size) to build one"
                )
            relation_net = RelationNet(num_features)
        self.relation_net = relation_net if self.gp else None

    @classmethod
    def from_modules(cls, body: nn.Module, head: nn.Module, **kwargs) -> MetaLearner:
        """Build from a body (``(B, C, H, W)`` -> ``(B, D)``) and a head (``(B, D)`` -> ``(B, N)``)."""
        model = nn.Sequential(OrderedDict(body=body, head=head))
        return cls(model, head="head", **kwargs)

    # -- per task -------------------------------------------------------------------------

    def _forward_params(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.model, params, (x,))

    def _loss_and_logits(self, params: dict[str, Tensor], x: Tensor, y: Tensor):
        logits = self._forward_params(params, x)
        return F.cross_entropy(logits, y), logits

    def _maybe_compiled_loss(self, params: dict[str, Tensor], x: Tensor, y: Tensor):
        if self._loss_graph is not None and not _inside_functorch_transform():
            with fast_compiled_layers(self.model):
                return self._loss_graph(params, x, y)
        return self._loss_and_logits(params, x, y)

    def _logits(self, params: dict[str, Tensor], x: Tensor, embed: bool = False):
        if not embed:
            return self._forward_params(params, x)
        store: list[Tensor] = []
        hook = self.model.get_submodule(self.head).register_forward_pre_hook(
            lambda _m, args: store.append(args[0])
        )
        try:
            logits = functional_call(self.model, params, (x,))
        finally:
            hook.remove()
        return logits, store[0].flatten(1)

    def _adapt(self, params, x, y, weight=None):
        return adapt(
            self.model,
            params,
            {},
            x,
            y,
            adapted=self.adapted,
            steps=self.inner_steps,
            lr=self.inner_lr,
            first_order=self.first_order,
            sample_weight=weight,
        )

    def task_loss(
        self,
        params: dict[str, Tensor],
        rel_params: dict[str, Tensor],
        xs: Tensor,
        ys: Tensor,
        xq: Tensor,
        yq: Tensor,
        ways: int,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Pure per-task function (``vmap``-able over the tensor arguments).

        Args:
            params: model parameters; rel_params: relation-net parameters (``{}`` for base).
            xs: ``(N_s, C, H, W)``; ys: ``(N_s,)``; xq: ``(N_q, C, H, W)``; yq: ``(N_q,)``.
            ways: number of classes ``N``.

        Returns:
            ``(loss, logits, picked)``: scalar loss, ``(N_q, N)`` query logits after adaptation,
            number of picked queries (scalar float).
        """
        adapted = self._adapt(params, xs, ys)
        if not self.gp:
            loss, logits = self._maybe_compiled_loss(adapted, xq, yq)
            return loss, logits, xq.new_zeros(())
        n_s = xs.shape[0]
        x_all = torch.cat([xs, xq])
        _, z = self._logits(adapted, x_all, embed=True)
        sigma = functional_call(self.relation_net, rel_params, (z,))
        scores = label_propagation(z, ys, sigma, ways, alpha=self.lp_alpha, topk=self.lp_topk)
        query_scores = scores[n_s:]
        if self.class_mass_norm:
            query_scores = class_mass_normalize(query_scores)
        mask, pseudo = pick_pseudo_labels(query_scores, ways)
        use = mask.sum() > 0
        if _inside_functorch_transform():  # fixed shapes: a 0/1 weight over all queries
            weight = torch.cat([torch.ones_like(ys, dtype=mask.dtype), mask])
            with sample_weighted_batch_norm(self.model, weight):
                retrained = self._adapt(params, x_all, torch.cat([ys, pseudo]), weight)
            final = {n: torch.where(use, retrained[n], adapted[n]) for n in adapted}
        elif bool(use):  # the same numbers on the picked subset only (fewer images)
            keep = mask.bool()
            final = self._adapt(params, torch.cat([xs, xq[keep]]), torch.cat([ys, pseudo[keep]]))
        else:  # nothing picked: theta'
            final = adapted
        loss, logits = self._maybe_compiled_loss(final, xq, yq)
        if self.training and self.lp_loss_weight:
            loss = loss + self.lp_loss_weight * F.cross_entropy(scores, torch.cat([ys, yq]))
        return loss, logits, mask.sum()

    # -- compiled meta-gradient (base learners) --------------------------------------------

    def _inner_hvp(
        self, params: dict[str, Tensor], vector: dict[str, Tensor], x: Tensor, y: Tensor
    ) -> dict[str, Tensor]:
        """``d/d params <grad_A L(params), vector>``: the inner loss's Hessian columns of the
        adapted names ``A`` times ``vector`` (keyed by ``A``); returns every name of ``params``."""

        def inner_grad(p: dict[str, Tensor]) -> dict[str, Tensor]:
            def loss(sub: dict[str, Tensor]) -> Tensor:
                return self._loss_and_logits({**p, **sub}, x, y)[0]

            return grad(loss)({n: p[n] for n in self.adapted})

        return vjp(inner_grad, params)[1](vector)[0]

    def _loss_grads(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor, names: list[str]
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Compiled ``(loss, logits, {name: d loss / d params[name]})`` for ``x`` ``(N, C, H, W)``
        and ``y`` ``(N,)``; no graph is kept."""
        leaves = {n: params[n].detach().requires_grad_() for n in names}
        with torch.enable_grad():
            loss, logits = self._maybe_compiled_loss({**params, **leaves}, x, y)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        return loss.detach(), logits.detach(), dict(zip(names, grads))

    def _meta_gradient(
        self, params: dict[str, Tensor], xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """One task's ``(loss, (N_q, N) logits, meta-gradient)``, no graph through the inner loop.

        ``theta_{i+1} = theta_i - lr * P grad L_S(theta_i)`` (``P`` keeps the adapted names); the
        meta-gradient of ``L_Q(theta_k)`` is ``v = grad L_Q(theta_k)`` followed, from the last
        step to the first, by ``v <- v - lr * H_S(theta_i) P v`` (second order only).
        """
        params = {n: t.detach() for n, t in params.items()}
        points = [params]
        for _ in range(self.inner_steps):
            g = self._loss_grads(points[-1], xs, ys, self.adapted)[2]
            points.append({**points[-1], **{n: points[-1][n] - self.inner_lr * g[n] for n in g}})
        loss, logits, v = self._loss_grads(points[-1], xq, yq, list(params))
        if not self.first_order:
            for point in reversed(points[:-1]):
                hv = self._hvp_graph(point, {n: v[n] for n in self.adapted}, xs, ys)
                v = {n: v[n] - self.inner_lr * hv[n] for n in v}
        return loss, logits, v

    # -- meta-batch -----------------------------------------------------------------------

    def resolved_batching(self, device: torch.device) -> str:
        """The batching mode used on ``device`` (resolves ``"auto"``)."""
        if self.task_batching != "auto":
            return self.task_batching
        return "vmap" if device.type == "cuda" else "loop"

    def _meta_batch_inputs(self, xs: Tensor, ys: Tensor, xq: Tensor):
        if xs.dim() != 5 or xq.dim() != 5:
            raise ValueError(
                f"expected (B, N, C, H, W) support/query tensors, got {tuple(xs.shape)} and "
                f"{tuple(xq.shape)}"
            )
        ways = int(ys.max()) + 1
        params = dict(self.model.named_parameters())
        rel = dict(self.relation_net.named_parameters()) if self.gp else {}
        return ways, params, rel

    def forward(self, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> MetaOutput:
        """Meta-batch of ``B`` tasks.

        Args:
            xs: ``(B, N_s, C, H, W)`` support images; ys: ``(B, N_s)`` labels in ``[0, N)``.
            xq: ``(B, N_q, C, H, W)`` query images; yq: ``(B, N_q)`` labels.

        Returns:
            ``MetaOutput`` with the loss averaged over tasks.
        """
        ways, params, rel = self._meta_batch_inputs(xs, ys, xq)
        if self.resolved_batching(xs.device) == "vmap":
            if (
                not self.first_order
                and torch.is_grad_enabled()
                and _has_fused_batch_norm(self.model)
            ):
                raise ValueError(
                    "torch.nn batch-norm gives wrong second-order gradients under torch.func.vmap "
                    "(PyTorch 2.x); use gp_maml.BatchNorm2d in the model, first_order=True, or "
                    "task_batching='loop'"
                )
            fn = vmap(self.task_loss, in_dims=(None, None, 0, 0, 0, 0, None))
            loss, logits, picked = fn(params, rel, xs, ys, xq, yq, ways)
        else:
            outs = [
                self.task_loss(params, rel, xs[b], ys[b], xq[b], yq[b], ways)
                for b in range(xs.shape[0])
            ]
            loss, logits, picked = (torch.stack(t) for t in zip(*outs))
        return _meta_output(loss, logits, picked, yq)

    def forward_backward(self, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> MetaOutput:
        """``forward(...).loss.backward()`` one task at a time (peak memory of a single task).

        Each task's share of the mean loss is back-propagated as soon as it is computed, so
        parameter gradients accumulate exactly as with ``forward(...).loss.backward()`` while
        only one task's graph is alive (``higher``'s memory profile). Python-loop batching only.
        With ``compiled=True`` a base learner adds each task's compiled meta-gradient
        (``_meta_gradient``) to the ``.grad`` fields instead.

        Args:
            xs, ys, xq, yq: as in ``forward``.

        Returns:
            ``MetaOutput`` with a detached mean ``loss``.
        """
        ways, params, rel = self._meta_batch_inputs(xs, ys, xq)
        n_tasks = xs.shape[0]
        outs = []
        for b in range(n_tasks):
            if self.compiled and not self.gp:
                loss, logits, grads = self._meta_gradient(params, xs[b], ys[b], xq[b], yq[b])
                for n, p in params.items():
                    g = grads[n] / n_tasks
                    p.grad = g if p.grad is None else p.grad + g
                outs.append([loss, logits, loss.new_zeros(())])
                continue
            out = self.task_loss(params, rel, xs[b], ys[b], xq[b], yq[b], ways)
            (out[0] / n_tasks).backward()
            outs.append([t.detach() for t in out])
        loss, logits, picked = (torch.stack(t) for t in zip(*outs))
        return _meta_output(loss, logits, picked, yq)


def _meta_output(loss: Tensor, logits: Tensor, picked: Tensor, yq: Tensor) -> MetaOutput:
    """``MetaOutput`` from per-task ``(B,)`` losses, ``(B, N_q, N)`` logits, ``(B,)`` picks."""
    accuracy = (logits.argmax(-1) == yq).float().mean() * 100
    return MetaOutput(loss.mean(), accuracy.detach(), logits, picked.detach())


def create_learner(method: str, model: nn.Module, **kwargs) -> MetaLearner:
    """Build one of ``METHODS`` (``"maml"``, ``"gp-anil"``, ...) around ``model``."""
    return MetaLearner(model, method=method, **kwargs)
