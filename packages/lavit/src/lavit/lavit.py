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
``la_depth`` less-attention (LA) blocks. An LA block computes no queries or keys: it maps the
previous block's pre-softmax scores ``A`` (``(B, heads, N_q, N_k)``) to ``Psi @ A @ Theta^T``
with learned token-mixing matrices ``Psi`` (``N_q x N_q``) and ``Theta`` (``N_k x N_k``), both
initialised to the identity, so an untrained LA block reuses the previous attention exactly.
The last scores of a stage are carried into the next one by a strided convolution over the
query grid (residual attention downsampling). Keys and values are spatially reduced as in
PVTv2 (``sr_ratios``), which keeps ``N_k`` (and ``Theta``) small. The paper publishes no code;
every choice it leaves open is documented in the package README ("Design choices").

No global state: auxiliary diagonality-preserving losses are returned by
``model(x, return_aux=True) -> (logits, {"loss_dp": scalar})``.
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
    Mlp,
    resample_abs_pos_embed,
    to_2tuple,
    trunc_normal_,
    use_fused_attn,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch.utils.checkpoint import checkpoint

from .losses import DP_LOSS_VARIANTS, dp_loss

__all__ = ["LaViT", "checkpoint_filter_fn", "resample_token_matrix"]

Grid = tuple[int, int]


def _tokens(grid: Grid) -> int:
    return grid[0] * grid[1]


def _pool_query_grid(attn: torch.Tensor, q_grid: Grid, out_grid: Grid) -> torch.Tensor:
    """Average attention rows over the query grid: ``(B, H, Nq, Nk) -> (B, H, No, Nk)``."""
    if q_grid == out_grid:
        return attn
    b, h, _, nk = attn.shape
    x = attn.transpose(-1, -2).reshape(b, h * nk, *q_grid)
    x = F.adaptive_avg_pool2d(x, out_grid)
    return x.reshape(b, h, nk, _tokens(out_grid)).transpose(-1, -2)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: ``(B, C_in, H, W) -> (B, H/s * W/s, C)`` (conv + LayerNorm)."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SpatialReduction(nn.Module):
    """PVT key/value reduction: ``(B, N, C) -> (B, N / sr^2, C)`` by a strided conv + norm."""

    def __init__(
        self,
        dim: int,
        grid_size: Grid,
        sr_ratio: int,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.grid_size = grid_size
        self.conv = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, *self.grid_size)
        return self.norm(self.conv(x).flatten(2).transpose(1, 2))


