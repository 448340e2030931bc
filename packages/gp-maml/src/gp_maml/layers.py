"""Batch-norm and max-pool layers in the variants a meta-learner needs, and ``swap_layers``.

The backbones hold ``BatchNorm2d`` and ``MaxPool2d``: the same function as torch's layers,
correct everywhere, under ``torch.func`` transforms (``vmap``, ``grad``) and ``torch.compile``
included. Faster variants are correct only in a context the caller knows, so the caller picks
them by type: ``MetaLearner`` builds each variant of its network once with ``swap_layers`` and
uses the one that fits each code path.

* ``BatchNorm2d``: batch statistics with elementary ops; valid everywhere.
* ``FusedBatchNorm2d``: torch's fused kernel (faster); outside ``torch.func`` transforms only.
* ``SampleWeightedBatchNorm2d``: statistics weighted per sample (a 0/1 weight selects a
  subset with fixed shapes, ``vmap``-able); valid everywhere.
* ``MaxPool2d``: torch's max-pool; valid everywhere.
* ``ChannelsLastMaxPool2d``: torch's kernel on a channels-last copy of a CPU input (~4x
  faster eager); eager code outside ``torch.func`` transforms only.
* ``ElementwiseBackwardMaxPool2d``: a backward that inductor fuses (no index scatter); for
  compiled graphs outside ``torch.func`` transforms.

All are the same function with the same gradients (ties included); the fused batch-norm's
double backward is wrong under ``torch.func.vmap`` (PyTorch 2.x), the custom autograd
functions of the two fast pools have no ``vmap`` rule and are mishandled by compiled
``torch.func`` transforms (measured with PyTorch 2.14). No layer has running statistics or
parameters beyond batch-norm's affine ``weight`` and ``bias``, so every variant has the same
state dict.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

__all__ = [
    "BatchNorm2d",
    "ChannelsLastMaxPool2d",
    "ElementwiseBackwardMaxPool2d",
    "FusedBatchNorm2d",
    "MaxPool2d",
    "SampleWeightedBatchNorm2d",
    "batch_norm",
    "swap_layers",
]


def batch_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    eps: float = 1e-5,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """Batch-norm on the batch's statistics, written with elementary ops (``vmap``-safe).

    Args:
        x: ``(B, C, H, W)`` activations.
        weight, bias: ``(C,)`` affine parameters.
        eps: added to the variance.
        sample_weight: ``(B,)`` non-negative weights of the samples in the statistics, or
            ``None`` for the plain batch statistics. A 0/1 weight computes them over a subset
            without changing shapes.

    Returns:
        ``(B, C, H, W)``.
    """
    if sample_weight is None:
        var, mean = torch.var_mean(x, dim=(0, 2, 3), keepdim=True, correction=0)
    else:
        w = sample_weight.to(x.dtype).view(-1, 1, 1, 1)
        count = w.sum() * x.shape[2] * x.shape[3]
        mean = (w * x).sum((0, 2, 3), keepdim=True) / count
        var = (w * (x - mean).square()).sum((0, 2, 3), keepdim=True) / count
    scale = weight.view(1, -1, 1, 1) * torch.rsqrt(var + eps)
    return (x - mean) * scale + bias.view(1, -1, 1, 1)


class BatchNorm2d(nn.BatchNorm2d):
    """Batch-norm on batch statistics (also in ``eval()``), right under ``torch.func`` transforms.

    Written with elementary ops (``batch_norm``) because torch's fused kernel has wrong
    second-order gradients under ``torch.func.vmap`` in PyTorch 2.x; the same numerics as
    ``nn.BatchNorm2d(track_running_stats=False)``.

    Args:
        num_features: channels ``C``.
        eps: added to the variance.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, track_running_stats=False)

    @classmethod
    def from_layer(cls, layer: BatchNorm2d) -> BatchNorm2d:
        """This variant of ``layer``, holding the same ``weight`` and ``bias`` parameters."""
        new = cls(layer.num_features, eps=layer.eps)
        new.weight, new.bias = layer.weight, layer.bias
        return new.train(layer.training)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return batch_norm(x, self.weight, self.bias, self.eps)


