import math

import pytest
import torch
from torch.utils.data import TensorDataset

from lab_common.data.longtail import (
    dataset_targets,
    longtail_counts,
    longtail_indices,
    longtail_subset,
    shot_splits,
    split_accuracy,
)


def test_cifar100_lt_profile_counts():
    counts = longtail_counts(500, 100, 100)
    assert counts[0] == 500 and counts[-1] == 5 and len(counts) == 100
    assert sum(counts) == 10847  # CIFAR-100-LT (rho=100) training-set size of Cao et al.
    assert counts[50] == math.floor(500 * 100 ** (-50 / 99))


def test_fashion_mnist_like_profile_exact():
    assert longtail_counts(600, 10, 100) == [600, 359, 215, 129, 77, 46, 27, 16, 10, 6]
    assert longtail_counts(10, 3, 1) == [10, 10, 10]


def test_indices_give_exact_per_class_counts_and_are_seeded():
    targets = torch.arange(10).repeat_interleave(700)
    targets = targets[torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))]
    idx = longtail_indices(targets, 100, n_max=600, seed=1)
    assert torch.bincount(targets[idx], minlength=10).tolist() == longtail_counts(600, 10, 100)
    assert torch.equal(idx, longtail_indices(targets, 100, n_max=600, seed=1))
    assert not torch.equal(idx, longtail_indices(targets, 100, n_max=600, seed=2))
    assert torch.bincount(targets[longtail_indices(targets, 10)]).tolist()[0] == 700


def test_subset_of_any_dataset():
    y = torch.arange(4).repeat(50)
    ds = TensorDataset(torch.randn(200, 2), y)
    sub = longtail_subset(ds, 8, n_max=40)
    labels = torch.tensor([int(sub[i][1]) for i in range(len(sub))])
    assert torch.bincount(labels).tolist() == [40, 20, 10, 5]
    assert torch.equal(dataset_targets(sub).sort().values, labels.sort().values)


def test_shot_splits_and_accuracy():
    splits = shot_splits([600, 100, 20, 19, 150])
    assert splits == {"many": [0, 4], "medium": [1, 2], "few": [3]}
    targets = torch.tensor([0, 0, 1, 3, 3, 4])
    preds = torch.tensor([0, 1, 1, 3, 0, 4])
    acc = split_accuracy(preds, targets, splits)
    assert acc["all"] == pytest.approx(400 / 6)
    assert acc["many"] == pytest.approx(200 / 3)
    assert acc["medium"] == 100.0 and acc["few"] == 50.0
    assert math.isnan(split_accuracy(preds, targets, {"x": [7]})["x"])


def test_errors():
    with pytest.raises(ValueError, match="imbalance_ratio"):
        longtail_counts(10, 10, 0.5)
    with pytest.raises(ValueError, match="class 1 has 3 images but .* needs 5"):
        longtail_indices(torch.tensor([0] * 10 + [1] * 3), 2, n_max=10)
    with pytest.raises(ValueError, match="few=30 must be <= many=10"):
        shot_splits([1, 2], many=10, few=30)
