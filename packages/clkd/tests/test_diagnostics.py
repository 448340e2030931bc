"""term_gradient_norms: hand-computed gradient norms per term, zero for unrelated terms."""

import pytest
import torch

from clkd import CLKDLoss
from clkd.diagnostics import term_gradient_norms
from lab_common.distill import KDLoss


def test_norms_match_hand_computed_gradients():
    z = torch.tensor([[1.0, 2.0], [3.0, -1.0]], requires_grad=True)
    w = torch.tensor(2.0, requires_grad=True)
    terms = {"loss_sq": (z**2).sum(), "loss_lin": 3 * z[0, 0], "loss_w": w * 5}
    norms = term_gradient_norms(terms, z)
    assert norms["loss_sq"] == pytest.approx(2 * float(z.detach().norm()))  # ‖2z‖
    assert norms["loss_lin"] == pytest.approx(3.0)
    assert norms["loss_w"] == 0.0  # does not depend on z
    total = (2 * z.detach() + torch.tensor([[3.0, 0.0], [0.0, 0.0]])).norm()
    assert norms["total"] == pytest.approx(float(total))
    assert term_gradient_norms(terms, [z, w])["loss_w"] == pytest.approx(5.0)
    sum(terms.values()).backward()  # the graph is kept for the training step
    assert z.grad is not None


def test_kd_gradient_is_t_over_b_times_probability_gap():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(8, 10, generator=g).requires_grad_(True)
    t = torch.randn(8, 10, generator=g) * 3
    y = torch.randint(0, 10, (8,), generator=g)
    norms = term_gradient_norms(KDLoss(ce_weight=1, kd_weight=1, temperature=4)(s, t, y), s)
    gap = torch.softmax(s.detach() / 4, 1) - torch.softmax(t / 4, 1)
    assert norms["loss_kd"] == pytest.approx(float((4 / 8) * gap.norm()), rel=1e-5)
    ce_grad = (torch.softmax(s.detach(), 1) - torch.nn.functional.one_hot(y, 10)) / 8
    assert norms["loss_ce"] == pytest.approx(float(ce_grad.norm()), rel=1e-5)


def test_clkd_batchmean_pulls_harder_than_the_mean_reading():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(16, 10, generator=g).requires_grad_(True)
    t, y = torch.randn(16, 10, generator=g) * 3, torch.randint(0, 10, (16,), generator=g)
    new = term_gradient_norms(CLKDLoss(reduction="batchmean")(s, t, y), s)
    old = term_gradient_norms(CLKDLoss(reduction="mean")(s, t, y), s)
    assert new["loss_ins"] == pytest.approx(10 * old["loss_ins"], rel=1e-5)  # × C
    assert new["loss_cla"] == pytest.approx(16 * old["loss_cla"], rel=1e-5)  # × B


def test_bad_inputs_raise():
    z = torch.ones(2, 2)
    with pytest.raises(ValueError, match="require grad"):
        term_gradient_norms({"loss": z.sum()}, z)
    zg = z.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="scalars"):
        term_gradient_norms({"loss": zg * 2}, zg)
