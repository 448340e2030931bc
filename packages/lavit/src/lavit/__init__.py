"""LaViT: the Less-Attention Vision Transformer (CVPR 2024), timm-compatible."""

__version__ = "0.1.0"

__all__: list[str] = []
