"""Pytest conventions shared by every package's tests (imports pytest: for tests only)."""

from __future__ import annotations

import pytest
import torch

__all__ = ["DEVICES", "CUDA_SKIP_REASON"]

CUDA_SKIP_REASON = "no CUDA device on this machine; CUDA tests run where a GPU is present"

#: ``@pytest.mark.parametrize("device", DEVICES)``: CPU always, CUDA when available.
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param(
        "cuda",
        id="cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_SKIP_REASON),
    ),
]
