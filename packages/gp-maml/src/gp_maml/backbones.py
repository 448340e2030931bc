"""Few-shot backbones: Conv-4 (Vinyals et al.; Finn et al.) and ResNet-12 (Lee et al.).

Both split into ``features`` (the body, ending with a flat ``(B, num_features)`` embedding)
and ``head`` (a linear classifier), and use batch-norm on batch statistics only
(``track_running_stats=False``), as transductive MAML does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .adaptation import _inside_functorch_transform

__all__ = [
    "BatchNorm2d",
    "Conv4",
    "MaxPool2d",
    "ResNet12",
    "conv4",
    "create_backbone",
    "fast_compiled_layers",
    "resnet12",
    "sample_weighted_batch_norm",
]


class BatchNorm2d(nn.BatchNorm2d):
    """Batch-norm on batch statistics whose second-order gradients are right under ``vmap``.

    Outside ``torch.func`` transforms it calls torch's fused kernel (fast, especially on
    channels-last tensors); inside them it is written with elementary ops, because the fused
    kernel's double backward is wrong under ``torch.func.vmap`` in PyTorch 2.x (see
    ``MetaLearner``). Same numerics as ``nn.BatchNorm2d(track_running_stats=False)``.

    Inside ``sample_weighted_batch_norm(model, weight)`` the statistics are weighted per sample
    (a 0/1 weight computes them over a subset without changing shapes, so it works under
    ``vmap``). ``torch.compile`` hides whether a ``torch.func`` transform is active, so compiled
    graphs get the elementary version unless ``outside_transforms`` is set (see
    ``fast_compiled_layers``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, track_running_stats=False)
        self.sample_weight: Tensor | None = None
        self.outside_transforms = False

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        if self.sample_weight is not None:
            w = self.sample_weight.to(x.dtype).view(-1, 1, 1, 1)
            count = w.sum() * x.shape[2] * x.shape[3]
            mean = (w * x).sum((0, 2, 3), keepdim=True) / count
            var = (w * (x - mean).square()).sum((0, 2, 3), keepdim=True) / count
        elif self.outside_transforms or not _inside_functorch_transform():
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        else:
            var, mean = torch.var_mean(x, dim=(0, 2, 3), keepdim=True, correction=0)
        scale = self.weight.view(1, -1, 1, 1) * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias.view(1, -1, 1, 1)


@contextmanager
def sample_weighted_batch_norm(model: nn.Module, weight: Tensor) -> Iterator[int]:
    """Within the block, every ``gp_maml.BatchNorm2d`` of ``model`` weights its statistics.

    Args:
        model: network whose batch-norm layers are ``gp_maml.BatchNorm2d``.
        weight: ``(N,)`` non-negative weights of the ``N`` samples of the next forwards.

    Yields:
        The number of layers weighted (0: the model has none of ours, statistics unchanged).
    """
    with _layer_attribute(model, BatchNorm2d, "sample_weight", weight, None) as layers:
        yield layers


