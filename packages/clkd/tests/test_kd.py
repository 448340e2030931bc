"""Hinton KD against its closed form."""

import math

import pytest
import torch
import torch.nn.functional as F

from clkd import KDConfig, KDLoss, kd_loss


def test_closed_form_two_classes():
    # student uniform; teacher logits/T = (ln 3, 0) -> softmax (.75, .25)
    temperature = 2.0
    s = torch.zeros(3, 2)
    t = torch.tensor([[2 * math.log(3.0), 0.0]] * 3)
    y = torch.tensor([0, 1, 0])
    out = kd_loss(s, t, y, ce_weight=0.5, kd_weight=9.0, temperature=temperature)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert out["loss_kd"].item() == pytest.approx(9.0 * temperature**2 * kl)
    assert out["loss_ce"].item() == pytest.approx(0.5 * math.log(2.0))


def test_matches_explicit_formula_and_zero_when_equal():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    y = torch.randint(0, 7, (5,), generator=g)
    pt, ps = F.softmax(t / 3, 1), F.softmax(s / 3, 1)
    expected = (pt * (pt.log() - ps.log())).sum(1).mean() * 9
    torch.testing.assert_close(
        kd_loss(s, t, y, kd_weight=1.0, temperature=3.0)["loss_kd"], expected
    )
    assert kd_loss(s, s, y)["loss_kd"].item() == pytest.approx(0.0, abs=1e-6)
    perm = torch.randperm(5, generator=g)
    torch.testing.assert_close(
        kd_loss(s[perm], t[perm], y[perm])["loss_kd"], kd_loss(s, t, y)["loss_kd"]
    )


def test_gradcheck_and_module():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    assert torch.autograd.gradcheck(lambda x: sum(kd_loss(x, t, y).values()), (s,))
    loss = KDLoss(temperature=2.0)
    assert loss.config == KDConfig(temperature=2.0)
    assert set(loss(s, t, y)) == {"loss_ce", "loss_kd"}
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=-1.0)
    with pytest.raises(ValueError, match=r"\(2, 4\) and teacher logits \(2, 5\)"):
        kd_loss(torch.randn(2, 4), torch.randn(2, 5), torch.zeros(2).long())
