import math

import pytest
import torch

from lab_common import softened_kl_div


def test_matches_the_definition_and_is_zero_for_equal_logits():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    temp = 3.0
    p_t, p_s = (t / temp).softmax(1), (s / temp).softmax(1)
    expected = temp**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    torch.testing.assert_close(softened_kl_div(s, t, temp), expected)
    assert softened_kl_div(t, t, temp).abs() < 1e-6


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
    # KL(uniform || near one-hot) grows like log of the student's tiny probabilities
    s = torch.tensor([[100.0, 0.0]])
    t = torch.zeros(1, 2)
    value = softened_kl_div(s, t, temperature=1.0)
    assert math.isclose(
        value.item(), 50.0 - math.log(2), rel_tol=1e-4
    )  # 0.5 log .5 + 0.5 (log .5 + 100)


def test_low_precision_is_upcast_and_float64_kept():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    assert softened_kl_div(s.half(), t.half()).dtype == torch.float32
    assert softened_kl_div(s.double(), t.double()).dtype == torch.float64
