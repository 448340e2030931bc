"""class_balanced_split: a partition, class-balanced, reproducible, with clear errors."""

import pytest
import torch

from lab_common.data import class_balanced_split


def test_split_is_a_class_balanced_partition_fixed_by_the_seed():
    labels = torch.arange(10).repeat_interleave(
        torch.tensor([50, 40, 30, 20, 10, 50, 40, 30, 20, 10])
    )
    train, val = class_balanced_split(labels, 0.1, seed=0)
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(len(labels)))
    counts = torch.bincount(labels[val], minlength=10)
    assert counts.tolist() == [5, 4, 3, 2, 1, 5, 4, 3, 2, 1]
    again = class_balanced_split(labels.tolist(), 0.1, seed=0)
    assert torch.equal(again[1], val)
    other = class_balanced_split(labels, 0.1, seed=1)[1]
    assert not torch.equal(other, val)
    assert torch.equal(torch.bincount(labels[other], minlength=10), counts)


def test_every_class_keeps_a_training_example():
    labels = torch.tensor([0, 0, 1])
    train, val = class_balanced_split(labels, 0.9)
    assert set(labels[train].tolist()) == {0, 1}


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_fraction_raises(fraction):
    with pytest.raises(ValueError, match="fraction must be in"):
        class_balanced_split(torch.tensor([0, 1]), fraction)


def test_float_labels_raise():
    with pytest.raises(ValueError, match="integer classes"):
        class_balanced_split(torch.tensor([0.0, 1.0]), 0.5)
