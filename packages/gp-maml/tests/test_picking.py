import pytest
import torch

from gp_maml import create_backbone, create_learner, pick_confident, pick_pseudo_labels


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


def test_confidence_threshold_picks_by_share_of_mass():
    # top shares: 0.9, 0.5, 0 (no mass: never picked), 0.75
    scores = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.0, 0.0], [0.2, 0.6]])
    mask, labels = pick_confident(scores, 0.7)
    assert mask.tolist() == [1, 0, 0, 1]
    assert labels[[0, 3]].tolist() == [0, 1]
    assert pick_confident(scores, 0.5)[0].tolist() == [1, 1, 0, 1]  # ">=": the tie is in
    # scale-free: the same pick for scores 100x larger
    assert torch.equal(pick_confident(100 * scores, 0.7)[0], mask)


def test_threshold_picks_where_the_balanced_rule_finds_k_zero():
    # one query per class, class 1 predicted by nobody: the balanced rule picks nothing
    scores = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 0.2, 0.8]])
    assert pick_pseudo_labels(scores, 3)[0].sum() == 0
    mask, labels = pick_confident(scores, 0.8)
    assert mask.tolist() == [1, 1, 1] and labels.tolist() == [0, 0, 2]
    v_mask, _ = torch.func.vmap(pick_confident, in_dims=(0, None))(scores[None], 0.8)
    assert torch.equal(v_mask[0], mask)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_threshold_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match=r"pick_threshold must be in \(0, 1\]"):
        pick_confident(torch.ones(2, 2), bad)
    model = create_backbone("conv4-32", in_chans=1, num_classes=2, img_size=28)
    with pytest.raises(ValueError, match="pick_threshold"):
        create_learner("gp-maml", model, pick_threshold=bad)


def test_learner_with_a_low_threshold_picks_every_query():
    # a share <= 1/C is met by every query with mass: all 2 x 3 queries of each task picked
    torch.manual_seed(0)
    model = create_backbone("conv4-32", in_chans=1, num_classes=2, img_size=28)
    learner = create_learner("gp-maml", model, lp_topk=3, pick_threshold=0.5).eval()
    xs, xq = torch.randn(2, 2, 1, 28, 28), torch.randn(2, 6, 1, 28, 28)
    ys, yq = torch.tensor([[0, 1]] * 2), torch.tensor([[0, 0, 0, 1, 1, 1]] * 2)
    with torch.no_grad():
        assert learner(xs, ys, xq, yq).picked.tolist() == [6.0, 6.0]
