import math

import pytest
import torch

from trg_kd.contextual import contextual_loss, token_self_similarity


def test_hand_example():
    teacher = torch.tensor([[[1.0], [0.0]]])  # one image, 2 tokens, D = 1
    student = torch.zeros(1, 2, 1)
    e = math.e
    a = [[e / (e + 1), 1 / (e + 1)], [0.5, 0.5]]
    assert token_self_similarity(teacher)[0].tolist() == [pytest.approx(r) for r in a]
    expected = ((a[0][0] - 0.5) ** 2 + (a[0][1] - 0.5) ** 2) / 4
    assert contextual_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_scaling_by_own_width():
    x = torch.ones(1, 2, 4)  # F F^T / sqrt(4) = 2 everywhere -> uniform rows
    assert torch.allclose(token_self_similarity(x), torch.full((1, 2, 2), 0.5))


def test_zero_when_equal_and_widths_may_differ():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(3, 9, 16, generator=gen)
    assert contextual_loss(t.clone(), t).item() == 0.0
    assert contextual_loss(torch.randn(3, 9, 5, generator=gen), t).item() > 0


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(2, 4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randn(2, 4, 5, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda x: contextual_loss(x, t), (s,))


def test_errors():
    with pytest.raises(ValueError, match=r"\(2, 4\) != teacher \(B, N\) = \(2, 9\)"):
        contextual_loss(torch.randn(2, 4, 3), torch.randn(2, 9, 3))
    with pytest.raises(ValueError, match="B, N, D"):
        contextual_loss(torch.randn(2, 4), torch.randn(2, 4))
