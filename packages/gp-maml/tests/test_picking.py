import torch

from gp_maml import pick_pseudo_labels


def test_class_balanced_most_confident():
    # class 0 predicted 4x, class 1 twice, class 2 three times -> k = 2 per class
    scores = torch.tensor(
        [
            [5.0, 0, 0],
            [2.0, 0, 0],
            [9.0, 0, 0],
            [1.0, 0, 0],
            [0, 3.0, 0],
            [0, 1.0, 0],
            [0, 0, 1.0],
            [0, 0, 4.0],
            [0, 0, 2.0],
        ]
    )
    mask, labels = pick_pseudo_labels(scores, 3)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 2]
    assert mask.tolist() == [1, 0, 1, 0, 1, 1, 0, 1, 1]
    picked = labels[mask.bool()]
    assert torch.bincount(picked, minlength=3).tolist() == [2, 2, 2]


def test_falls_back_when_a_class_is_missing():
    scores = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [1.0, 0, 0]])
    mask, labels = pick_pseudo_labels(scores, 3)
    assert mask.sum() == 0
    assert labels.tolist() == [0, 1, 0]


def test_vmap_matches_loop():
    scores = torch.randn(4, 15, 5)
    v_mask, v_lab = torch.func.vmap(pick_pseudo_labels, in_dims=(0, None))(scores, 5)
    for b in range(4):
        m, lab = pick_pseudo_labels(scores[b], 5)
        assert torch.equal(m, v_mask[b]) and torch.equal(lab, v_lab[b])
