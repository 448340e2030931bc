"""Token extraction from any classifier: timm, torchvision, or a user callable.

:class:`TokenExtractor` is a feature function ``(model, x) -> (tokens (B, N, D), logits (B, K))``
as expected by ``lab_common.Distiller(student_features=..., teacher_features=...)``; one forward
pass gives both. Tokens are always ``(B, N, D)``: CNN maps ``(B, C, H, W)`` become ``H·W`` tokens
of width ``C`` and ViT class/distillation/register tokens are dropped.

Sources:

- ``"timm"`` (and ``lab_common.distill.zoo``): ``forward_features`` + ``forward_head``; the prefix tokens
  counted by ``model.num_prefix_tokens`` are dropped. With ``index=i`` the tokens come from block
  or stage ``i`` via ``forward_intermediates`` (logits still from the final features).
- ``"torchvision"``: ``torchvision.models.feature_extraction.create_feature_extractor`` with the
  graph node ``node`` (default the first of ``layer4`` / ``features`` / ``encoder.ln`` present)
  and the model output; a torchvision ``VisionTransformer``'s class token is dropped. The graph
  is traced once per model (one extractor serves a student and a teacher) and dropped with it.
- ``"callable"``: ``fn(model, x) -> (features, logits)``, features a map or tokens.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn as nn

from trg_kd.tokens import drop_prefix_tokens, to_tokens

__all__ = ["TokenExtractor"]

_SOURCES = ("auto", "timm", "torchvision", "callable")
_TORCHVISION_NODES = ("layer4", "features", "encoder.ln")


def _is_timm_like(model: nn.Module) -> bool:
    return hasattr(model, "forward_features") and hasattr(model, "forward_head")


class TokenExtractor:
    """Feature function returning ``(tokens (B, N, D), logits (B, K))`` for a model.

    Args:
        source: ``"auto"`` (callable if ``fn`` is given, else timm when the model has
            ``forward_features``/``forward_head``, else torchvision), or one of ``"timm"``,
            ``"torchvision"``, ``"callable"``.
        index: timm only: take tokens from intermediate block/stage ``index`` instead.
        node: torchvision only: the graph node whose output gives the tokens.
        fn: callable only: ``fn(model, x) -> (features, logits)``.
        num_prefix_tokens: leading tokens to drop; default ``model.num_prefix_tokens`` for timm,
            1 for a torchvision ``VisionTransformer``, 0 otherwise.
    """

    def __init__(
        self,
        source: str = "auto",
        *,
        index: int | None = None,
        node: str | None = None,
        fn: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
        num_prefix_tokens: int | None = None,
    ) -> None:
        if source not in _SOURCES:
            raise ValueError(f"source must be one of {_SOURCES}, got {source!r}")
        if source == "callable" and fn is None:
            raise ValueError("source='callable' needs fn=callable(model, x) -> (features, logits)")
        self.source = "callable" if source == "auto" and fn is not None else source
        self.index, self.node, self.fn = index, node, fn
        self.num_prefix_tokens = num_prefix_tokens
        self._graphs: weakref.WeakKeyDictionary[nn.Module, nn.Module] = weakref.WeakKeyDictionary()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_graphs"}  # weakrefs do not pickle

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _graphs=weakref.WeakKeyDictionary())

    def __call__(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        source = self.source
        if source == "auto":
            source = "timm" if _is_timm_like(model) else "torchvision"
        if source == "timm":
            feats, logits, prefix = self._timm(model, x)
        elif source == "torchvision":
            feats, logits, prefix = self._torchvision(model, x)
        else:
            feats, logits = self.fn(model, x)
            prefix = 0
        if self.num_prefix_tokens is not None:
            prefix = self.num_prefix_tokens
        tokens = to_tokens(feats)
        if prefix and feats.ndim == 3:
            tokens = drop_prefix_tokens(tokens, prefix)
        return tokens, logits

    def _timm(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        if not _is_timm_like(model):
            raise TypeError(
                f"{type(model).__name__} has no forward_features/forward_head; use "
                "source='torchvision' or a callable"
            )
        prefix = int(getattr(model, "num_prefix_tokens", 0))
        if self.index is None:
            feats = model.forward_features(x)
            return feats, model.forward_head(feats), prefix
        if not hasattr(model, "forward_intermediates"):
            raise TypeError(
                f"{type(model).__name__} has no forward_intermediates; index={self.index} needs it "
                "(use index=None for the last stage)"
            )
        # timm returns intermediates without prefix tokens, as (B, C, H, W) maps.
        final, inter = model.forward_intermediates(x, indices=[self.index], output_fmt="NCHW")
        return inter[0], model.forward_head(final), 0

    def _torchvision(
        self, model: nn.Module, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        from torchvision.models import VisionTransformer
        from torchvision.models.feature_extraction import (
            create_feature_extractor,
            get_graph_node_names,
        )

        extractor = self._graphs.get(model)
        if extractor is None:
            nodes = get_graph_node_names(model)[1]

            def present(name: str) -> bool:  # a node, or a module whose last node is returned
                return any(n == name or n.startswith(name + ".") for n in nodes)

            node = self.node or next((n for n in _TORCHVISION_NODES if present(n)), None)
            if node is None or not present(node):
                raise ValueError(
                    f"graph node {node!r} not found in {type(model).__name__}; pass node= one of "
                    f"its nodes, e.g. {nodes[-6:]}"
                )
            extractor = create_feature_extractor(model, {node: "tokens", nodes[-1]: "logits"})
            self._graphs[model] = extractor
        extractor.train(model.training)  # the extractor shares the model's modules
        out = extractor(x)
        prefix = 1 if isinstance(model, VisionTransformer) else 0
        return out["tokens"], out["logits"], prefix

    @torch.no_grad()
    def token_shape(self, model: nn.Module, input_size: tuple[int, ...]) -> tuple[int, int]:
        """``(N, D)`` of the tokens for inputs of shape ``input_size = (C, H, W)`` (probe in eval)."""
        was_training = model.training
        model.eval()
        try:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
            tokens, _ = self(model, torch.zeros(1, *input_size, device=device))
        finally:
            model.train(was_training)
        return tokens.shape[1], tokens.shape[2]
