"""Print params and MACs (``lavit.count_macs``: FlopCounterMode FLOPs / 2, attention included).

Usage: python benchmarks/model_size.py [model_name ...]
"""

import sys

import timm
import torch

import lavit  # registers the models


def params_and_macs(model: torch.nn.Module, size: int = 224) -> tuple[float, float]:
    """Return (params in M, MACs in G) for one ``(1, 3, size, size)`` image."""
    model.eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return params, lavit.count_macs(model, torch.randn(1, 3, size, size)) / 1e9


if __name__ == "__main__":
    names = sys.argv[1:] or ["lavit_tiny", "lavit_small", "lavit_base"]
    for name in names:
        p, g = params_and_macs(timm.create_model(name))
        print(f"{name:32s} params {p:6.2f} M   MACs {g:5.2f} G")
