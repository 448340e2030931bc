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

``MetaLearner`` is the learner: what to adapt and the per-task function ``task_loss``. How the
tasks of a meta-batch run is ``batching`` (a loop or ``vmap``; task by task with a backward
after each for ``forward_backward``), how a task's gradient is computed is ``meta_gradient``
(autograd through the inner loop, or compiled pieces with ``compiled=True``). The code path
is chosen by explicit arguments: ``task_loss(..., mode="func")`` is ``vmap``-able, ``mode=
"autograd"`` runs outside ``torch.func`` transforms with the faster layers (``layers``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .adaptation import adapt
from .batching import BATCHING, backward_task_by_task, loop_tasks, resolve_batching, vmap_tasks
from .label_propagation import (
    RelationNet,
    TPNRelationNet,
    class_mass_normalize,
    label_propagation,
)
from .layers import (
    BatchNorm2d,
    ChannelsLastMaxPool2d,
    ElementwiseBackwardMaxPool2d,
    FusedBatchNorm2d,
    MaxPool2d,
    SampleWeightedBatchNorm2d,
    swap_layers,
)
from .meta_gradient import (
    AutogradMetaGradient,
    CompiledMetaGradient,
    LossFn,
    compile_loss,
    cross_entropy_and_logits,
)
from .picking import (
    check_picking_rule,
    pick_balanced_or_confident,
    pick_confident,
    pick_pseudo_labels,
)

__all__ = [
    "METHODS",
    "PRESETS",
    "MetaLearner",
    "MetaOutput",
    "check_no_running_stats",
    "create_learner",
    "paper_rules",
    "paper_settings",
    "tpn_relation_net",
]

METHODS = ("maml", "anil", "boil", "gp-maml", "gp-anil", "gp-boil")
PRESETS = ("default", "paper")
#: The paper's code's ``pic_num``: candidates of the class-balanced pick at meta-training.
PAPER_PICK_POOL = 75
_ENCODER = "lp_encoder."
_MODES = ("func", "autograd")


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


def _without(model: nn.Module, path: str) -> nn.Module:
    """A view of ``model`` whose submodule ``path`` (dotted) is ``nn.Identity``; ``model`` and
    the modules off the path are shared, not modified."""
    first, _, rest = path.partition(".")
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view._parameters = dict(model._parameters)
    view._buffers = dict(model._buffers)
    view._modules[first] = _without(model._modules[first], rest) if rest else nn.Identity()
    return view


def find_head(model: nn.Module) -> str:
    """The name of ``model``'s classifier submodule: ``head`` if it has one, else timm's
    ``model.get_classifier()``, else the last submodule with parameters (an ``nn.Sequential``'s
    final layer, as learn2learn's ``MAML(model)`` takes it)."""
    names = {n for n, _ in model.named_parameters()}
    if any(n.startswith("head.") for n in names):
        return "head"
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    with_params = [
        (name, module)
        for name, module in model.named_modules()
        if name and any(True for _ in module.parameters(recurse=False))
    ]
    for name, module in with_params:
        if module is classifier:
            return name
    if not with_params:
        raise ValueError("the model has no submodule with parameters to adapt as its head")
    return with_params[-1][0]


@dataclass(frozen=True)
class _Network:
    """The learner's network in the layer variants of one code path: ``model`` (``(B, C, H,
    W)`` -> ``(B, N)``) and ``body`` (the same with the head replaced by the identity, so it
    returns the head's input)."""

    model: nn.Module
    body: nn.Module

    @classmethod
    def of(cls, model: nn.Module, head: str, **layers) -> _Network:
        view = swap_layers(model, **layers)
        return cls(view, _without(view, head))


class MetaLearner(nn.Module):
    """A MAML-family meta-learner.

    The network is used through views that hold the layer variant each code path needs
    (``layers.swap_layers``): torch's fused batch-norm and the channels-last max-pool in the
    eager loop, the ``torch.func``-safe layers under ``vmap``, the elementwise max-pool backward
    in compiled graphs. Nothing is written to ``model`` or to the parameter dicts; the only
    state that changes is ``.grad`` of the parameters (``forward_backward``, or a backward of
    ``forward``'s loss).

    Args:
        model: network mapping ``(B, C, H, W)`` to ``(B, N)`` logits whose last step is the
            submodule named ``head`` (its input is the embedding used by label propagation).
        method: one of ``METHODS``.
        head: name of the head submodule; parameters named ``head.*`` form the head, all others
            the body (use ``MetaLearner.from_modules`` to pass two modules instead). ``None``:
            :func:`find_head` (``head``, timm's ``get_classifier()``, or the last layer with
            parameters). Its outputs must match the tasks' ways (checked per meta-batch).
        inner_lr: inner learning rate ``alpha``.
        inner_steps: inner SGD steps (also used for the GP re-training step).
        first_order: drop second-order terms of the inner loop.
        relation_net: scale network of label propagation (GP methods); built as
            ``RelationNet(model.num_features)`` when omitted.
        lp_alpha, lp_topk: label-propagation strength and neighbours per row.
        lp_loss_weight: weight of the label-propagation loss ``CE(F, [y_S; y_Q])`` in the
            meta-training objective (0.01, a deviation from the paper's 1, which
            ``preset="paper"`` sets: 0.01 won or tied on the validation split for every GP
            learner in 5-way 1-shot, 5-way 5-shot and 20-way 1-shot, see the README). Under Adam
            the relation net, trained by this term alone, learns at the same speed for any
            weight > 0; the weight sets its pull on the shared network.
        class_mass_norm: pick pseudo-labels from class-mass-normalised query scores
            (``class_mass_normalize``) instead of the raw ``F`` (see the README's design
            choices: with raw ``F`` the class-balanced rule almost never picks anything).
        pick_threshold: GP methods: ``None`` picks class-balanced (``pick_pseudo_labels``, the
            paper's rule); a share in (0, 1] picks every query whose propagated mass is at least
            that much on one class (``pick_confident``; an option: with one query per class the
            balanced rule often picks nothing, see the README).
        fallback_threshold: GP methods, class-balanced picking: where it picks nothing
            (``k = 0``), pick by this confidence share instead (``pick_balanced_or_confident``;
            an option, see the README); ``None`` keeps θ′ there, as the paper.
        pick_pool: GP methods, class-balanced picking at meta-training (``self.training``):
            only the ``pick_pool`` most confident queries are candidates (the paper's code's
            ``pic_num = 75``); ``None`` (default) and every evaluation use all queries.
        self_loops: keep each node's link to itself in the label-propagation graph (the
            paper's code, the default: it tied or won against a zeroed diagonal on the
            validation split, see the README); ``False`` zeroes the diagonal (Zhou et al.).
        separate_lp_encoder: GP methods: embed for label propagation with a separate copy of
            the body (``lp_encoder``, not adapted, trained only by the label-propagation loss),
            as the paper's code does for GP-ANIL; ``False`` embeds with the adapted body.
        task_batching: ``"loop"``, ``"vmap"`` or ``"auto"`` (``loop`` on CPU, where it measured
            faster than ``vmap`` for Conv-4, see the README; ``vmap`` on CUDA).
        compiled: ``torch.compile`` the per-task work (``loop`` mode). ``forward_backward`` of
            MAML/ANIL/BOIL then gets each task's meta-gradient from compiled pieces
            (``meta_gradient.CompiledMetaGradient``): the support and query gradients are
            compiled forward+backward graphs, and the second-order term is an explicit
            Hessian-vector product of the inner loss (a compiled ``torch.func`` graph) instead
            of a backward through an eager inner loop; the same meta-gradient (tested). GP
            learners and ``forward`` compile the query forward (its backward is first order, so
            second-order gradients still flow). Costs seconds of compilation per input shape.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str = "maml",
        head: str | None = None,
        inner_lr: float = 0.5,
        inner_steps: int = 1,
        first_order: bool = False,
        relation_net: nn.Module | None = None,
        lp_alpha: float = 0.99,
        lp_topk: int = 20,
        lp_loss_weight: float = 0.01,
        class_mass_norm: bool = True,
        pick_threshold: float | None = None,
        fallback_threshold: float | None = None,
        pick_pool: int | None = None,
        self_loops: bool = True,
        separate_lp_encoder: bool = False,
        task_batching: str = "auto",
        compiled: bool = False,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
        if task_batching not in BATCHING:
            raise ValueError(f"task_batching must be one of {BATCHING}, got {task_batching!r}")
        if inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
        check_picking_rule(pick_threshold, fallback_threshold)
        check_no_running_stats(model)
        names = [n for n, _ in model.named_parameters()]
        head = find_head(model) if head is None else head
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
        self.pick_threshold = pick_threshold
        self.fallback_threshold = fallback_threshold
        if pick_pool is not None and pick_pool < 1:
            raise ValueError(f"pick_pool must be >= 1 queries or None (all), got {pick_pool}")
        self.pick_pool = pick_pool
        self.self_loops = self_loops
        self.task_batching = task_batching
        self.compiled = compiled
        head_module = model.get_submodule(head)
        #: the head's width where it says (``nn.Linear``), checked against each task's ways
        self._head_width: int | None = getattr(head_module, "out_features", None)
        if self.gp and relation_net is None:
            num_features = getattr(model, "num_features", None)
            num_features = num_features or getattr(head_module, "in_features", None)
            if num_features is None:
                raise ValueError(
                    f"method {method!r} needs a relation_net, or a model with a num_features "
                    "attribute (the embedding size) to build one"
                )
            relation_net = RelationNet(num_features)
        self.relation_net = relation_net if self.gp else None
        gp_only = dict(
            separate_lp_encoder=separate_lp_encoder,
            pick_threshold=pick_threshold,
            fallback_threshold=fallback_threshold,
            pick_pool=pick_pool,
        )
        for name, value in gp_only.items():
            if value not in (None, False) and not self.gp:
                raise ValueError(f"{name} applies to GP methods only, not {method!r}")
        # a copy of the body in the vmap-safe layers, its own parameters
        self.lp_encoder = (
            copy.deepcopy(_Network.of(model, head, batch_norm=BatchNorm2d, max_pool=MaxPool2d).body)
            if separate_lp_encoder
            else None
        )
        # views of `model` (plain attributes: not submodules, not in the state dict)
        self._networks = {
            "autograd": _Network.of(
                model, head, batch_norm=FusedBatchNorm2d, max_pool=ChannelsLastMaxPool2d
            ),
            "func": _Network.of(model, head, batch_norm=BatchNorm2d, max_pool=MaxPool2d),
        }
        # (view, its compiled query loss); in a tuple, so the view is not a submodule
        self._compiled: tuple[nn.Module, LossFn] | None = None
        if compiled:
            view = swap_layers(
                model, batch_norm=FusedBatchNorm2d, max_pool=ElementwiseBackwardMaxPool2d
            )
            self._compiled = (view, compile_loss(view))
        if compiled and not self.gp:
            self._meta_gradient = CompiledMetaGradient(
                self._compiled[1],
                self._networks["func"].model,
                self._model_buffers,
                self.adapted,
                inner_lr=inner_lr,
                inner_steps=inner_steps,
                first_order=first_order,
            )
        else:
            self._meta_gradient = AutogradMetaGradient(partial(self.task_loss, mode="autograd"))

    @classmethod
    def from_modules(cls, body: nn.Module, head: nn.Module, **kwargs) -> MetaLearner:
        """Build from a body (``(B, C, H, W)`` -> ``(B, D)``) and a head (``(B, D)`` ->
        ``(B, N)``)."""
        model = nn.Sequential(OrderedDict(body=body, head=head))
        return cls(model, head="head", **kwargs)

    def train(self, mode: bool = True) -> MetaLearner:
        """``nn.Module.train``, also for the learner's views of the network."""
        super().train(mode)
        for network in self._networks.values():
            network.model.train(mode)
            network.body.train(mode)
        if self._compiled is not None:
            self._compiled[0].train(mode)
        return self

    # -- per task -------------------------------------------------------------------------

    def _model_buffers(self) -> dict[str, Tensor]:
        return dict(self.model.named_buffers())

    def _check_mode(self, mode: str) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")

    def adapt(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        *,
        mode: str = "func",
        sample_weight: Tensor | None = None,
        model: nn.Module | None = None,
    ) -> dict[str, Tensor]:
        """``theta'``: the learner's inner loop (its adapted names, steps, lr, order) on one task.

        Args:
            params: model parameters (name -> tensor).
            x: ``(N, C, H, W)`` support images; y: ``(N,)`` labels.
            mode: ``"func"`` (``vmap``-able) or ``"autograd"`` (outside ``torch.func``
                transforms, faster layers and inner gradients).
            sample_weight: optional ``(N,)`` weights of the inner loss.
            model: the view to run (default: the network of ``mode``).

        Returns:
            The adapted parameter dict (every name of ``params``).
        """
        self._check_mode(mode)
        return adapt(
            self._networks[mode].model if model is None else model,
            params,
            self._model_buffers(),
            x,
            y,
            adapted=self.adapted,
            steps=self.inner_steps,
            lr=self.inner_lr,
            first_order=self.first_order,
            sample_weight=sample_weight,
            mode=mode,
        )

    def propagate(self, z: Tensor, ys: Tensor, sigma: Tensor, ways: int) -> Tensor:
        """``label_propagation`` with this learner's graph (``lp_alpha``, ``lp_topk``,
        ``self_loops``): ``z`` ``(N, D)``, support labels ``ys`` ``(N_s,)``, ``sigma``
        ``(N, 1)`` -> scores ``F`` ``(N, ways)``."""
        return label_propagation(
            z, ys, sigma, ways, alpha=self.lp_alpha, topk=self.lp_topk, self_loops=self.self_loops
        )

    def embed(self, params: dict[str, Tensor], x: Tensor, *, mode: str = "func") -> Tensor:
        """``(N, C, H, W)`` -> ``(N, D)``: the head's input (flattened) with ``params``."""
        self._check_mode(mode)
        prefix = self.head + "."
        body_params = {n: t for n, t in params.items() if not n.startswith(prefix)}
        buffers = {n: t for n, t in self._model_buffers().items() if not n.startswith(prefix)}
        return functional_call(self._networks[mode].body, (body_params, buffers), (x,)).flatten(1)

    def _query_loss(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor, mode: str
    ) -> tuple[Tensor, Tensor]:
        if mode == "autograd" and self._compiled is not None:
            return self._compiled[1](params, self._model_buffers(), x, y)
        return cross_entropy_and_logits(
            self._networks[mode].model, params, self._model_buffers(), x, y
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
        *,
        mode: str = "func",
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The per-task function: pure; with ``mode="func"`` ``vmap``-able over the tensors.

        Args:
            params: model parameters; rel_params: relation-net parameters (``{}`` for base).
            xs: ``(N_s, C, H, W)``; ys: ``(N_s,)``; xq: ``(N_q, C, H, W)``; yq: ``(N_q,)``.
            ways: number of classes ``N``.
            mode: ``"func"``: valid under ``torch.func`` transforms (``vmap``); the GP
                re-training weights all queries by the 0/1 pick mask, batch-norm statistics
                included. ``"autograd"``: outside them only; faster layers, the inner loop by
                ``torch.autograd.grad``, the re-training on the gathered picks (the same numbers),
                and with ``compiled=True`` the compiled query pass.

        Returns:
            ``(loss, logits, picked)``: scalar loss, ``(N_q, N)`` query logits after adaptation,
            number of picked queries (scalar float).
        """
        self._check_mode(mode)
        adapted = self.adapt(params, xs, ys, mode=mode)
        if not self.gp:
            loss, logits = self._query_loss(adapted, xq, yq, mode)
            return loss, logits, xq.new_zeros(())
        n_s = xs.shape[0]
        x_all = torch.cat([xs, xq])
        rel = {n: t for n, t in rel_params.items() if not n.startswith(_ENCODER)}
        if self.lp_encoder is None:
            z = self.embed(adapted, x_all, mode=mode)
        else:
            enc = {n[len(_ENCODER) :]: t for n, t in rel_params.items() if n.startswith(_ENCODER)}
            z = functional_call(self.lp_encoder, enc, (x_all,)).flatten(1)
        sigma = functional_call(self.relation_net, rel, (z,))
        scores = self.propagate(z, ys, sigma, ways)
        query_scores = scores[n_s:]
        if self.class_mass_norm:
            query_scores = class_mass_normalize(query_scores)
        pool = self.pick_pool if self.training else None
        if self.fallback_threshold is not None:
            mask, pseudo = pick_balanced_or_confident(
                query_scores, ways, self.fallback_threshold, pool
            )
        elif self.pick_threshold is None:
            mask, pseudo = pick_pseudo_labels(query_scores, ways, pool)
        else:
            mask, pseudo = pick_confident(query_scores, self.pick_threshold)
        use = mask.sum() > 0
        if mode == "func":  # fixed shapes: a 0/1 weight over all queries
            weight = torch.cat([torch.ones_like(ys, dtype=mask.dtype), mask])
            weighted = swap_layers(
                self._networks["func"].model,
                batch_norm=partial(SampleWeightedBatchNorm2d.from_layer, sample_weight=weight),
            )
            y_all = torch.cat([ys, pseudo])
            retrained = self.adapt(
                params, x_all, y_all, mode=mode, sample_weight=weight, model=weighted
            )
            final = {n: torch.where(use, retrained[n], adapted[n]) for n in adapted}
        elif bool(use):  # the same numbers on the picked subset only (fewer images)
            keep = mask.bool()
            x_re, y_re = torch.cat([xs, xq[keep]]), torch.cat([ys, pseudo[keep]])
            final = self.adapt(params, x_re, y_re, mode=mode)
        else:  # nothing picked: theta'
            final = adapted
        loss, logits = self._query_loss(final, xq, yq, mode)
        if self.training and self.lp_loss_weight:
            loss = loss + self.lp_loss_weight * F.cross_entropy(scores, torch.cat([ys, yq]))
        return loss, logits, mask.sum()

    # -- meta-batch -----------------------------------------------------------------------

    def resolved_batching(self, device: torch.device) -> str:
        """The batching mode used on ``device`` (resolves ``"auto"``)."""
        return resolve_batching(self.task_batching, device)

    def _meta_batch_inputs(self, xs: Tensor, ys: Tensor, xq: Tensor):
        if xs.dim() != 5 or xq.dim() != 5:
            raise ValueError(
                f"expected (B, N, C, H, W) support/query tensors, got {tuple(xs.shape)} and "
                f"{tuple(xq.shape)}"
            )
        ways = int(ys.max()) + 1
        if self._head_width not in (None, ways):
            raise ValueError(
                f"the head ({self.head!r}) has {self._head_width} outputs but the tasks are "
                f"{ways}-way: "
                f"build the model with {ways} classes (a head of another width trains outputs no "
                "label of a task uses)"
            )
        params = dict(self.model.named_parameters())
        rel = dict(self.relation_net.named_parameters()) if self.gp else {}
        if self.lp_encoder is not None:
            rel |= {_ENCODER + n: t for n, t in self.lp_encoder.named_parameters()}
        return ways, params, rel

    def forward(self, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> MetaOutput:
        """Meta-batch of ``B`` tasks (a loop or ``vmap``, see ``task_batching``).

        Args:
            xs: ``(B, N_s, C, H, W)`` support images; ys: ``(B, N_s)`` labels in ``[0, N)``.
            xq: ``(B, N_q, C, H, W)`` query images; yq: ``(B, N_q)`` labels.

        Returns:
            ``MetaOutput`` with the loss averaged over tasks.
        """
        ways, params, rel = self._meta_batch_inputs(xs, ys, xq)
        if self.resolved_batching(xs.device) == "vmap":
            functional = self._networks["func"].model
            if (
                not self.first_order
                and torch.is_grad_enabled()
                and _has_fused_batch_norm(functional)
            ):
                raise ValueError(
                    "torch.nn batch-norm gives wrong second-order gradients under torch.func.vmap "
                    "(PyTorch 2.x); use gp_maml.BatchNorm2d in the model, first_order=True, or "
                    "task_batching='loop'"
                )
            task = partial(self.task_loss, params, rel, ways=ways, mode="func")
            loss, logits, picked = vmap_tasks(task, xs, ys, xq, yq)
        else:
            task = partial(self.task_loss, params, rel, ways=ways, mode="autograd")
            loss, logits, picked = loop_tasks(task, xs, ys, xq, yq)
        return _meta_output(loss, logits, picked, yq)

    def forward_backward(self, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> MetaOutput:
        """``forward(...).loss.backward()`` one task at a time (peak memory of a single task).

        Each task's share of the mean loss is back-propagated as soon as it is computed and
        added to the parameters' ``.grad`` (``batching.backward_task_by_task``), so gradients
        accumulate as with ``forward(...).loss.backward()`` while only one task's graph is alive
        (``higher``'s memory profile). Python-loop batching only. With ``compiled=True`` a base
        learner's task gradients come from ``meta_gradient.CompiledMetaGradient``.

        Args:
            xs, ys, xq, yq: as in ``forward``.

        Returns:
            ``MetaOutput`` with a detached mean ``loss``.
        """
        ways, params, rel = self._meta_batch_inputs(xs, ys, xq)
        task = partial(self._meta_gradient, params, rel, ways=ways)
        loss, logits, picked = backward_task_by_task(task, xs, ys, xq, yq)
        return _meta_output(loss, logits, picked, yq)


def _meta_output(loss: Tensor, logits: Tensor, picked: Tensor, yq: Tensor) -> MetaOutput:
    """``MetaOutput`` from per-task ``(B,)`` losses, ``(B, N_q, N)`` logits, ``(B,)`` picks."""
    accuracy = (logits.argmax(-1) == yq).float().mean() * 100
    return MetaOutput(loss.mean(), accuracy.detach(), logits, picked.detach())


def paper_settings(method: str) -> dict[str, Any]:
    """The paper's code's learner rules for ``method``, by setting name (``MetaLearner``
    arguments and ``gp_maml.train.TrainConfig`` fields; ``relation_net="tpn"``: TPN's net).

    GP methods: self-loops kept in the graph, pseudo-labels picked from the raw propagated
    scores (no class-mass normalisation) among the 75 most confident queries at meta-training
    (``pic_num``), label-propagation loss weight 1, TPN's conv relation network, and for
    GP-ANIL a separate label-propagation encoder. Base methods: nothing changes.
    """
    if not method.startswith("gp-"):
        return {}
    return {
        "self_loops": True,
        "class_mass_norm": False,
        "lp_loss_weight": 1.0,
        "pick_pool": PAPER_PICK_POOL,
        "relation_net": "tpn",
        "separate_lp_encoder": method == "gp-anil",
    }


def paper_rules(method: str, model: nn.Module) -> dict:
    """The ``MetaLearner`` keyword arguments of ``preset="paper"``: :func:`paper_settings` with
    TPN's relation net built on ``model``'s embedding (``model.feature_channels`` channels; a
    1x1 map of the flat embedding when the model has no such attribute)."""
    rules = paper_settings(method)
    if rules:
        rules["relation_net"] = tpn_relation_net(model)
    return rules


def tpn_relation_net(model: nn.Module) -> TPNRelationNet:
    """TPN's relation net sized for ``model``'s embedding (``model.num_features`` features on
    ``model.feature_channels`` channels; a 1x1 map of the flat embedding without the latter)."""
    num_features = getattr(model, "num_features", None)
    if num_features is None:
        raise ValueError(
            "TPN's relation net is built from model.num_features (and model.feature_channels); "
            "the model has neither: pass relation_net"
        )
    return TPNRelationNet(num_features, getattr(model, "feature_channels", num_features))


def create_learner(
    method: str, model: nn.Module, *, preset: str = "default", **kwargs
) -> MetaLearner:
    """Build one of ``METHODS`` (``"maml"``, ``"gp-anil"``, ...) around ``model``.

    Args:
        preset: ``"default"`` (this package's rules) or ``"paper"`` (the paper's code's rules,
            see ``paper_rules``; its optimiser schedule is ``TrainConfig``'s). Explicit
            keyword arguments override the preset's.
        kwargs: ``MetaLearner`` arguments.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
    if preset == "paper":
        kwargs = {**paper_rules(method, model), **kwargs}
    return MetaLearner(model, method=method, **kwargs)
