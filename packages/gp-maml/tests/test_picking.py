import pytest
import torch

from gp_maml import (
    create_backbone,
    create_learner,
    pick_balanced_or_confident,
    pick_confident,
    pick_pseudo_labels,
)


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


def test_fallback_is_balanced_where_that_picks_and_confident_where_it_finds_nothing():
    # task 0: every class predicted once -> k = 1, the balanced pick (query 2's share 0.6 too)
    # task 1: class 1 predicted by nobody -> k = 0, the queries with share >= 0.8 instead
    scores = torch.tensor(
        [
            [[0.9, 0.1, 0], [0.1, 0.9, 0], [0.2, 0.2, 0.6]],
            [[1.0, 0, 0], [0.9, 0.1, 0], [0.3, 0, 0.7]],
        ]
    )
    mask0, labels0 = pick_balanced_or_confident(scores[0], 3, 0.8)
    assert mask0.tolist() == [1, 1, 1] and labels0.tolist() == [0, 1, 2]
    assert torch.equal(mask0, pick_pseudo_labels(scores[0], 3)[0])
    mask1, labels1 = pick_balanced_or_confident(scores[1], 3, 0.8)
    assert pick_pseudo_labels(scores[1], 3)[0].sum() == 0
    assert mask1.tolist() == [1, 1, 0] and labels1.tolist() == [0, 0, 2]
    # vmap-able: the rule is chosen per task
    v_mask, v_labels = torch.func.vmap(pick_balanced_or_confident, in_dims=(0, None, None))(
        scores, 3, 0.8
    )
    assert torch.equal(v_mask, torch.stack([mask0, mask1]))
    assert torch.equal(v_labels, torch.stack([labels0, labels1]))


def test_learner_with_a_fallback_picks_at_one_query_per_class():
    # one query per class, all three copies of class 0's image: raw scores predict class 0 for
    # all of them, classes 1 and 2 by nobody, so the balanced rule picks nothing (θ′ kept)
    torch.manual_seed(0)
    model = create_backbone("conv4-32", in_chans=1, num_classes=3, img_size=28)
    xs = torch.randn(4, 3, 1, 28, 28)
    xq = xs[:, [0, 0, 0]] + 0.01 * torch.randn(4, 3, 1, 28, 28)
    ys = yq = torch.tensor([[0, 1, 2]] * 4)
    rules = dict(lp_topk=3, class_mass_norm=False)
    balanced = create_learner("gp-maml", model, **rules).eval()
    fallback = create_learner("gp-maml", model, **rules, fallback_threshold=1 / 3).eval()
    with torch.no_grad():
        kept, retrained = balanced(xs, ys, xq, yq), fallback(xs, ys, xq, yq)
    assert kept.picked.tolist() == [0.0] * 4
    # a share of 1/C is met by every query: the fallback picks all 3 and re-trains on them
    assert retrained.picked.tolist() == [3.0] * 4
    assert not torch.allclose(kept.logits, retrained.logits)
    with pytest.raises(ValueError, match="use one of them, not both"):
        create_learner("gp-maml", model, pick_threshold=0.5, fallback_threshold=0.5)
    with pytest.raises(ValueError, match=r"fallback_threshold must be in \(0, 1\]"):
        create_learner("gp-maml", model, fallback_threshold=1.5)


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


def test_pool_picks_class_balanced_among_the_most_confident_queries_only():
    # confidences (softmax of the scores) fall with the row; labels 0 0 1 1 0 1
    scores = torch.tensor([[9.0, 0.0], [8.0, 0.0], [0.0, 7.0], [0.0, 6.0], [1.0, 0.0], [0.0, 0.5]])
    full, labels = pick_pseudo_labels(scores, 2)
    assert full.tolist() == [1, 1, 1, 1, 1, 1]  # every query: 3 of each class, k = 3
    pooled, same = pick_pseudo_labels(scores, 2, pool=3)  # candidates: rows 0, 1, 2
    assert torch.equal(labels, same)
    assert pooled.tolist() == [1, 0, 1, 0, 0, 0]  # k = 1 (class 1 has one candidate)
    assert pick_pseudo_labels(scores, 2, pool=2)[0].sum() == 0  # only class 0 in the pool
    v_mask, _ = torch.func.vmap(pick_pseudo_labels, in_dims=(0, None, None))(
        scores.expand(3, -1, -1), 2, 3
    )
    assert torch.equal(v_mask[1], pooled)


def test_learner_uses_the_pool_at_meta_training_only():
    torch.manual_seed(0)
    model = create_backbone("conv4-32", in_chans=1, num_classes=3, img_size=28)
    learner = create_learner("gp-maml", model, pick_pool=2, first_order=True)
    xs, ys = torch.randn(3, 1, 28, 28), torch.arange(3)
    xq, yq = torch.randn(12, 1, 28, 28), torch.arange(3).repeat(4)
    learner.train()
    assert learner(xs[None], ys[None], xq[None], yq[None]).picked.item() <= 2
    with pytest.raises(ValueError, match="pick_pool must be >= 1"):
        create_learner("gp-maml", model, pick_pool=0)
    with pytest.raises(ValueError, match="pick_pool applies to GP methods only"):
        create_learner("maml", model, pick_pool=75)
