"""Multiply-accumulate counts that include attention.

``torch.utils.flop_counter.FlopCounterMode`` has no formula for the fused CPU attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), so models that call
``F.scaled_dot_product_attention`` on CPU or the meta device are under-counted by their whole
``QK^T`` and ``AV`` cost. :func:`count_macs` switches every timm-style attention module
(a ``fused_attn`` attribute: LaViT, ViT/DeiT, PVTv2) to its explicit matmul path for the count
and restores it afterwards.
"""

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_macs"]


@torch.no_grad()
def count_macs(model: nn.Module, x: torch.Tensor) -> float:
    """MACs (FLOPs / 2) of ``model(x)``, attention included. Works on the meta device."""
    switched = [m for m in model.modules() if getattr(m, "fused_attn", False) is True]
    for m in switched:
        m.fused_attn = False
    try:
        with FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        for m in switched:
            m.fused_attn = True
    return fc.get_total_flops() / 2
