import numpy as np
import pytest
import scipy.stats
import torch

from lab_common import mean_confidence_interval, topk_accuracy


def test_topk_known_case():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    target = torch.tensor([1, 1, 0, 0])
    top1, top2 = topk_accuracy(logits, target, topk=(1, 2))
    assert top1 == pytest.approx(50.0)  # rows 0 and 3 right
    assert top2 == pytest.approx(75.0)  # row 1 also has label 1 in its top 2


def test_topk_errors():
    with pytest.raises(ValueError, match="classes"):
        topk_accuracy(torch.randn(2, 3), torch.tensor([0, 1]), topk=(5,))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        topk_accuracy(torch.randn(2, 3), torch.tensor([0, 1, 2]))


def test_ci_known_case():
    # mean 3, sample std sqrt(2.5), sem sqrt(0.5), t_{0.975,4} = 2.776445
    mean, h = mean_confidence_interval([1, 2, 3, 4, 5])
    assert mean == pytest.approx(3.0)
    assert h == pytest.approx(2.776445105 * np.sqrt(0.5), rel=1e-6)


def test_ci_matches_scipy_interval_and_confidence():
    vals = np.random.default_rng(0).normal(size=50)
    mean, h = mean_confidence_interval(torch.tensor(vals), confidence=0.99)
    lo, hi = scipy.stats.t.interval(
        0.99, len(vals) - 1, loc=vals.mean(), scale=scipy.stats.sem(vals)
    )
    assert mean - h == pytest.approx(lo)
    assert mean + h == pytest.approx(hi)


def test_ci_edge_cases():
    assert mean_confidence_interval([4.0]) == (4.0, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_confidence_interval([])
    with pytest.raises(ValueError, match="confidence"):
        mean_confidence_interval([1.0, 2.0], confidence=1.5)