class FusedBatchNorm2d(BatchNorm2d):
    """``BatchNorm2d`` computed by torch's fused kernel: faster (especially channels-last),
    but only for code outside ``torch.func`` transforms (wrong double backward under ``vmap``)."""

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class SampleWeightedBatchNorm2d(BatchNorm2d):
    """``BatchNorm2d`` whose statistics weight the samples by ``sample_weight``.

    Args:
        num_features: channels ``C``.
        sample_weight: ``(B,)`` non-negative weights of the ``B`` samples of every forward
            (a 0/1 weight normalises over a subset; works under ``vmap`` with a per-task weight).
        eps: added to the variance.
    """

    def __init__(self, num_features: int, sample_weight: Tensor, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps)
        self.sample_weight = sample_weight

    @classmethod
    def from_layer(cls, layer: BatchNorm2d, sample_weight: Tensor) -> SampleWeightedBatchNorm2d:
        """``layer`` with weighted statistics, holding the same ``weight`` and ``bias``."""
        new = cls(layer.num_features, sample_weight, eps=layer.eps)
        new.weight, new.bias = layer.weight, layer.bias
        return new.train(layer.training)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return batch_norm(x, self.weight, self.bias, self.eps, self.sample_weight)


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d``, marked so that ``swap_layers`` can replace it by a faster variant."""

    @classmethod
    def from_layer(cls, layer: nn.MaxPool2d) -> MaxPool2d:
        """A pool of this variant with ``layer``'s window settings."""
        return cls(
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            return_indices=layer.return_indices,
            ceil_mode=layer.ceil_mode,
        ).train(layer.training)


class _ChannelsLastMaxPool(torch.autograd.Function):
    """torch's max-pool evaluated on a channels-last copy of a CPU tensor (torch's NCHW CPU
    kernel is a scalar loop, ~4x slower on Conv-4's maps), returned in the input's layout; the
    backward is torch's own kernel with the same window indices, so values, gradients and double
    backward are torch's (ties included)."""

    @staticmethod
    def forward(x: Tensor, *window) -> tuple[Tensor, Tensor]:
        """``x`` ``(B, C, H, W)``; ``window``: kernel, stride, padding, dilation, ceil_mode."""
        x_cl = x.contiguous(memory_format=torch.channels_last)
        out, indices = F.max_pool2d_with_indices(x_cl, *window)
        return out.contiguous(), indices.contiguous()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.window = inputs[1:]
        ctx.save_for_backward(inputs[0], output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad_out: Tensor, _grad_indices: Tensor):
        x, indices = ctx.saved_tensors
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out, x, *ctx.window, indices
        )  # differentiable: torch's double backward gathers through the indices
        return (grad_x, *(None for _ in ctx.window))


class ChannelsLastMaxPool2d(MaxPool2d):
    """``MaxPool2d`` that runs torch's kernel on a channels-last copy of a CPU input.

    Bit-identical values, gradients and double backward (the backward is torch's kernel with the
    same window indices, ties included); a Conv-4 pool forward is ~4x faster than torch's NCHW
    CPU kernel (a scalar loop), copy included. Other inputs (CUDA, 3-d) and ``return_indices``
    use ``nn.MaxPool2d``'s forward. Eager code outside ``torch.func`` transforms only: the
    custom autograd function has no ``vmap`` rule.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H', W')``."""
        if x.dim() == 4 and x.device.type == "cpu" and not self.return_indices:
            window = (
                _pair(self.kernel_size),
                _pair(self.stride),
                _pair(self.padding),
                _pair(self.dilation),
            )
            return _ChannelsLastMaxPool.apply(x, *window, self.ceil_mode)[0]
        return super().forward(x)


class _MaskedMaxPool(torch.autograd.Function):
    """Non-overlapping max-pool with an elementwise backward: each window's gradient goes to its
    first maximum in row-major order (torch's choice), found by comparisons with the output
    instead of a scatter through indices (which inductor compiles to a scalar loop on CPU)."""

    @staticmethod
    def forward(x: Tensor, k: int) -> Tensor:
        return F.max_pool2d(x, k)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.k = inputs[1]
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, out = ctx.saved_tensors
        k = ctx.k
        h, w = out.shape[-2] * k, out.shape[-1] * k
        windows = x[..., :h, :w]  # rows and columns outside every window get no gradient
        first = _first_max_2x2(windows, out) if k == 2 else _first_max(windows, out, k)
        grad_x = _upsample(grad_out, k) * first
        return F.pad(grad_x, (0, x.shape[-1] - w, 0, x.shape[-2] - h)), None


def _upsample(t: Tensor, k: int) -> Tensor:
    return t.repeat_interleave(k, -2).repeat_interleave(k, -1)


