import random

import numpy as np
import pytest
import torch

from lab_common import get_rng_state, seed_everything, set_rng_state


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


def test_rng_state_round_trip():
    seed_everything(7)
    state = get_rng_state()
    a = _draw()
    _draw()  # move every generator on
    set_rng_state(state)
    b = _draw()
    assert a[0] == b[0]
    np.testing.assert_array_equal(a[1], b[1])
    assert torch.equal(a[2], b[2])
