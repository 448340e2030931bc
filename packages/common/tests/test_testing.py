import torch

from lab_common.testing import CUDA_SKIP_REASON, DEVICES


def test_devices_param_list():
    ids = [p.id for p in DEVICES]
    assert ids == ["cpu", "cuda"]
    cuda_marks = DEVICES[1].marks
    assert cuda_marks[0].kwargs["reason"] == CUDA_SKIP_REASON
    assert cuda_marks[0].args[0] == (not torch.cuda.is_available())