class Attention(nn.Module):
    """Vanilla (VA) multi-head attention with optional spatial-reduction keys.

    ``forward(x, attn_bias)``: ``x`` is ``(B, N, C)``; ``attn_bias`` (``(B, heads, N, N_k)`` or
    ``None``) is added to the scaled scores. Returns ``(out (B, N, C), scores)`` where
    ``scores`` are the pre-softmax ``(B, heads, N, N_k)`` scores when ``return_scores`` (a later
    block reuses them) and ``None`` otherwise, in which case the fused
    ``scaled_dot_product_attention`` kernel is used.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: Grid,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        return_scores: bool = False,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.return_scores = return_scores
        self.fused_attn = use_fused_attn()
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.sr = (
            SpatialReduction(dim, grid_size, sr_ratio, norm_layer)
            if sr_ratio > 1
            else nn.Identity()
        )
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, attn_bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        kv = self.kv(self.sr(x)).reshape(b, -1, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        scores = None
        if self.fused_attn and not self.return_scores:
            if attn_bias is not None:
                attn_bias = attn_bias.to(q.dtype)
            x = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=attn_bias,
                dropout_p=self.attn_drop.p if self.training else 0.0,
            )
        else:
            s = (q * self.scale) @ k.transpose(-2, -1)
            if attn_bias is not None:
                s = s + attn_bias
            x = self.attn_drop(s.softmax(dim=-1)) @ v
            if self.return_scores:
                scores = s
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x)), scores


class LessAttention(nn.Module):
    """Less-attention (LA): reuse the previous scores through learned token-axis maps.

    ``scores = Psi @ prev_scores @ Theta^T`` with ``Psi`` ``(N_q, N_q)`` mixing the query axis
    and ``Theta`` ``(N_k, N_k)`` mixing the key axis, shared by all heads and applied as one
    batched matmul. Both start as the identity. ``forward(x, prev_scores, compute_aux)`` takes
    ``x`` ``(B, N_q, C)`` and ``prev_scores`` ``(B, heads, N_q, N_k)``; returns ``(out, scores,
    loss_dp)`` with ``loss_dp`` ``None`` unless ``compute_aux``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: Grid,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        dp_loss_variant: str = "intended",
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.grid_size = grid_size
        self.key_grid_size = (grid_size[0] // sr_ratio, grid_size[1] // sr_ratio)
        self.dp_loss_variant = dp_loss_variant
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.sr = (
            SpatialReduction(dim, grid_size, sr_ratio, norm_layer)
            if sr_ratio > 1
            else nn.Identity()
        )
        self.psi = nn.Parameter(torch.eye(_tokens(grid_size)))
        self.theta = nn.Parameter(torch.eye(_tokens(self.key_grid_size)))
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, prev_scores: torch.Tensor, compute_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        b, n, c = x.shape
        v = self.v(self.sr(x)).reshape(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(torch.matmul(self.psi, prev_scores), self.theta.t())
        probs = scores.softmax(dim=-1)
        loss = None
        if compute_aux:
            target = probs if self.dp_loss_variant == "intended" else scores
            square = _pool_query_grid(target.float(), self.grid_size, self.key_grid_size)
            loss = dp_loss(square, self.dp_loss_variant)
        x = (self.attn_drop(probs) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x)), scores, loss


class Block(nn.Module):
    """Pre-norm transformer block with a VA or LA token mixer.

    ``forward(x, attn_in, compute_aux) -> (x, scores, loss_dp)``: ``x`` ``(B, N, C)``;
    ``attn_in`` is the additive bias for a VA block or the previous scores for an LA block.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: Grid,
        less_attention: bool = False,
        return_scores: bool = False,
        sr_ratio: int = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        dp_loss_variant: str = "intended",
    ):
        super().__init__()
        self.less_attention = less_attention
        self.norm1 = norm_layer(dim)
        common = dict(
            dim=dim,
            num_heads=num_heads,
            grid_size=grid_size,
            sr_ratio=sr_ratio,
            qkv_bias=qkv_bias,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            norm_layer=norm_layer,
        )
        if less_attention:
            self.attn = LessAttention(**common, dp_loss_variant=dp_loss_variant)
        else:
            self.attn = Attention(**common, return_scores=return_scores)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, attn_in: torch.Tensor | None = None, compute_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        loss = None
        if self.less_attention:
            y, scores, loss = self.attn(self.norm1(x), attn_in, compute_aux)
        else:
            y, scores = self.attn(self.norm1(x), attn_in)
        x = x + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x, scores, loss


class AttentionDownsample(nn.Module):
    """Residual attention downsampling between stages.

    Maps the previous stage's last scores ``(B, H_in, N_q_in, N_k_in)`` to the next stage's
    shape ``(B, H_out, N_q_out, N_k_out)``: a conv (kernel = stride = query-grid ratio, heads as
    channels) over the query grid, then average pooling of the key grid if it changed. The conv
    starts as the mean over heads and each query window, so the residual carries the averaged
    token relations from the first step on.
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
        self.q_grid_out = q_grid_out
        self.k_grid_in = k_grid_in
        self.k_grid_out = k_grid_out
        self.conv = nn.Conv2d(in_heads, out_heads, stride, stride=stride)
        self.init_weights()

    def init_weights(self) -> None:
        nn.init.constant_(self.conv.weight, 1.0 / self.conv.weight[0].numel())
        nn.init.zeros_(self.conv.bias)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        b, h, _, nk = scores.shape
        x = scores.permute(0, 3, 1, 2).reshape(b * nk, h, *self.q_grid_in)
        x = self.conv(x)
        h_out = x.shape[1]
        x = x.reshape(b, nk, h_out, -1).permute(0, 2, 3, 1)  # (B, H_out, N_q_out, N_k_in)
        if self.k_grid_in != self.k_grid_out:
            nq = x.shape[2]
            x = x.reshape(b * h_out * nq, 1, *self.k_grid_in)
            x = F.adaptive_avg_pool2d(x, self.k_grid_out).reshape(b, h_out, nq, -1)
        return x


class LaViTStage(nn.Module):
    """Patch embedding, position embedding, VA blocks, LA blocks, norm.

    ``forward(x, prev_scores, compute_aux)``: ``x`` ``(B, C_in, H_in, W_in)`` ->
    ``(x (B, C, H, W), scores or None, list of per-LA-block DP losses)``.
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
        sr_ratio: int = 1,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float | list[float] = 0.0,
        norm_layer: Callable[..., nn.Module] = nn.LayerNorm,
        attn_residual_from: tuple[int, Grid, Grid] | None = None,
        emit_scores: bool = False,
        dp_loss_variant: str = "intended",
    ):
        super().__init__()
        self.grid_size = grid_size
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(dim_in, dim, stride, norm_layer)
        self.pos_embed = nn.Parameter(torch.zeros(1, _tokens(grid_size), dim))
        key_grid = (grid_size[0] // sr_ratio, grid_size[1] // sr_ratio)
        if attn_residual_from is not None:
            prev_heads, prev_grid, prev_key_grid = attn_residual_from
            self.attn_downsample = AttentionDownsample(
                prev_heads, num_heads, prev_grid, grid_size, prev_key_grid, key_grid
            )
        else:
            self.attn_downsample = None
        dpr = drop_path if isinstance(drop_path, list) else [drop_path] * depth
        num_va = depth - la_depth
        blocks = []
        for i in range(depth):
            next_is_la = i + 1 < depth and i + 1 >= num_va
            blocks.append(
                Block(
                    dim,
                    num_heads,
                    grid_size,
                    less_attention=i >= num_va,
                    return_scores=next_is_la or (i == depth - 1 and emit_scores),
                    sr_ratio=sr_ratio,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop,
                    attn_drop=attn_drop,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    dp_loss_variant=dp_loss_variant,
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm_layer(dim)

    def forward(
        self,
        x: torch.Tensor,
        prev_scores: torch.Tensor | None = None,
        compute_aux: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        x = self.patch_embed(x) + self.pos_embed
        attn = None
        if self.attn_downsample is not None and prev_scores is not None:
            attn = self.attn_downsample(prev_scores)
        losses = []
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, attn, loss = checkpoint(blk, x, attn, compute_aux, use_reentrant=False)
            else:
                x, attn, loss = blk(x, attn, compute_aux)
            if loss is not None:
                losses.append(loss)
        x = self.norm(x)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, *self.grid_size)
        return x, attn, losses


class LaViT(nn.Module):
    """Less-Attention Vision Transformer.

    ``forward(x, return_aux=False)``: ``x`` ``(B, in_chans, *img_size)`` -> logits
    ``(B, num_classes)``; with ``return_aux=True`` -> ``(logits, {"loss_dp": scalar})``, the mean
    diagonality-preserving loss over all LA blocks (unweighted; multiply by ``lambda_DP``).
    Inputs of any other spatial size raise ``ValueError`` (Theta/Psi and the position
    embeddings are tied to the token grid; resample a checkpoint via ``checkpoint_filter_fn``).
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
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_layer: Callable[..., nn.Module] | None = None,
        attn_residual: bool = True,
        dp_loss_variant: str = "intended",
    ):
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        num_stages = len(depths)
        for name, value in dict(
            la_depths=la_depths,
            embed_dims=embed_dims,
            num_heads=num_heads,
            mlp_ratios=mlp_ratios,
            sr_ratios=sr_ratios,
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
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        if dp_loss_variant not in DP_LOSS_VARIANTS:
            raise ValueError(
                f"dp_loss_variant must be one of {DP_LOSS_VARIANTS}, got {dp_loss_variant!r}"
            )
        img_size = to_2tuple(img_size)
        total_stride = patch_size * 2 ** (num_stages - 1)
        if img_size[0] % total_stride or img_size[1] % total_stride:
            raise ValueError(
                f"img_size {img_size} must be divisible by the total stride {total_stride} "
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
        self.grad_checkpointing = False

        total = sum(depths)
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        stages = []
        self.feature_info = []
        prev_dim, cur = in_chans, 0
        for i in range(num_stages):
            residual_from = None
            if attn_residual and i > 0:
                prev_key = (
                    grids[i - 1][0] // sr_ratios[i - 1],
                    grids[i - 1][1] // sr_ratios[i - 1],
                )
                residual_from = (num_heads[i - 1], grids[i - 1], prev_key)
            stages.append(
                LaViTStage(
                    prev_dim,
                    embed_dims[i],
                    depth=depths[i],
                    la_depth=la_depths[i],
                    num_heads=num_heads[i],
                    grid_size=grids[i],
                    stride=patch_size if i == 0 else 2,
                    sr_ratio=sr_ratios[i],
                    mlp_ratio=mlp_ratios[i],
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[cur : cur + depths[i]],
                    norm_layer=norm_layer,
                    attn_residual_from=residual_from,
                    emit_scores=attn_residual and i < num_stages - 1,
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
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=0.02)
            if stage.attn_downsample is not None:
                stage.attn_downsample.init_weights()

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

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"LaViT expects (B, C, H, W) input, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"input has {x.shape[1]} channels but the model was built with "
                f"in_chans={self.in_chans}"
            )
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(
                f"input size {tuple(x.shape[-2:])} differs from the size the model was built "
                f"for, img_size={self.img_size}; LA blocks are tied to the token grid: build "
                f"with img_size={tuple(x.shape[-2:])} and load the checkpoint through "
                "timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...)) "
                "to resample it"
            )

    def _forward_stages(
        self, x: torch.Tensor, compute_aux: bool, take: set[int] | None = None, stop: int = -1
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        self._check_input(x)
        scores = None
        losses: list[torch.Tensor] = []
        feats: list[torch.Tensor] = []
        last = len(self.stages) - 1 if stop < 0 else stop
        for i, stage in enumerate(self.stages[: last + 1]):
            x, scores, stage_losses = stage(x, scores, compute_aux)
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


def resample_token_matrix(weight: torch.Tensor, old_grid: Grid, new_grid: Grid) -> torch.Tensor:
    """Resample a token-mixing matrix (Theta or Psi) to a new 2-D token grid.

    ``weight`` ``(N_old, N_old)`` -> ``(N_new, N_new)``: the deviation from the identity is
    interpolated bicubically over both the output and the input grid, scaled by
    ``N_old / N_new`` (each output token now sums over that many more inputs), and the identity
    is added back, so an identity matrix stays exactly the identity.
    """
    n_old, n_new = _tokens(old_grid), _tokens(new_grid)
    if weight.shape != (n_old, n_old):
        raise ValueError(
            f"token matrix of shape {tuple(weight.shape)} does not fit grid {old_grid}"
        )
    dtype = weight.dtype
    delta = weight.float() - torch.eye(n_old, device=weight.device)
    # interpolate over the input grid: (N_old rows, 1, h, w)
    d = delta.reshape(n_old, 1, *old_grid)
    d = F.interpolate(d, size=new_grid, mode="bicubic", align_corners=False)
    d = d.reshape(n_old, n_new).t().reshape(n_new, 1, *old_grid)
    # then over the output grid
    d = F.interpolate(d, size=new_grid, mode="bicubic", align_corners=False)
    d = d.reshape(n_new, n_new).t() * (n_old / n_new)
    return (d + torch.eye(n_new, device=weight.device)).to(dtype)


def _square_grid(n: int, key: str) -> Grid:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(
            f"checkpoint entry {key!r} has {n} tokens, not a square grid; cannot resample it"
        )
    return side, side


def checkpoint_filter_fn(state_dict: dict, model: LaViT) -> dict:
    """Adapt a checkpoint to ``model``: unwrap, resample pos-embeds and Theta/Psi to its grids.

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
            n = int(k.split(".")[1])
            attn = model.stages[n].blocks[int(k.split(".")[3])].attn
            grid = attn.key_grid_size if k.endswith(".theta") else attn.grid_size
            v = resample_token_matrix(v, _square_grid(v.shape[0], k), grid)
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
        "fixed_input_size": True,
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


@register_model
def lavit_tiny(pretrained: bool = False, **kwargs) -> LaViT:
    args = dict(
        depths=(2, 2, 3, 2),
        la_depths=(0, 0, 2, 1),
        embed_dims=(64, 128, 256, 448),
        num_heads=(1, 2, 4, 7),
        mlp_ratios=(6, 4, 4, 4),
    )
    return _create_lavit("lavit_tiny", pretrained, **dict(args, **kwargs))


@register_model
def lavit_small(pretrained: bool = False, **kwargs) -> LaViT:
    args = dict(
        depths=(2, 3, 6, 3),
        la_depths=(0, 0, 3, 2),
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
    )
    return _create_lavit("lavit_small", pretrained, **dict(args, **kwargs))


@register_model
def lavit_base(pretrained: bool = False, **kwargs) -> LaViT:
    args = dict(
        depths=(3, 4, 16, 3),
        la_depths=(0, 0, 8, 2),
        embed_dims=(64, 128, 320, 512),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(8, 8, 4, 4),
    )
    return _create_lavit("lavit_base", pretrained, **dict(args, **kwargs))
