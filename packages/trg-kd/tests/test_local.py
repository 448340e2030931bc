import math

import pytest
import torch

from trg_kd.local import local_preserving_loss


def _softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_hand_example():
    t = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    s = torch.tensor([[0.0], [2.0], [3.0], [7.0]])
    # teacher 2-NN: 0->(1,2) 1->(0,2) 2->(1,0) 3->(2,1); sigma = 1: w = exp(-d^2 / 2)
    tpos, spos = [0, 1, 3, 7], [0, 2, 3, 7]
    nbrs = [[1, 2], [0, 2], [1, 0], [2, 1]]
    expected = 0.0
    for i, nb in enumerate(nbrs):
        p = _softmax([math.exp(-((tpos[i] - tpos[j]) ** 2) / 2) for j in nb])
        q = _softmax([math.exp(-((spos[i] - spos[j]) ** 2) / 2) for j in nb])
        expected += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    got = local_preserving_loss(s, t, k=2, sigma=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    mean = local_preserving_loss(s, t, k=2, sigma=1.0, reduction="mean")
    assert mean.item() == pytest.approx(expected / 4, rel=1e-5)


def test_zero_when_tokens_equal_and_positive_otherwise():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(30, 8, generator=gen)
    assert local_preserving_loss(t.clone(), t, k=5).item() == pytest.approx(0.0, abs=1e-7)
    s = torch.randn(30, 8, generator=gen)
    assert local_preserving_loss(s, t, k=5).item() > 1e-4


def test_gradcheck_float64_and_teacher_detached():
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(10, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randn(10, 4, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: local_preserving_loss(x, t, k=3), (s,))
    local_preserving_loss(s, t, k=3).backward()
    assert t.grad is None


def test_errors():
    with pytest.raises(ValueError, match="5 nodes but teacher has 4"):
        local_preserving_loss(torch.randn(5, 2), torch.randn(4, 2), k=1)
    with pytest.raises(ValueError, match="reduction"):
        local_preserving_loss(torch.randn(5, 2), torch.randn(5, 2), k=1, reduction="max")
    with pytest.raises(ValueError, match="k=5"):
        local_preserving_loss(torch.randn(5, 2), torch.randn(5, 2), k=5)