@contextmanager
def _layer_attribute(
    model: nn.Module, types: type | tuple[type, ...], name: str, value: object, reset: object
) -> Iterator[int]:
    """Set ``name`` to ``value`` on ``model``'s modules of ``types`` within the block, then to
    ``reset``; yields how many modules were set."""
    layers = [m for m in model.modules() if isinstance(m, types)]
    for m in layers:
        setattr(m, name, value)
    try:
        yield len(layers)
    finally:
        for m in layers:
            setattr(m, name, reset)


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


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d``, faster on CPU, with an optional elementwise backward for compiled graphs.

    The same function as ``nn.MaxPool2d`` everywhere. Eager on CPU (outside ``torch.func``
    transforms) it runs torch's kernel on a channels-last copy of the input
    (``_ChannelsLastMaxPool``); elsewhere it is ``nn.MaxPool2d``'s forward. With
    ``outside_transforms = True`` (see ``fast_compiled_layers``) a non-overlapping pool
    (``kernel_size == stride``, no padding or dilation) computes its backward elementwise by
    comparing its input with its output: inductor fuses that into the elementwise kernels around
    it, while torch's index scatter becomes a slow scalar loop on CPU. Same values and gradients
    as torch, ties included (the first maximum of a window in row-major order gets its gradient;
    ties are common on images with flat regions, e.g. Omniglot's white background).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.outside_transforms = False

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H // k, W // k)``."""
        k = self.kernel_size
        if (
            self.outside_transforms
            and isinstance(k, int)
            and self.stride in (k, (k, k))
            and self.padding in (0, (0, 0))
            and self.dilation in (1, (1, 1))
            and not self.ceil_mode
            and not self.return_indices
        ):
            return _MaskedMaxPool.apply(x, k)
        if (
            x.dim() == 4
            and x.device.type == "cpu"
            and not self.return_indices
            and not torch.compiler.is_compiling()
            and not _inside_functorch_transform()
        ):  # eager on CPU, outside torch.func transforms
            window = (_pair(k), _pair(self.stride), _pair(self.padding), _pair(self.dilation))
            return _ChannelsLastMaxPool.apply(x, *window, self.ceil_mode)[0]
        return super().forward(x)


@contextmanager
def fast_compiled_layers(model: nn.Module) -> Iterator[int]:
    """Within the block, ``model``'s ``gp_maml`` layers assume no ``torch.func`` transform.

    ``torch.compile`` hides whether a ``torch.func`` transform is active, so by default a
    compiled ``BatchNorm2d`` uses its elementary (``vmap``-safe) version and ``MaxPool2d``
    torch's backward. Inside this block they use torch's fused batch-norm and the elementwise
    max-pool backward, which compile to fewer passes over memory (in a profile of a compiled
    Conv-4 forward+backward on CPU, torch's pool backward alone took 30 of 74 ms). Only for graphs
    that run outside ``torch.func`` transforms: the fused batch-norm's double backward is wrong
    under ``vmap``, and compiled ``torch.func`` transforms mishandle custom autograd functions
    (both measured with PyTorch 2.14). ``MetaLearner(compiled=True)`` uses it around its
    compiled forward+backward graphs.

    Yields:
        The number of layers switched.
    """
    with _layer_attribute(model, (BatchNorm2d, MaxPool2d), "outside_transforms", True, False) as n:
        yield n


def _bn(chans: int) -> nn.BatchNorm2d:
    return BatchNorm2d(chans)


class Conv4(nn.Module):
    """Four blocks of conv3x3 - BN - ReLU - max-pool 2, then a linear head (``gp_maml``'s
    ``BatchNorm2d`` and ``MaxPool2d``: the same function as the torch layers).

    Args:
        in_chans: input channels.
        num_classes: ways ``N`` of the head.
        hidden: filters per block (32 or 64 in the literature).
        img_size: input side, used to size the head (28 -> 1x1 map, 84 -> 5x5 map).
    """

    def __init__(
        self, in_chans: int = 1, num_classes: int = 5, hidden: int = 64, img_size: int = 28
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = in_chans
        for _ in range(4):
            layers += [
                nn.Conv2d(chans, hidden, 3, padding=1),
                _bn(hidden),
                nn.ReLU(),
                MaxPool2d(2),
            ]
            chans = hidden
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        side = img_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(f"img_size={img_size} is too small for Conv-4 (needs >= 16)")
        self.num_features = hidden * side * side
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, num_features)``."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, num_features)`` -> ``(B, num_classes)``."""
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class _ResBlock(nn.Module):
    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False),
            _bn(out_chans),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            _bn(out_chans),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            _bn(out_chans),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_chans, out_chans, 1, bias=False), _bn(out_chans))
        self.act = nn.LeakyReLU(0.1)
        self.pool = MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


class ResNet12(nn.Module):
    """ResNet-12: four residual blocks (three conv3x3 each) with max-pool, global average pool.

    Args:
        in_chans: input channels.
        num_classes: ways ``N`` of the head.
        widths: channels of the four blocks.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 5,
        widths: tuple[int, int, int, int] = (64, 160, 320, 640),
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        chans = in_chans
        for w in widths:
            blocks.append(_ResBlock(chans, w))
            chans = w
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = chans
        self.head = nn.Linear(chans, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, num_features)``."""
        return self.features(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, num_features)`` -> ``(B, num_classes)``."""
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def conv4(**kwargs) -> Conv4:
    """Conv-4 with 64 filters (pass ``hidden=32`` for the 32-filter variant)."""
    return Conv4(**{"hidden": 64, **kwargs})


def resnet12(**kwargs) -> ResNet12:
    """ResNet-12 with widths (64, 160, 320, 640)."""
    return ResNet12(**kwargs)


def create_backbone(name: str, *, in_chans: int, num_classes: int, img_size: int) -> nn.Module:
    """Build ``"conv4"`` / ``"conv4-32"`` / ``"conv4-64"`` / ``"resnet12"`` by name."""
    if name in ("conv4", "conv4-64"):
        return Conv4(in_chans, num_classes, 64, img_size)
    if name == "conv4-32":
        return Conv4(in_chans, num_classes, 32, img_size)
    if name == "resnet12":
        return ResNet12(in_chans, num_classes)
    raise ValueError(f"unknown backbone {name!r}; choose conv4-32, conv4-64 or resnet12")
