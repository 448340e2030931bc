"""LaViT: the Less-Attention Vision Transformer.

Paper: `You Only Need Less Attention at Each Stage in Vision Transformers`
(Zhang, Liu, Lin, He; CVPR 2024) - https://arxiv.org/abs/2406.00427

@inproceedings{zhang2024lavit,
  title={You Only Need Less Attention at Each Stage in Vision Transformers},
  author={Zhang, Shuoxi and Liu, Hanpeng and Lin, Stephen and He, Kun},
  booktitle={CVPR},
  year={2024}
}

A four-stage pyramid (strides 4, 8, 16, 32). Each stage embeds patches, adds a learned
position embedding, runs ``depth - la_depth`` vanilla-attention (VA) blocks and then
``la_depth`` less-attention (LA) blocks. A VA block computes ``A = Softmax(QK^T / sqrt(d))``.
An LA block computes no queries or keys: it transforms the previous block's attention with two
learned linear maps, ``A^l = Psi(Theta(A^{l-1})^T)^T = Psi A^{l-1} Theta^T`` (``Theta`` mixes
the key axis, ``Psi`` the query axis), then attends with ``Softmax(A^l) V``. With
``la_input="softmax"`` (default, the paper's reading) the first LA block of a stage receives
the VA block's softmax attention; with ``"logits"`` it receives the pre-softmax scores. Later LA
blocks receive the previous LA block's ``A^l``.

Attention geometry, per stage:

* ``window_sizes[i] = w`` (default ``7``): queries and keys of the same ``w x w`` window (square
  ``w^2 x w^2`` maps, ``Theta``/``Psi`` of ``w^2 x w^2``). Grids that do not divide by ``w`` are
  zero-padded and the padded keys masked, so one set of weights runs at any input size that is
  a multiple of the total stride.
* ``window_sizes[i] = 0``: global attention with PVTv2 spatial-reduction keys (``sr_ratios``),
  as in PVTv2: maps ``N_q x N_k``, ``Theta``/``Psi`` tied to the token grid, so the model
  runs only at the size it was built for (``checkpoint_filter_fn`` resamples a checkpoint).

The attention of a stage's last block is carried into the next stage's first VA block
(residual attention downsampling) as an additive bias on its scores.

No global state: auxiliary diagonality-preserving losses are returned by
``model(x, return_aux=True) -> (logits, {"loss_dp": scalar})``.

FX: what depends on the input size (the input check, the window geometry, position-embedding
resampling, masks) runs in functions wrapped with ``torch.fx.wrap``, so a graph traced by
``torch.fx`` or torchvision's ``create_feature_extractor`` runs at every size the model does.
"""

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    resample_abs_pos_embed,
    to_2tuple,
    trunc_normal_,
    use_fused_attn,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch.utils.checkpoint import checkpoint

from .losses import DP_LOSS_VARIANTS, dp_loss

__all__ = ["LA_INPUTS", "LaViT", "checkpoint_filter_fn", "resample_token_matrix"]

#: What the first LA block of a stage transforms: the VA softmax attention or its logits.
LA_INPUTS = ("softmax", "logits")

Grid = tuple[int, int]


def _tokens(grid: Grid) -> int:
    return grid[0] * grid[1]


