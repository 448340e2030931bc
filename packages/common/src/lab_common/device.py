"""Device and autocast selection (cpu / cuda / mps)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["resolve_device", "autocast"]

_DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn ``"auto"``/``None``/a name into a usable ``torch.device``.

    ``"auto"`` picks CUDA, then MPS, then CPU. Asking for an unavailable device raises ValueError.
    """
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use one of 'auto', {_DEVICE_TYPES}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but CUDA is not available; use 'cpu' or 'auto'"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(
            f"device {device!r} requested but MPS is not available; use 'cpu' or 'auto'"
        )
    return dev


@contextlib.contextmanager
def autocast(
    device: torch.device | str, enabled: bool = True, dtype: torch.dtype | None = None
) -> Iterator[None]:
    """Mixed-precision context for ``device``: bfloat16 on CPU, float16 on CUDA/MPS by default.

    A no-op when ``enabled`` is False, so training loops can call it unconditionally.
    """
    dev = torch.device(device)
    if not enabled:
        yield
        return
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cpu" else torch.float16
    with torch.autocast(device_type=dev.type, dtype=dtype):
        yield
