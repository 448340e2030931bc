import random

import numpy as np
import pytest
import torch

from lab_common import seed_everything


def _draw():
    return random.random(), np.random.rand(3), torch.randn(4)  # noqa: NPY002


def test_same_seed_same_numbers():
    seed_everything(123)
    a = _draw()
    seed_everything(123)
    b = _draw()
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert torch.equal(a[2], b[2])


def test_different_seed_different_numbers():
    seed_everything(1)
    a = torch.randn(8)
    seed_everything(2)
    assert not torch.equal(a, torch.randn(8))


@pytest.mark.parametrize("bad", [-1, 1.5, "3"])
def test_bad_seed(bad):
    with pytest.raises(ValueError, match="seed"):
        seed_everything(bad)