class StageGeometry:
    """Token grid of one stage at run time and how it splits into attention windows.

    ``window`` ``None`` means one global window (the whole grid). Otherwise the grid is padded
    at the bottom/right to a multiple of the window; ``valid`` ``(n_windows, n)`` marks real
    tokens and ``key_mask`` ``(n_windows, 1, 1, n)`` is ``0`` on real and ``-inf`` on padded
    keys (both ``None`` without padding).
    """

    def __init__(self, grid: Grid, window: Grid | None, device: torch.device):
        self.grid = grid
        self.window = window
        self.valid: torch.Tensor | None = None
        self.key_mask: torch.Tensor | None = None
        if window is None:
            self.counts = (1, 1)
            self.padded = grid
            return
        self.counts = (-(-grid[0] // window[0]), -(-grid[1] // window[1]))
        self.padded = (self.counts[0] * window[0], self.counts[1] * window[1])
        if self.padded != grid:
            ok = torch.zeros(self.padded, dtype=torch.bool, device=device)
            ok[: grid[0], : grid[1]] = True
            self.valid = self._to_windows(ok[None, :, :, None]).reshape(self.num_windows, -1)
            mask = torch.zeros(self.valid.shape, device=device).masked_fill(
                ~self.valid, float("-inf")
            )
            self.key_mask = mask[:, None, None, :]

    @property
    def num_windows(self) -> int:
        return self.counts[0] * self.counts[1]

    def _to_windows(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, Hp, Wp, C) -> (B, n_windows, n, C)``."""
        b, c = x.shape[0], x.shape[-1]
        (nh, nw), (wh, ww) = self.counts, self.window
        x = x.reshape(b, nh, wh, nw, ww, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, nh * nw, wh * ww, c)

    def partition(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, N, C)`` -> windows ``(B, n_windows, n, C)`` (zero-padded)."""
        if self.window is None:
            return x.unsqueeze(1)
        b, _, c = x.shape
        x = x.reshape(b, *self.grid, c)
        if self.padded != self.grid:
            x = F.pad(x, (0, 0, 0, self.padded[1] - self.grid[1], 0, self.padded[0] - self.grid[0]))
        return self._to_windows(x)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """Windows ``(B, n_windows, n, C)`` -> tokens ``(B, N, C)`` (padding dropped)."""
        if self.window is None:
            return x.squeeze(1)
        b, c = x.shape[0], x.shape[-1]
        (nh, nw), (wh, ww) = self.counts, self.window
        x = x.reshape(b, nh, nw, wh, ww, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, *self.padded, c)[:, : self.grid[0], : self.grid[1]]
        return x.reshape(b, -1, c)


@torch.fx.wrap
def _stage_geometry(grid: Grid, window: Grid | None, device: torch.device) -> StageGeometry:
    """The :class:`StageGeometry` of a run-time ``grid``; in an FX graph, made from the input."""
    return StageGeometry(grid, window, device)


@torch.fx.wrap
def _add_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``scores`` ``(..., N_q, N_k)`` plus an additive ``mask`` broadcast to them, if any."""
    return scores if mask is None else scores + mask


@torch.fx.wrap
def _fused_mask(
    key_mask: torch.Tensor | None,
    attn_bias: torch.Tensor | None,
    batch: int,
    num_windows: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """Additive ``attn_mask`` of the fused kernel, ``(B * n_windows, heads or 1, N_q, N_k)``.

    ``key_mask`` ``(n_windows, 1, 1, N_k)`` (padded keys) plus ``attn_bias``
    ``(B, n_windows, heads, N_q, N_k)``; None when both are None.
    """
    mask = key_mask
    if attn_bias is not None:
        mask = attn_bias if mask is None else attn_bias + mask
    if mask is None:
        return None
    return mask.to(dtype).expand(batch, num_windows, -1, -1, -1).flatten(0, 1)


@torch.fx.wrap
def _scale_partial_windows(scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Scale the rows of ``(B, n_windows, H, n, n)`` scores by each window's share of real keys."""
    if valid is None:
        return scores
    real = valid.sum(-1).to(scores.dtype) / valid.shape[-1]
    return scores * real[:, None, None, None]


@torch.fx.wrap
def _window_dp_loss(attn: torch.Tensor, variant: str, valid: torch.Tensor | None) -> torch.Tensor:
    """:func:`dp_loss` of ``(B, n_windows, H, n, n)`` maps, padded tokens (``valid`` False) out."""
    return dp_loss(attn, variant, valid=None if valid is None else valid[:, None, :])


@torch.fx.wrap
def _pool_query_grid(attn: torch.Tensor, q_grid: Grid, out_grid: Grid) -> torch.Tensor:
    """Average attention rows over the query grid: ``(..., Nq, Nk) -> (..., No, Nk)``."""
    if q_grid == out_grid:
        return attn
    lead, nk = attn.shape[:-2], attn.shape[-1]
    x = attn.transpose(-1, -2).reshape(-1, nk, *q_grid)
    x = F.adaptive_avg_pool2d(x, out_grid)
    return x.reshape(*lead, nk, _tokens(out_grid)).transpose(-1, -2)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: ``(B, C_in, H, W) -> ((B, H/s * W/s, C), (H/s, W/s))``."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        stride: int,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        kernel = 2 * stride - 1
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel, stride=stride, padding=kernel // 2)
        self.norm = norm_layer(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        x = self.proj(x)
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), grid


class SpatialReduction(nn.Module):
    """PVT key/value reduction: ``(B, N, C) -> (B, N / sr^2, C)`` by a strided conv + norm."""

    def __init__(self, dim: int, sr_ratio: int, norm_layer: Callable[..., nn.Module]):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        x = x.transpose(1, 2).unflatten(2, grid)
        return self.norm(self.conv(x).flatten(2).transpose(1, 2))


class Mlp(nn.Module):
    """``fc1 -> [3x3 depthwise conv] -> GELU -> fc2`` on windowed tokens ``(B, n_windows, n, C)``.

    ``dwconv=True`` is PVTv2's MLP: the depthwise conv runs on the token grid (padding
    dropped, zero-padded at the image border) and mixes neighbours across window borders.
    ``chunk_size > 0``: while no gradient is recorded, run about ``chunk_size`` tokens at a
    time (the depthwise-conv MLP: bands of grid rows, each with the row above and below it),
    so the ``hidden``-wide activations of a large input never exist at once (the same result;
    training is unchanged, autograd keeps them anyway).
    """

    def __init__(
        self, dim: int, hidden: int, dwconv: bool = False, drop: float = 0.0, chunk_size: int = 0
    ):
        super().__init__()
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0 (0: no chunking), got {chunk_size}")
        self.chunk_size = chunk_size
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden) if dwconv else None
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, geom: "StageGeometry") -> torch.Tensor:
        if self.dwconv is None:
            return self._plain(x)
        if self._chunked(x):
            return self._dwconv_bands(x, geom)
        t = self.dwconv(geom.merge(self.fc1(x)).transpose(1, 2).unflatten(2, geom.grid))
        x = self.drop1(self.act(geom.partition(t.flatten(2).transpose(1, 2))))
        return self.drop2(self.fc2(x))

    def _chunked(self, x: torch.Tensor) -> bool:
        """Whether ``x`` runs in chunks: no autograd and more than ``chunk_size`` tokens.

        An FX graph runs in one pass: the number of tokens is not known while tracing.
        """
        if isinstance(x, torch.fx.Proxy) or torch.is_grad_enabled():
            return False
        return 0 < self.chunk_size < x.shape[:-1].numel()

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        """The token-wise MLP, ``chunk_size`` rows at a time while no gradient is recorded."""
        if not self._chunked(x):
            return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
        rows = x.shape[:-1].numel()
        out = x.new_empty(*x.shape[:-1], self.fc2.out_features)
        flat_in, flat_out = x.reshape(rows, -1), out.view(rows, -1)
        for start in range(0, rows, self.chunk_size):
            chunk = slice(start, start + self.chunk_size)
            flat_out[chunk] = self._plain(flat_in[chunk])  # rows <= chunk_size: one pass
        return out

    def _dwconv_bands(self, x: torch.Tensor, geom: "StageGeometry") -> torch.Tensor:
        """The depthwise-conv MLP in bands of grid rows (inference): ``fc1`` on the band and
        its neighbour rows, the 3x3 conv (its outputs on the neighbour rows dropped), ``fc2``;
        padded window tokens get ``fc2``'s bias, as in one pass."""
        b, c = x.shape[0], x.shape[-1]
        h, w = geom.grid
        grid = geom.merge(x).reshape(b, h, w, c)
        out = grid.new_empty(b, h, w, self.fc2.out_features)
        band = max(1, self.chunk_size // (b * w))
        for top in range(0, h, band):
            bottom = min(top + band, h)
            lo, hi = max(top - 1, 0), min(bottom + 1, h)
            t = self.dwconv(self.fc1(grid[:, lo:hi]).permute(0, 3, 1, 2))  # (B, hidden, rows, W)
            t = self.drop1(self.act(t[:, :, top - lo : bottom - lo].permute(0, 2, 3, 1)))
            out[:, top:bottom] = self.drop2(self.fc2(t))
        windows = geom.partition(out.reshape(b, h * w, -1))
        if geom.valid is None:
            return windows
        return torch.where(geom.valid[..., None], windows, self.fc2.bias.to(windows.dtype))


def _flat_dropout(drop: nn.Dropout, p: torch.Tensor) -> torch.Tensor:
    """Apply ``drop`` to ``(B, n_windows, H, Nq, Nk)`` probabilities through a 4-D view.

    The view ``(B * n_windows, H, Nq, Nk)`` is what ``lavit.analysis.capture_attention`` sees.
    """
    return drop(p.flatten(0, 1)).reshape(p.shape)


class Attention(nn.Module):
    """Vanilla (VA) multi-head attention inside windows or over spatially reduced keys.

    ``forward(x, geom, attn_bias, hand_on)``: ``x`` ``(B, n_windows, N_q, C)``; ``attn_bias``
    ``(B, n_windows, heads, N_q, N_k)`` or ``None`` is added to the scaled scores.
    ``hand_on`` is ``"probs"`` / ``"logits"`` (return the softmax attention / the pre-softmax
    scores for a later block) or ``None``, in which case the fused
    ``scaled_dot_product_attention`` kernel runs. Returns ``(out (B, n_windows, N_q, C),
    handed (B, n_windows, heads, N_q, N_k) or None)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.fused_attn = use_fused_attn()
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.sr = SpatialReduction(dim, sr_ratio, norm_layer) if sr_ratio > 1 else None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: torch.Tensor,
        geom: StageGeometry,
        attn_bias: torch.Tensor | None = None,
        hand_on: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, w, n, c = x.shape
        q = self.q(x).reshape(b, w, n, self.num_heads, self.head_dim).transpose(2, 3)
        kv_in = x if self.sr is None else self.sr(x.squeeze(1), geom.grid).unsqueeze(1)
        kv = self.kv(kv_in).reshape(b, w, -1, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(3, 0, 1, 4, 2, 5).unbind(0)
        handed = None
        if self.fused_attn and hand_on is None:
            # 4-D (B * n_windows, heads, N, d): 5-D inputs miss the fused CPU kernels
            x = F.scaled_dot_product_attention(
                q.flatten(0, 1),
                k.flatten(0, 1),
                v.flatten(0, 1),
                attn_mask=_fused_mask(geom.key_mask, attn_bias, b, w, q.dtype),
                dropout_p=self.attn_drop.p if self.training else 0.0,
            ).reshape(q.shape)
        else:
            s = (q * self.scale) @ k.transpose(-2, -1)
            if attn_bias is not None:
                s = s + attn_bias
            p = _add_mask(s, geom.key_mask).softmax(dim=-1)
            x = _flat_dropout(self.attn_drop, p) @ v
            handed = p if hand_on == "probs" else s if hand_on == "logits" else None
        x = x.transpose(2, 3).reshape(b, w, n, c)
        return self.proj_drop(self.proj(x)), handed


class LessAttention(nn.Module):
    """Less-attention (LA): transform the previous attention with ``Theta`` and ``Psi``.

    ``A^l = Psi(Theta(A^{l-1})^T)^T``: ``Theta`` (``N_k x N_k``) is a linear map applied to
    the key axis, ``Psi`` (``N_q x N_q``) one applied to the query axis; together
    ``A^l = Psi A^{l-1} Theta^T``, shared by all heads and windows. The block then attends with
    ``Softmax(A^l) V`` (own value projection). ``Theta`` starts as ``I`` and ``Psi`` as
    ``init_scale * I``: ``1`` for an LA block that receives scores (``Softmax(A^l)`` is then
    exactly the previous attention) and ``N_k`` for one that receives softmax probabilities
    ``P``, because ``Softmax(N_k P) = P`` to first order around the uniform map (see the README).

    ``forward(x, geom, prev, compute_aux, hand_on)`` takes ``x`` ``(B, n_windows, N_q, C)`` and
    ``prev`` ``(B, n_windows, heads, N_q, N_k)``; returns ``(out, handed, loss_dp)``:
    ``handed`` is ``A^l`` (``hand_on="logits"``) or ``Softmax(A^l)`` (``"probs"``) or ``None``;
    ``loss_dp`` is ``None`` unless ``compute_aux``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        query_tokens: int,
        key_tokens: int,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        dp_loss_variant: str = "intended",
        init_scale: float = 1.0,
        dp_pool_grids: tuple[Grid, Grid] | None = None,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.dp_loss_variant = dp_loss_variant
        self.init_scale = init_scale
        # non-square maps (global mode with sr > 1): pool query rows (query grid -> key grid)
        self.dp_pool_grids = dp_pool_grids
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.sr = SpatialReduction(dim, sr_ratio, norm_layer) if sr_ratio > 1 else None
        self.theta = nn.Parameter(torch.empty(key_tokens, key_tokens))
        self.psi = nn.Parameter(torch.empty(query_tokens, query_tokens))
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.init_token_maps()

    def init_token_maps(self) -> None:
        with torch.no_grad():
            self.theta.copy_(torch.eye(self.theta.shape[0]))
            self.psi.copy_(torch.eye(self.psi.shape[0]) * self.init_scale)

    def transform(self, prev: torch.Tensor) -> torch.Tensor:
        """``A^l = Psi(Theta(A^{l-1})^T)^T`` on ``(..., N_q, N_k)`` maps."""
        a = F.linear(prev, self.theta.to(prev.dtype))  # Theta on the key axis: A Theta^T
        return F.linear(a.transpose(-1, -2), self.psi.to(prev.dtype)).transpose(-1, -2)

    def forward(
        self,
        x: torch.Tensor,
        geom: StageGeometry,
        prev: torch.Tensor,
        compute_aux: bool = False,
        hand_on: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        b, w, n, c = x.shape
        v_in = x if self.sr is None else self.sr(x.squeeze(1), geom.grid).unsqueeze(1)
        v = self.v(v_in).reshape(b, w, -1, self.num_heads, self.head_dim).transpose(2, 3)
        scores = self.transform(prev)
        if self.init_scale != 1.0:
            # Psi's N_k * I is sized for full windows: rows of a window with n < N_k real keys
            # are scaled by n / N_k, so there too Softmax(n P) = P to first order at the start
            scores = _scale_partial_windows(scores, geom.valid)
        probs = _add_mask(scores, geom.key_mask).softmax(dim=-1)
        loss = None
        if compute_aux:
            target = (probs if self.dp_loss_variant == "intended" else scores).float()
            if self.dp_pool_grids is not None:
                target = _pool_query_grid(target, *self.dp_pool_grids)
            loss = _window_dp_loss(target, self.dp_loss_variant, geom.valid)
        x = (_flat_dropout(self.attn_drop, probs) @ v).transpose(2, 3).reshape(b, w, n, c)
        handed = probs if hand_on == "probs" else scores if hand_on == "logits" else None
        return self.proj_drop(self.proj(x)), handed, loss


class Block(nn.Module):
    """Pre-norm transformer block with a VA or LA token mixer.

    ``forward(x, geom, attn_in, compute_aux) -> (x, handed, loss_dp)``: ``x`` is the stage's
    tokens in window layout ``(B, n_windows, n, C)`` (see :class:`StageGeometry`);
    ``attn_in`` is the additive bias for a VA block or the previous attention for an LA block;
    ``handed`` is what ``hand_on`` asks the block to pass on (see :class:`Attention`).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        less_attention: bool = False,
        hand_on: str | None = None,
        query_tokens: int = 0,
        key_tokens: int = 0,
        sr_ratio: int = 1,
        mlp_ratio: float = 4.0,
        mlp_dwconv: bool = False,
        mlp_chunk_size: int = 0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        dp_loss_variant: str = "intended",
        la_init_scale: float = 1.0,
        dp_pool_grids: tuple[Grid, Grid] | None = None,
    ):
        super().__init__()
        self.less_attention = less_attention
        self.hand_on = hand_on
        self.norm1 = norm_layer(dim)
        common = dict(
            dim=dim,
            num_heads=num_heads,
            sr_ratio=sr_ratio,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            norm_layer=norm_layer,
        )
        if less_attention:
            self.attn = LessAttention(
                **common,
                query_tokens=query_tokens,
                key_tokens=key_tokens,
                dp_loss_variant=dp_loss_variant,
                init_scale=la_init_scale,
                dp_pool_grids=dp_pool_grids,
            )
        else:
            self.attn = Attention(**common)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(
            dim, int(dim * mlp_ratio), dwconv=mlp_dwconv, drop=proj_drop, chunk_size=mlp_chunk_size
        )
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        geom: StageGeometry,
        attn_in: torch.Tensor | None = None,
        compute_aux: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        loss = None
        y = self.norm1(x)
        if self.less_attention:
            y, handed, loss = self.attn(y, geom, attn_in, compute_aux, self.hand_on)
        else:
            y, handed = self.attn(y, geom, attn_in, self.hand_on)
        x = x + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x), geom))
        return x, handed, loss


class AttentionDownsample(nn.Module):
    """Residual attention downsampling between stages with global attention (PVTv2 layout).

    Maps the previous stage's last attention ``(B, 1, H_in, N_q_in, N_k_in)`` to the next
    stage's ``(B, 1, H_out, N_q_out, N_k_out)``: a conv (kernel = stride = query-grid ratio,
    heads as channels) over the query grid, then average pooling of the key grid if it changed.
    The conv starts as the mean over heads and each query window. Its windows do not overlap,
    so it runs as one matrix product over the windows (``conv``'s weights; the same numbers up
    to rounding, and a training step ~1.2× faster at 32² than the CPU's convolution, whose
    backward is slow for a batch of ``B·N_k`` one-channel maps).
    """

    def __init__(
        self,
        in_heads: int,
        out_heads: int,
        q_grid_in: Grid,
        q_grid_out: Grid,
        k_grid_in: Grid,
        k_grid_out: Grid,
    ):
        super().__init__()
        stride = q_grid_in[0] // q_grid_out[0]
        self.q_grid_in = q_grid_in
        self.k_grid_in = k_grid_in
        self.k_grid_out = k_grid_out
        self.conv = nn.Conv2d(in_heads, out_heads, stride, stride=stride)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.constant_(self.conv.weight, 1.0 / self.conv.weight[0].numel())
        nn.init.zeros_(self.conv.bias)

    def forward(
        self, attn: torch.Tensor, geom_in: StageGeometry, geom_out: StageGeometry
    ) -> torch.Tensor:
        b, _, h, _, nk = attn.shape
        s, (gh, gw) = self.conv.stride[0], self.q_grid_in
        x = attn.squeeze(1).reshape(b, h, gh, gw, nk)[:, :, : gh // s * s, : gw // s * s]
        x = x.reshape(b, h, gh // s, s, gw // s, s, nk).permute(0, 6, 2, 4, 1, 3, 5)
        x = x.reshape(b, nk, (gh // s) * (gw // s), h * s * s)  # the conv's windows
        weight = self.conv.weight.reshape(self.conv.out_channels, -1)
        x = torch.matmul(x, weight.t()) + self.conv.bias  # (B, N_k_in, N_q_out, H_out)
        h_out = x.shape[-1]
        x = x.permute(0, 3, 2, 1)  # (B, H_out, N_q_out, N_k_in)
        if self.k_grid_in != self.k_grid_out:
            nq = x.shape[2]
            x = x.reshape(b * h_out * nq, 1, *self.k_grid_in)
            x = F.adaptive_avg_pool2d(x, self.k_grid_out).reshape(b, h_out, nq, -1)
        return x.unsqueeze(1)


@torch.fx.wrap
def _group_windows(attn: torch.Tensor, counts_in: Grid, counts_out: Grid) -> torch.Tensor:
    """``(B, ph * pw, H, n, n)`` -> ``(B, nh * nw, H, 4, n, n)``: the ``2 x 2`` previous-stage
    windows under each next-stage window (windows of padding only as zeros)."""
    b, _, h, n, _ = attn.shape
    (nh, nw), (ph, pw) = counts_out, counts_in
    x = attn.reshape(b, ph, pw, h, n, n)
    if (2 * nh, 2 * nw) != (ph, pw):
        x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, 2 * nw - pw, 0, 2 * nh - ph))
    x = x.reshape(b, nh, 2, nw, 2, h, n, n).permute(0, 1, 3, 5, 2, 4, 6, 7)
    return x.reshape(b, nh * nw, h, 4, n, n)


def _cell_pooling(window: Grid) -> torch.Tensor:
    """``(4, n, n)`` 0/1 matrices: token ``s`` of previous-stage window ``p`` (of the 2x2
    windows under one next-stage window) lies in the 2x2 cell of next-stage token ``t``."""
    wh, ww = window
    m = torch.zeros(4, wh * ww, wh * ww)
    for p in range(4):
        a, b = divmod(p, 2)
        for r in range(wh):
            for c in range(ww):
                t = ((a * wh + r) // 2) * ww + (b * ww + c) // 2
                m[p, t, r * ww + c] = 1.0
    return m


class WindowAttentionDownsample(nn.Module):
    """Residual attention downsampling between windowed stages of the same window size.

    A next-stage window (``w x w`` tokens) covers exactly ``2 x 2`` previous-stage windows; each
    next-stage token is a ``2 x 2`` cell of previous tokens. The previous attention
    ``(B, n_windows_in, H_in, n, n)`` is pooled onto the cells (query rows averaged over a cell,
    key columns summed for probabilities and averaged for logits, so probability rows keep
    summing to one), then mixed over heads by a learned ``H_in -> H_out`` map that starts as
    the mean over heads. Returns ``(B, n_windows_out, H_out, n, n)``.
    """

    def __init__(self, in_heads: int, out_heads: int, window: Grid, sum_keys: bool):
        super().__init__()
        cells = _cell_pooling(window)
        self.register_buffer("pool_q", cells / 4.0, persistent=False)
        self.register_buffer("pool_k", cells if sum_keys else cells / 4.0, persistent=False)
        self.head_mix = nn.Linear(in_heads, out_heads)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.constant_(self.head_mix.weight, 1.0 / self.head_mix.in_features)
        nn.init.zeros_(self.head_mix.bias)

    def forward(
        self, attn: torch.Tensor, geom_in: StageGeometry, geom_out: StageGeometry
    ) -> torch.Tensor:
        x = _group_windows(attn, geom_in.counts, geom_out.counts)
        pq, pk = self.pool_q.to(x.dtype), self.pool_k.to(x.dtype)
        x = torch.einsum("pts,bwhpsu,pvu->bwtvh", pq, x, pk)
        return self.head_mix(x).permute(0, 1, 4, 2, 3)


class LaViTStage(nn.Module):
    """Patch embedding, position embedding, VA blocks, LA blocks, norm.

    ``forward(x, prev, compute_aux)``: ``x`` ``(B, C_in, H_in, W_in)``, ``prev`` the previous
    stage's ``(attention, geometry)`` or ``None`` -> ``(x (B, C, H, W), (attention, geometry)
    or None, list of per-LA-block DP losses)``.
    """

    def __init__(
        self,
        dim_in: int,
        dim: int,
        depth: int,
        la_depth: int,
        num_heads: int,
        grid_size: Grid,
        stride: int,
        window_size: int = 0,
        sr_ratio: int = 1,
        mlp_ratio: float = 4.0,
        mlp_dwconv: bool = False,
        mlp_chunk_size: int = 0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float | list[float] = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_residual_from: nn.Module | None = None,
        emit_attention: bool = False,
        la_input: str = "softmax",
        dp_loss_variant: str = "intended",
    ):
        super().__init__()
        self.grid_size = grid_size
        self.window = (window_size, window_size) if window_size > 0 else None
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(dim_in, dim, stride, norm_layer)
        self.pos_embed = nn.Parameter(torch.zeros(1, _tokens(grid_size), dim))
        self.attn_downsample = attn_residual_from
        if self.window is not None:
            n_q = n_k = window_size * window_size
            pool = None
        else:
            key_grid = (grid_size[0] // sr_ratio, grid_size[1] // sr_ratio)
            n_q, n_k = _tokens(grid_size), _tokens(key_grid)
            pool = (grid_size, key_grid) if sr_ratio > 1 else None
        hand = "probs" if la_input == "softmax" else "logits"
        dpr = drop_path if isinstance(drop_path, list) else [drop_path] * depth
        num_va = depth - la_depth
        blocks = []
        for i in range(depth):
            is_la, next_la = i >= num_va, i + 1 < depth and i + 1 >= num_va
            if next_la:  # the last VA block hands on per la_input, LA blocks their A^l
                hand_on = "logits" if is_la else hand
            else:
                hand_on = hand if i == depth - 1 and emit_attention else None
            blocks.append(
                Block(
                    dim,
                    num_heads,
                    less_attention=is_la,
                    hand_on=hand_on,
                    query_tokens=n_q,
                    key_tokens=n_k,
                    sr_ratio=sr_ratio,
                    mlp_ratio=mlp_ratio,
                    mlp_dwconv=mlp_dwconv,
                    mlp_chunk_size=mlp_chunk_size,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop,
                    attn_drop=attn_drop,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    dp_loss_variant=dp_loss_variant,
                    la_init_scale=float(n_k) if i == num_va and la_input == "softmax" else 1.0,
                    dp_pool_grids=pool,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(dim)

    def forward(
        self,
        x: torch.Tensor,
        prev: tuple[torch.Tensor, StageGeometry] | None = None,
        compute_aux: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, StageGeometry] | None, list[torch.Tensor]]:
        x, grid = self.patch_embed(x)
        pos = _pos_embed_at(self.pos_embed, grid, self.grid_size)
        geom = _stage_geometry(grid, self.window, x.device)
        # the whole stage runs in window layout: all but attention (and the optional dwconv)
        # act per token, and padded tokens are masked as keys, so they never reach real ones
        x = geom.partition(x + pos)
        attn = None
        if self.attn_downsample is not None and prev is not None:
            attn = self.attn_downsample(prev[0], prev[1], geom)
        losses = []
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, attn, loss = checkpoint(blk, x, geom, attn, compute_aux, use_reentrant=False)
            else:
                x, attn, loss = blk(x, geom, attn, compute_aux)
            if loss is not None:
                losses.append(loss)
        x = self.norm(geom.merge(x))
        x = x.transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return x, (None if attn is None else (attn, geom)), losses


@torch.fx.wrap
def _pos_embed_at(pos: torch.Tensor, grid: Grid, grid_size: Grid) -> torch.Tensor:
    """A ``(1, N, C)`` position embedding of ``grid_size``, resampled to ``grid`` if it differs."""
    if grid == grid_size:
        return pos
    return resample_abs_pos_embed(pos, list(grid), list(grid_size), 0)


def _nearest_multiples(size: int, step: int) -> list[int]:
    """The multiples of ``step`` (at least ``step``) just below and above ``size``."""
    if size % step == 0 and size >= step:
        return [size]
    low = max(step, size // step * step)
    return sorted({low, max(low, -(-size // step) * step)})


def _flag(value: bool) -> bool:
    """A forward flag; False for an FX placeholder (a graph traced without ``concrete_args``)."""
    return False if isinstance(value, torch.fx.Proxy) else value


@torch.fx.wrap
def _check_input(
    x: torch.Tensor, in_chans: int, img_size: Grid, any_size: bool, step: int
) -> torch.Tensor:
    """``x`` if it is a ``(B, in_chans, H, W)`` input LaViT runs on, else a ``ValueError``.

    ``any_size``: any multiple of the total stride ``step``; otherwise exactly ``img_size``.
    Returns ``x`` so that a traced graph keeps the check.
    """
    if x.dim() != 4:
        raise ValueError(f"LaViT expects (B, C, H, W) input, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"input has {x.shape[1]} channels but the model was built with in_chans={in_chans}"
        )
    size = (x.shape[-2], x.shape[-1])
    if not any_size:
        if size != img_size:
            raise ValueError(
                f"input size {size} differs from the size the model was built for, "
                f"img_size={img_size}; global-attention stages (window_sizes 0) tie "
                f"Theta/Psi to the token grid: build with img_size={size} and load the "
                "checkpoint through timm.create_model(..., pretrained=True, "
                "pretrained_cfg_overlay=dict(file=...)) to resample it, or use windowed "
                "stages (window_sizes > 0), which run at any size"
            )
        return x
    if size[0] % step or size[1] % step or min(size) < step:
        near = [
            (h, w)
            for h in _nearest_multiples(size[0], step)
            for w in _nearest_multiples(size[1], step)
        ]
        raise ValueError(
            f"input size {size} does not work: height and width must be multiples of the "
            f"total stride {step}; nearest sizes that do: " + ", ".join(str(s) for s in near)
        )
    return x


class LaViT(nn.Module):
    """Less-Attention Vision Transformer.

    ``forward(x, return_aux=False)``: ``x`` ``(B, in_chans, H, W)`` -> logits
    ``(B, num_classes)``; with ``return_aux=True`` -> ``(logits, {"loss_dp": scalar})``, the mean
    diagonality-preserving loss over all LA blocks (unweighted; multiply by ``lambda_DP``).

    With windowed attention in every stage (``window_sizes``, the presets), ``H`` and ``W`` may
    be any multiples of the total stride (32): the position embeddings are resampled to the
    run-time grid and ``Theta``/``Psi`` act per window. With global attention in any stage
    (``window_sizes`` ``0``), inputs must have ``img_size``.

    ``mlp_chunk_size > 0`` (default ``16384``; ``0`` turns it off): without autograd
    (inference), the plain MLPs run that many tokens at a time (the same output, less peak
    memory at large inputs, measured no slower on CPU; see :class:`Mlp` and the README).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        depths: tuple[int, ...] = (2, 2, 2, 2),
        la_depths: tuple[int, ...] = (0, 0, 1, 1),
        embed_dims: tuple[int, ...] = (64, 128, 320, 512),
        num_heads: tuple[int, ...] = (1, 2, 5, 8),
        mlp_ratios: tuple[float, ...] = (4.0, 4.0, 4.0, 4.0),
        sr_ratios: tuple[int, ...] = (8, 4, 2, 1),
        window_sizes: tuple[int, ...] | None = None,
        mlp_dwconv: bool = False,
        mlp_chunk_size: int = 16384,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[..., nn.Module] | None = None,
        attn_residual: bool = True,
        la_input: str = "softmax",
        dp_loss_variant: str = "intended",
    ):
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        num_stages = len(depths)
        window_sizes = tuple(window_sizes) if window_sizes is not None else (0,) * num_stages
        for name, value in dict(
            la_depths=la_depths,
            embed_dims=embed_dims,
            num_heads=num_heads,
            mlp_ratios=mlp_ratios,
            sr_ratios=sr_ratios,
            window_sizes=window_sizes,
        ).items():
            if len(value) != num_stages:
                raise ValueError(
                    f"{name} has {len(value)} entries but depths has {num_stages}: {tuple(value)}"
                )
        for i, (d, la) in enumerate(zip(depths, la_depths, strict=True)):
            if not 0 <= la < d:
                raise ValueError(
                    f"stage {i}: la_depths[{i}]={la} must be in [0, depths[{i}]={d}) — every "
                    "stage needs at least one VA block to produce the attention LA blocks reuse"
                )
        for i, (w, sr) in enumerate(zip(window_sizes, sr_ratios, strict=True)):
            if w < 0 or (w > 0 and sr != 1):
                raise ValueError(
                    f"stage {i}: window_sizes[{i}]={w} with sr_ratios[{i}]={sr}: windowed "
                    "attention (window_sizes > 0) needs sr_ratios 1; spatial-reduction keys "
                    "need global attention (window_sizes[i]=0, as in PVTv2)"
                )
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if dp_loss_variant not in DP_LOSS_VARIANTS:
            raise ValueError(
                f"dp_loss_variant must be one of {DP_LOSS_VARIANTS}, got {dp_loss_variant!r}"
            )
        if la_input not in LA_INPUTS:
            raise ValueError(f"la_input must be one of {LA_INPUTS}, got {la_input!r}")
        img_size = to_2tuple(img_size)
        self.total_stride = patch_size * 2 ** (num_stages - 1)
        if img_size[0] % self.total_stride or img_size[1] % self.total_stride:
            raise ValueError(
                f"img_size {img_size} must be divisible by the total stride {self.total_stride} "
                f"(patch_size {patch_size} x 2^{num_stages - 1})"
            )
        grids = []
        for i in range(num_stages):
            s = patch_size * 2**i
            grid = (img_size[0] // s, img_size[1] // s)
            if grid[0] % sr_ratios[i] or grid[1] % sr_ratios[i]:
                raise ValueError(
                    f"stage {i} token grid {grid} is not divisible by sr_ratios[{i}]="
                    f"{sr_ratios[i]}; choose an img_size divisible by "
                    f"{s * sr_ratios[i]} or a smaller sr ratio"
                )
            grids.append(grid)

        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.depths = tuple(depths)
        self.la_depths = tuple(la_depths)
        self.window_sizes = window_sizes
        self.any_size = all(w > 0 for w in window_sizes)
        self.grad_checkpointing = False

        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages = []
        self.feature_info = []
        prev_dim, cur = in_chans, 0
        for i in range(num_stages):
            stages.append(
                LaViTStage(
                    prev_dim,
                    embed_dims[i],
                    depth=depths[i],
                    la_depth=la_depths[i],
                    num_heads=num_heads[i],
                    grid_size=grids[i],
                    stride=patch_size if i == 0 else 2,
                    window_size=window_sizes[i],
                    sr_ratio=sr_ratios[i],
                    mlp_ratio=mlp_ratios[i],
                    mlp_dwconv=mlp_dwconv,
                    mlp_chunk_size=mlp_chunk_size,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[cur : cur + depths[i]],
                    norm_layer=norm_layer,
                    attn_residual_from=self._residual(
                        i, attn_residual, grids, num_heads, sr_ratios, window_sizes, la_input
                    ),
                    emit_attention=attn_residual and i < num_stages - 1,
                    la_input=la_input,
                    dp_loss_variant=dp_loss_variant,
                )
            )
            prev_dim = embed_dims[i]
            cur += depths[i]
            reduction = patch_size * 2**i
            self.feature_info.append(
                dict(num_chs=prev_dim, reduction=reduction, module=f"stages.{i}")
            )
        self.stages = nn.ModuleList(stages)
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        self.apply(self._init_weights)
        for m in self.modules():  # restore the documented starting points after _init_weights
            if isinstance(m, (AttentionDownsample, WindowAttentionDownsample)):
                m.init_weights()
            elif isinstance(m, LessAttention):
                m.init_token_maps()
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=0.02)

    @staticmethod
    def _residual(
        i: int,
        enabled: bool,
        grids: list[Grid],
        heads: tuple[int, ...],
        srs: tuple[int, ...],
        windows: tuple[int, ...],
        la_input: str,
    ) -> nn.Module | None:
        """The attention-residual module feeding stage ``i`` from stage ``i - 1``."""
        if not enabled or i == 0:
            return None
        w_in, w_out = windows[i - 1], windows[i]
        probs = la_input == "softmax"
        if w_in > 0 and w_in == w_out:
            return WindowAttentionDownsample(heads[i - 1], heads[i], (w_out, w_out), probs)
        if w_in == 0 and w_out == 0:
            k_in = (grids[i - 1][0] // srs[i - 1], grids[i - 1][1] // srs[i - 1])
            k_out = (grids[i][0] // srs[i], grids[i][1] // srs[i])
            return AttentionDownsample(heads[i - 1], heads[i], grids[i - 1], grids[i], k_in, k_out)
        raise ValueError(
            f"attn_residual between stage {i - 1} (window_sizes={w_in}) and stage {i} "
            f"(window_sizes={w_out}) needs both stages windowed with the same window size or "
            "both global; pass attn_residual=False or matching window_sizes"
        )

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Position embeddings and Theta/Psi (decay would pull Theta/Psi to 0, not identity)."""
        return {
            n for n, _ in self.named_parameters() if n.endswith(("pos_embed", ".theta", ".psi"))
        }

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stages\.0\.(?:patch_embed|pos_embed)",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.(?:patch_embed|pos_embed|attn_downsample)", (0,)),
                (r"^stages\.(\d+)\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for s in self.stages:
            s.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        device = self.stages[-1].norm.weight.device
        self.head = (
            nn.Linear(self.num_features, num_classes, device=device)
            if num_classes > 0
            else nn.Identity()
        )

    def _forward_stages(
        self, x: torch.Tensor, compute_aux: bool, take: set[int] | None = None, stop: int = -1
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        x = _check_input(x, self.in_chans, self.img_size, self.any_size, self.total_stride)
        prev = None
        losses: list[torch.Tensor] = []
        feats: list[torch.Tensor] = []
        last = len(self.stages) - 1 if stop < 0 else stop
        for i, stage in enumerate(self.stages[: last + 1]):
            x, prev, stage_losses = stage(x, prev, compute_aux)
            losses.extend(stage_losses)
            if take is not None and i in take:
                feats.append(x)
        return x, feats, losses

    def _aux(self, x: torch.Tensor, losses: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        loss = torch.stack(losses).mean() if losses else x.new_zeros((), dtype=torch.float32)
        return {"loss_dp": loss}

    def forward_features(
        self, x: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(B, C, H, W) -> (B, num_features, H/32, W/32)`` (plus the aux dict if asked)."""
        return_aux = _flag(return_aux)
        x, _, losses = self._forward_stages(x, return_aux)
        return (x, self._aux(x, losses)) if return_aux else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``(B, C, h, w)`` -> pooled ``(B, C)`` features or ``(B, num_classes)`` logits."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(
        self, x: torch.Tensor, return_aux: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return_aux = _flag(return_aux)
        x, _, losses = self._forward_stages(x, return_aux)
        logits = self.forward_head(x)
        return (logits, self._aux(x, losses)) if return_aux else logits

    def _take_indices(self, indices: int | list[int] | None) -> list[int]:
        n = len(self.stages)
        if indices is None:
            indices = n
        if isinstance(indices, int):
            if not 0 < indices <= n:
                raise ValueError(f"indices={indices} must be in 1..{n} (last n stages)")
            return list(range(n - indices, n))
        take = sorted(i % n for i in indices)
        if any(not -n <= i < n for i in indices):
            raise ValueError(f"stage indices {list(indices)} out of range for {n} stages")
        return take

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-stage ``(B, C_i, H/s_i, W/s_i)`` maps (each stage already ends with a norm)."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take = self._take_indices(indices)
        stop = max(take) if (stop_early or intermediates_only) else -1
        x, feats, _ = self._forward_stages(x, False, set(take), stop)
        return feats if intermediates_only else (x, feats)

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop stages after the last requested one (and the head); returns the indices."""
        take = self._take_indices(indices)
        self.stages = self.stages[: max(take) + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take


def resample_token_matrix(
    weight: torch.Tensor,
    old_grid: Grid,
    new_grid: Grid,
    old_scale: float = 1.0,
    new_scale: float | None = None,
) -> torch.Tensor:
    """Resample a token-mixing matrix (Theta or Psi of a global stage) to a new token grid.

    ``weight`` ``(N_old, N_old)`` -> ``(N_new, N_new)``: the deviation from ``old_scale * I``
    is interpolated bicubically over both the output and the input grid, multiplied by
    ``N_old / N_new`` (each output token now sums over that many more inputs), and
    ``new_scale * I`` (default ``old_scale * I``) is added, so a scaled identity stays exactly a
    scaled identity. (A softmax-input Psi starts as ``N_k * I``: pass both key counts.)
    """
    n_old, n_new = _tokens(old_grid), _tokens(new_grid)
    if weight.shape != (n_old, n_old):
        raise ValueError(
            f"token matrix of shape {tuple(weight.shape)} does not fit grid {old_grid}"
        )
    new_scale = old_scale if new_scale is None else new_scale
    dtype = weight.dtype
    delta = weight.float() - old_scale * torch.eye(n_old, device=weight.device)
    # interpolate over the input grid: (N_old rows, 1, h, w)
    d = delta.reshape(n_old, 1, *old_grid)
    d = F.interpolate(d, size=new_grid, mode="bicubic", align_corners=False)
    d = d.reshape(n_old, n_new).t().reshape(n_new, 1, *old_grid)
    # then over the output grid
    d = F.interpolate(d, size=new_grid, mode="bicubic", align_corners=False)
    d = d.reshape(n_new, n_new).t() * (n_old / n_new)
    return (d + new_scale * torch.eye(n_new, device=weight.device)).to(dtype)


def _square_grid(n: int, key: str) -> Grid:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(
            f"checkpoint entry {key!r} has {n} tokens, not a square grid; cannot resample it"
        )
    return side, side


def checkpoint_filter_fn(state_dict: dict, model: LaViT) -> dict:
    """Adapt a checkpoint to ``model``: unwrap, resample pos-embeds and global Theta/Psi.

    Raises ``ValueError`` naming the key for entries whose shapes cannot be adapted.
    """
    for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
            break
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k not in target or target[k].shape == v.shape:
            out[k] = v
            continue
        ref = target[k]
        if k.endswith("pos_embed"):
            grid = model.stages[int(k.split(".")[1])].grid_size
            old = _square_grid(v.shape[1], k)
            v = resample_abs_pos_embed(v, list(grid), list(old), num_prefix_tokens=0)
        elif k.endswith((".theta", ".psi")):
            stage = model.stages[int(k.split(".")[1])]
            attn = stage.blocks[int(k.split(".")[3])].attn
            if stage.window is None and attn.dp_pool_grids is not None:
                q_grid, k_grid = attn.dp_pool_grids
            else:
                q_grid = k_grid = stage.grid_size
            grid = k_grid if k.endswith(".theta") else q_grid
            old_scale = new_scale = 1.0
            if k.endswith(".psi") and attn.init_scale != 1.0:  # N_k * I start: N_k changes
                old_scale = float(state_dict[k.removesuffix("psi") + "theta"].shape[0])
                new_scale = attn.init_scale
            v = resample_token_matrix(v, _square_grid(v.shape[0], k), grid, old_scale, new_scale)
        if v.shape != ref.shape:
            raise ValueError(
                f"checkpoint entry {k!r} has shape {tuple(v.shape)}, the model expects "
                f"{tuple(ref.shape)}; was the checkpoint made for a different variant?"
            )
        out[k] = v
    return out


def _create_lavit(variant: str, pretrained: bool = False, **kwargs) -> LaViT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        LaViT,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stages.0.patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "lavit_tiny.untrained": _cfg(),
        "lavit_small.untrained": _cfg(),
        "lavit_base.untrained": _cfg(),
    }
)

#: The paper's layout shared by the presets: 7x7 attention windows in every stage, no
#: spatial reduction, the first LA block of each stage on the softmax attention.
PAPER_LAYOUT = dict(window_sizes=(7, 7, 7, 7), sr_ratios=(1, 1, 1, 1), la_input="softmax")


#: Per-preset settings on top of PAPER_LAYOUT (Table 1 of the paper).
PRESETS: dict[str, dict] = {
    "lavit_tiny": dict(
        depths=(2, 2, 3, 2),
        la_depths=(1, 1, 2, 1),
        embed_dims=(64, 128, 256, 448),
        num_heads=(1, 2, 4, 7),
        mlp_ratios=(5, 4, 4, 6),
    ),
    "lavit_small": dict(
        depths=(2, 3, 6, 3),
        la_depths=(1, 2, 3, 2),
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 6, 4, 6),
    ),
    "lavit_base": dict(
        depths=(3, 4, 16, 3),
        la_depths=(1, 2, 8, 2),
        embed_dims=(64, 128, 320, 576),
        num_heads=(1, 2, 5, 9),
        mlp_ratios=(6, 6, 4, 7),
    ),
}


def _create_preset(variant: str, pretrained: bool, kwargs: dict) -> LaViT:
    return _create_lavit(variant, pretrained, **{**PAPER_LAYOUT, **PRESETS[variant], **kwargs})


@register_model
def lavit_tiny(pretrained: bool = False, **kwargs) -> LaViT:
    return _create_preset("lavit_tiny", pretrained, kwargs)


@register_model
def lavit_small(pretrained: bool = False, **kwargs) -> LaViT:
    return _create_preset("lavit_small", pretrained, kwargs)


@register_model
def lavit_base(pretrained: bool = False, **kwargs) -> LaViT:
    return _create_preset("lavit_base", pretrained, kwargs)
