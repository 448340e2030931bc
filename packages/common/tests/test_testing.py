import json

import pytest
import torch

from lab_common.testing import CUDA_SKIP_REASON, DEVICES, OPTIONAL_SKIP_PREFIX, require_optional


def test_devices_param_list():
    ids = [p.id for p in DEVICES]
    assert ids == ["cpu", "cuda"]
    assert DEVICES[0].marks == ()
    cuda_marks = {m.name: m for m in DEVICES[1].marks}
    assert set(cuda_marks) == {"cuda", "skipif"}
    assert cuda_marks["skipif"].kwargs["reason"] == CUDA_SKIP_REASON
    assert cuda_marks["skipif"].args[0] == (not torch.cuda.is_available())


def test_require_optional_imports_or_skips_naming_the_module():
    assert require_optional("json") is json
    reason = f"{OPTIONAL_SKIP_PREFIX} lab_common_absent"
    with pytest.raises(pytest.skip.Exception, match=f"^{reason}$"):
        require_optional("lab_common_absent.sub")
