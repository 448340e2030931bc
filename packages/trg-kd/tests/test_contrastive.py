import itertools
import math

import pytest
import torch

from trg_kd.contrastive import TemperatureSchedule, global_relation_loss


def test_hand_example():
    x = torch.eye(2)
    got = global_relation_loss(x, x, temperature=1.0)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    got = global_relation_loss(x, x, temperature=0.5)
    assert got.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_minimal_when_identical_and_well_separated():
    t = torch.eye(16)  # orthonormal teacher tokens: perfectly separated
    best = global_relation_loss(t.clone(), t, temperature=0.1).item()
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        s = t + 0.3 * torch.randn(16, 16, generator=gen)
        assert global_relation_loss(s, t, temperature=0.1).item() > best
    assert global_relation_loss(t[torch.randperm(16, generator=gen)], t, 0.1).item() > best
    # for orthonormal tokens the optimum is the closed form log(1 + (M-1) e^{-1/tau})
    assert best == pytest.approx(math.log(1 + 15 * math.exp(-10)), rel=1e-4)


def test_query_index_selects_positive():
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(10, 4, generator=gen)
    q = torch.tensor([3, 7])
    full = torch.nn.functional.cross_entropy(
        torch.nn.functional.normalize(t[q], dim=1)
        @ torch.nn.functional.normalize(t, dim=1).T
        / 0.2,
        q,
    )
    got = global_relation_loss(t[q], t, 0.2, query_index=q)
    torch.testing.assert_close(got, full)


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    s = torch.randn(6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    t = torch.randn(6, 3, dtype=torch.float64, generator=gen)
    assert torch.autograd.gradcheck(lambda x: global_relation_loss(x, t, 0.3), (s,))


def test_errors():
    with pytest.raises(ValueError, match="width 3 != teacher width 4"):
        global_relation_loss(torch.randn(5, 3), torch.randn(5, 4), 1.0)
    with pytest.raises(ValueError, match="temperature"):
        global_relation_loss(torch.randn(5, 3), torch.randn(5, 3), 0.0)
    with pytest.raises(ValueError, match="query_index"):
        global_relation_loss(torch.randn(2, 3), torch.randn(5, 3), 1.0)


@pytest.mark.parametrize("kind", ["cosine", "linear", "exp"])
def test_schedule_endpoints_and_monotone(kind):
    sched = TemperatureSchedule(start=1.0, end=0.1, kind=kind)
    assert sched(0.0) == pytest.approx(1.0)
    assert sched(1.0) == pytest.approx(0.1)
    values = [sched(p / 10) for p in range(11)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_schedule_midpoints():
    assert TemperatureSchedule(1.0, 0.2, "cosine")(0.5) == pytest.approx(0.6)
    assert TemperatureSchedule(1.0, 0.2, "linear")(0.25) == pytest.approx(0.8)
    assert TemperatureSchedule(1.0, 0.01, "exp")(0.5) == pytest.approx(0.1)
    assert TemperatureSchedule(0.5, 0.1, "constant")(0.9) == 0.5


def test_schedule_errors():
    with pytest.raises(ValueError, match="kind"):
        TemperatureSchedule(kind="step")
    with pytest.raises(ValueError, match="> 0"):
        TemperatureSchedule(start=0.0)
    with pytest.raises(ValueError, match="progress"):
        TemperatureSchedule()(1.5)