def _first_max_2x2(x: Tensor, out: Tensor) -> Tensor:
    """``(..., 2h, 2w)`` 0/1 of ``x``'s dtype: the first maximum of every 2x2 window.

    Compares each position with its earlier neighbours of the same window (shifted copies);
    kept in ``x``'s dtype because inductor miscompiles padded bool tensors in float64.
    """
    hit = (x == _upsample(out, 2)).to(x.dtype)
    left = F.pad(hit[..., :, :-1], (1, 0))  # hit at (r, c - 1)
    up = F.pad(hit[..., :-1, :], (0, 0, 1, 0))  # (r - 1, c)
    up_left = F.pad(hit[..., :-1, :-1], (1, 0, 1, 0))
    up_right = F.pad(hit[..., :-1, 1:], (0, 1, 1, 0))
    odd_row = (torch.arange(x.shape[-2], device=x.device) % 2 == 1)[:, None]
    odd_col = (torch.arange(x.shape[-1], device=x.device) % 2 == 1)[None, :]
    # earlier positions of the same window: (0,1) <- (0,0); (1,0) <- (0,0), (0,1); (1,1) <- all
    earlier = torch.where(
        odd_row,
        torch.where(odd_col, up_left + up + left, up + up_right),
        torch.where(odd_col, left, 0.0),
    )
    return hit * (earlier == 0)


def _first_max(x: Tensor, out: Tensor, k: int) -> Tensor:
    """``(..., k h, k w)`` bool: the first maximum of every k x k window (strided views)."""
    h, w = x.shape[-2:]
    taken = torch.zeros_like(out, dtype=torch.bool)
    rows = []
    for i in range(k):
        row = []
        for j in range(k):
            first = (x[..., i::k, j::k] == out) & ~taken
            taken = taken | first
            row.append(first)
        rows.append(torch.stack(row, -1))  # (..., h / k, w / k, k)
    return torch.stack(rows, -3).reshape(*out.shape[:-2], h, w)


class ElementwiseBackwardMaxPool2d(MaxPool2d):
    """``MaxPool2d`` whose backward compares the input with the output instead of scattering
    through indices, for compiled graphs outside ``torch.func`` transforms.

    Inductor fuses the comparisons into the elementwise kernels around the pool, while torch's
    index scatter becomes a slow scalar loop on CPU (in a profile of a compiled Conv-4
    forward+backward, torch's pool backward alone took 30 of 74 ms). Same values and gradients
    as torch, ties included (the first maximum of a window in row-major order gets the gradient;
    ties are common on images with flat regions, e.g. Omniglot's white background). Only a
    non-overlapping pool (``kernel_size == stride``, no padding or dilation) has this backward;
    others use ``nn.MaxPool2d``'s forward.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H // k, W // k)``."""
        k = self.kernel_size
        if (
            isinstance(k, int)
            and self.stride in (k, (k, k))
            and self.padding in (0, (0, 0))
            and self.dilation in (1, (1, 1))
            and not self.ceil_mode
            and not self.return_indices
        ):
            return _MaskedMaxPool.apply(x, k)
        return super().forward(x)


LayerFactory = type | Callable[[nn.Module], nn.Module]


def swap_layers(
    model: nn.Module,
    *,
    batch_norm: LayerFactory | None = None,
    max_pool: LayerFactory | None = None,
) -> nn.Module:
    """A view of ``model`` whose ``gp_maml`` layers are replaced; ``model`` is not modified.

    Every ``BatchNorm2d`` (any variant) becomes a ``batch_norm`` layer and every ``MaxPool2d``
    a ``max_pool`` layer: a class (``FusedBatchNorm2d``: layers of exactly that class are
    kept, others are built with its ``from_layer``) or a function from the old layer to the
    new one; ``None`` keeps the layers. The view holds the same parameter and buffer tensors:
    modules without a replaced layer below them are shared, the others are shallow copies with
    their own child, parameter and buffer dicts. The result is ``model`` itself when nothing
    is replaced. The copies' ``training`` flags are those at the time of the call
    (``MetaLearner.train`` keeps its views in step).

    Args:
        model: any network; layers other than ``gp_maml``'s are kept.
        batch_norm: the new batch-norm layers (e.g. ``FusedBatchNorm2d``).
        max_pool: the new max-pool layers (e.g. ``ChannelsLastMaxPool2d``).

    Returns:
        The view (call it with ``torch.func.functional_call`` and ``model``'s parameters).
    """

    def make(factory: LayerFactory, layer: nn.Module) -> nn.Module:
        if isinstance(factory, type):
            return layer if type(layer) is factory else factory.from_layer(layer)
        return factory(layer)

    def replace(module: nn.Module) -> nn.Module:
        if isinstance(module, BatchNorm2d) and batch_norm is not None:
            return make(batch_norm, module)
        if isinstance(module, MaxPool2d) and max_pool is not None:
            return make(max_pool, module)
        children = {
            name: None if child is None else replace(child)
            for name, child in module._modules.items()
        }
        if all(new is module._modules[name] for name, new in children.items()):
            return module
        view = copy.copy(module)
        view._modules = children
        view._parameters = dict(module._parameters)
        view._buffers = dict(module._buffers)
        return view

    return replace(model)
