"""DKD against its closed form, the KD decomposition identity, and the warm-up."""

import math

import pytest
import torch

from clkd import DKDConfig, DKDLoss, dkd_loss
from lab_common.distill import kd_loss


def test_closed_form_three_classes():
    # T = 1, target 0. Student uniform: b_s = (1/3, 2/3), p̂_s = (1/2, 1/2).
    # Teacher logits (0, ln 3, 0): p_t = (1/5, 3/5, 1/5), b_t = (.2, .8), p̂_t = (.75, .25).
    s = torch.zeros(1, 3)
    t = torch.tensor([[0.0, math.log(3.0), 0.0]])
    y = torch.tensor([0])
    out = dkd_loss(s, t, y, ce_weight=1.0, alpha=2.0, beta=3.0, temperature=1.0)
    tckd = 0.2 * math.log(0.2 / (1 / 3)) + 0.8 * math.log(0.8 / (2 / 3))
    nckd = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert out["loss_tckd"].item() == pytest.approx(2.0 * tckd)
    assert out["loss_nckd"].item() == pytest.approx(3.0 * nckd)
    assert out["loss_ce"].item() == pytest.approx(math.log(3.0))


def test_kd_equals_tckd_plus_weighted_nckd():
    # Zhao et al. eq. (5): KD = TCKD + (1 − p_t^target) · NCKD, per sample.
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        s, t = torch.randn(1, 6, generator=g) * 2, torch.randn(1, 6, generator=g) * 2
        y = torch.randint(0, 6, (1,), generator=g)
        temp = 2.0
        d = dkd_loss(s, t, y, alpha=1.0, beta=1.0, temperature=temp)
        kd = kd_loss(s, t, y, ce_weight=1.0, kd_weight=1.0, temperature=temp)["loss_kd"]
        p_target = torch.softmax(t / temp, 1)[0, y].item()
        assert kd.item() == pytest.approx(
            d["loss_tckd"].item() + (1 - p_target) * d["loss_nckd"].item(), rel=1e-5
        )


def test_zero_when_equal_non_negative_permutation_and_gradcheck():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (6,), generator=g)
    same = dkd_loss(s, s, y)
    assert same["loss_tckd"].item() == pytest.approx(0, abs=1e-9)
    assert same["loss_nckd"].item() == pytest.approx(0, abs=1e-9)
    out = dkd_loss(s, t, y)
    assert all(v.item() >= 0 for v in out.values())
    perm = torch.randperm(6, generator=g)
    for k, v in dkd_loss(s[perm], t[perm], y[perm]).items():
        torch.testing.assert_close(v, out[k])
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sum(dkd_loss(x, t, y).values()), (s,))


def test_warmup_scales_distillation_terms():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    y = torch.randint(0, 5, (4,), generator=g)
    loss = DKDLoss(DKDConfig(warmup_epochs=4))
    full = loss(s, t, y)  # no set_epoch yet: factor 1
    loss.set_epoch(0, 10)
    first = loss(s, t, y)
    torch.testing.assert_close(first["loss_nckd"], full["loss_nckd"] / 4)
    torch.testing.assert_close(first["loss_ce"], full["loss_ce"])
    loss.set_epoch(7, 10)
    torch.testing.assert_close(loss(s, t, y)["loss_tckd"], full["loss_tckd"])
    with pytest.raises(ValueError, match="warmup_epochs"):
        DKDConfig(warmup_epochs=-1)


def test_int32_targets_accepted_and_bad_ones_named():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    y = torch.tensor([0, 2, 1, 2])
    ref, got = DKDLoss()(s, t, y), DKDLoss()(s, t, y.int())  # one_hot needed int64
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    with pytest.raises(ValueError, match=r"dkd_loss: target class indices must be in \[0, 3\)"):
        DKDLoss()(s, t, y + 1)
    with pytest.raises(ValueError, match="dkd_loss: student_logits has 1 non-finite"):
        DKDLoss()(s.index_put((torch.tensor(0), torch.tensor(0)), torch.tensor(float("nan"))), t, y)
    with pytest.raises(ValueError, match=r"dkd_loss needs a batch of at least 1, got .*\(0, 3\)"):
        DKDLoss()(s[:0], t[:0], y[:0])


def test_per_pair_beta_follows_mdistillers_configs():
    from clkd import DKD_BETAS, dkd_beta_for

    assert dkd_beta_for("cifar_resnet56", "cifar_resnet20") == 2.0
    assert dkd_beta_for("cifar_resnet110", "cifar_resnet32") == 2.0
    assert dkd_beta_for("cifar_wrn_40_2", "cifar_wrn_16_2") == 6.0
    assert dkd_beta_for("cifar_vgg13", "cifar_vgg8") == 6.0
    assert dkd_beta_for("cifar_resnet32x4", "cifar_resnet8x4") == 8.0
    # thin-ResNet pairs not in the table take that family's 2; anything else the default
    assert dkd_beta_for("cifar_resnet20", "cifar_resnet8") == 2.0
    assert dkd_beta_for("cifar_resnet32x4", "cifar_vgg8") == 8.0
    assert dkd_beta_for("cifar_resnet32x4", "cifar_vgg8", default=4.0) == 4.0
    assert set(DKD_BETAS.values()) == {2.0, 6.0, 8.0}
