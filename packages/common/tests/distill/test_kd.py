"""The one Hinton-KD baseline (kd_loss / KDLoss) and its softened KL, against closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from lab_common.distill import KDLoss, kd_loss, softened_kl_div
from lab_common.distill.kd import KD_DEFAULTS


def test_matches_the_definition_and_is_zero_for_equal_logits():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    temp = 3.0
    p_t, p_s = (t / temp).softmax(1), (s / temp).softmax(1)
    expected = temp**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    torch.testing.assert_close(softened_kl_div(s, t, temp), expected)
    assert softened_kl_div(t, t, temp).abs() < 1e-6


def test_hand_example_and_temperature_squared_scaling():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # p_t = (0.75, 0.25)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert softened_kl_div(s, t, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # logits scaled by T give the same distributions, times T²
    assert softened_kl_div(2 * s, 2 * t, temperature=2.0).item() == pytest.approx(
        4 * expected, rel=1e-6
    )


def test_teacher_gets_no_gradient_and_bad_input_is_named():
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    softened_kl_div(s, t).backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match=r"same \(B, C\) shape"):
        softened_kl_div(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match="temperature"):
        softened_kl_div(torch.randn(4, 3), torch.randn(4, 3), temperature=0.0)


def test_uniform_teacher_against_one_hot_student_value():
    # KL(uniform || near one-hot) = 0.5 log .5 + 0.5 (log .5 + 100)
    s = torch.tensor([[100.0, 0.0]])
    t = torch.zeros(1, 2)
    value = softened_kl_div(s, t, temperature=1.0)
    assert math.isclose(value.item(), 50.0 - math.log(2), rel_tol=1e-4)


def test_low_precision_is_upcast_and_float64_kept():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    assert softened_kl_div(s.half(), t.half()).dtype == torch.float32
    assert softened_kl_div(s.double(), t.double()).dtype == torch.float64
    y = torch.tensor([0, 1, 2])
    out = kd_loss(s.bfloat16(), t.bfloat16(), y, ce_weight=1.0, kd_weight=1.0, temperature=4.0)
    assert {v.dtype for v in out.values()} == {torch.float32}


def test_kd_loss_closed_form_two_classes():
    # student uniform; teacher logits/T = (ln 3, 0) -> softmax (.75, .25)
    temperature = 2.0
    s = torch.zeros(3, 2)
    t = torch.tensor([[2 * math.log(3.0), 0.0]] * 3)
    y = torch.tensor([0, 1, 0])
    out = kd_loss(s, t, y, ce_weight=0.5, kd_weight=9.0, temperature=temperature)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert out["loss_kd"].item() == pytest.approx(9.0 * temperature**2 * kl)
    assert out["loss_ce"].item() == pytest.approx(0.5 * math.log(2.0))


def test_kd_loss_weights_scale_each_term_and_batch_order_is_irrelevant():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    y = torch.randint(0, 7, (5,), generator=g)
    unit = kd_loss(s, t, y, ce_weight=1.0, kd_weight=1.0, temperature=3.0)
    torch.testing.assert_close(unit["loss_kd"], softened_kl_div(s, t, 3.0))
    torch.testing.assert_close(unit["loss_ce"], F.cross_entropy(s, y))
    weighted = kd_loss(s, t, y, ce_weight=0.1, kd_weight=0.9, temperature=3.0)
    torch.testing.assert_close(weighted["loss_ce"], 0.1 * unit["loss_ce"])
    torch.testing.assert_close(weighted["loss_kd"], 0.9 * unit["loss_kd"])
    perm = torch.randperm(5, generator=g)
    permuted = kd_loss(s[perm], t[perm], y[perm], ce_weight=0.1, kd_weight=0.9, temperature=3.0)
    torch.testing.assert_close(permuted["loss_kd"], weighted["loss_kd"])


def test_kd_loss_gradcheck_and_module_passes_its_weights():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1])
    weights = {"ce_weight": 0.3, "kd_weight": 2.0, "temperature": 2.0}
    assert torch.autograd.gradcheck(lambda x: sum(kd_loss(x, t, y, **weights).values()), (s,))
    loss = KDLoss(**weights)
    module_out, function_out = loss(s, t, y), kd_loss(s, t, y, **weights)
    assert module_out.keys() == function_out.keys() == {"loss_ce", "loss_kd"}
    for key in module_out:
        torch.testing.assert_close(module_out[key], function_out[key])
    assert "kd_weight=2.0" in repr(loss)


def test_kd_bad_weights_targets_and_shapes_are_named():
    with pytest.raises(ValueError, match="temperature must be > 0, got -1.0"):
        KDLoss(ce_weight=1.0, kd_weight=1.0, temperature=-1.0)
    with pytest.raises(ValueError, match="kd_weight=-1"):
        KDLoss(ce_weight=1.0, kd_weight=-1, temperature=4.0)
    s, t = torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"integer class indices of shape \(2,\)"):
        kd_loss(s, t, torch.zeros(2), ce_weight=1.0, kd_weight=1.0, temperature=4.0)
    with pytest.raises(ValueError, match=r"student logits \(2, 4\) and teacher logits \(2, 5\)"):
        kd_loss(
            s, torch.randn(2, 5), torch.zeros(2).long(), ce_weight=1, kd_weight=1, temperature=4
        )


def test_default_module_is_kd_defaults():
    assert KD_DEFAULTS == {"ce_weight": 1.0, "kd_weight": 1.0, "temperature": 4.0}
    loss = KDLoss()
    assert (loss.ce_weight, loss.kd_weight, loss.temperature) == (1.0, 1.0, 4.0)
    assert KDLoss(temperature=2.0).kd_weight == 1.0
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    y = torch.tensor([0, 1, 4, 2])
    out, expected = loss(s, t, y), kd_loss(s, t, y, **KD_DEFAULTS)
    for key in expected:
        torch.testing.assert_close(out[key], expected[key])
