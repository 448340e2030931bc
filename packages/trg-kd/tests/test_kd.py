import math

import pytest
import torch

from trg_kd.kd import kd_loss


def test_hand_example():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # p_t = (0.75, 0.25)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_loss(s, t, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # T^2 scaling: logits scaled by T give the same distributions
    assert kd_loss(2 * s, 2 * t, temperature=2.0).item() == pytest.approx(4 * expected, rel=1e-6)


def test_zero_when_equal_and_errors():
    z = torch.randn(4, 5)
    assert kd_loss(z.clone(), z).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(4, 5\) and \(4, 6\)"):
        kd_loss(z, torch.randn(4, 6))
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(z, z, temperature=-1.0)
