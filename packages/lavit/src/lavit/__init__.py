"""LaViT: the Less-Attention Vision Transformer (CVPR 2024), timm-compatible.

``import lavit`` registers ``lavit_tiny``, ``lavit_small`` and ``lavit_base`` with timm.
"""

from .flops import count_macs
from .lavit import LA_INPUTS, LaViT, checkpoint_filter_fn, resample_token_matrix
from .losses import DP_LOSS_VARIANTS, dp_loss

__version__ = "0.3.0"

__all__ = [
    "DP_LOSS_VARIANTS",
    "LA_INPUTS",
    "LaViT",
    "checkpoint_filter_fn",
    "count_macs",
    "dp_loss",
    "resample_token_matrix",
]
