import pytest
import torch

from lab_common import autocast, resolve_device
from lab_common.testing import DEVICES


def test_resolve_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert resolve_device("auto").type == "cuda"
    elif not torch.backends.mps.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_device(None) == torch.device("cpu")


def test_resolve_bad_name():
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-ish")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_unavailable_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_dtype(device):
    a = torch.randn(4, 4, device=device)
    with autocast(device):
        out = a @ a
    assert out.dtype == (torch.bfloat16 if device == "cpu" else torch.float16)
    with autocast(device, enabled=False):
        assert (a @ a).dtype == torch.float32
