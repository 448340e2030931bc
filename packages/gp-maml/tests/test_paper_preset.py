"""``preset="paper"``: each of the paper's code's rules against a tiny hand-computed case."""

import dataclasses
import math

import pytest
import torch

from gp_maml import (
    Conv4,
    FewShotDataset,
    RelationNet,
    TPNRelationNet,
    class_mass_normalize,
    create_learner,
    gaussian_affinity,
    label_propagation,
    pick_pseudo_labels,
)
from gp_maml.train import TrainConfig, build_learner, train


def test_self_loops_keep_the_diagonal_and_count_among_the_top_k():
    z, sigma = torch.tensor([[0.0], [1.0], [3.0]]), torch.ones(3, 1)
    e01, e02, e12 = math.exp(-0.5), math.exp(-4.5), math.exp(-2.0)
    off = torch.tensor([[0, e01, e02], [e01, 0, e12], [e02, e12, 0]])
    torch.testing.assert_close(gaussian_affinity(z, sigma), off)
    torch.testing.assert_close(gaussian_affinity(z, sigma, self_loops=True), off + torch.eye(3))
    # top-1: without self-loops every node keeps its nearest other node (edges 0-1 and 1-2);
    # with them the nearest node is itself, so only the self-loops remain
    top1 = torch.tensor([[0, e01, 0], [e01, 0, e12], [0, e12, 0]])
    torch.testing.assert_close(gaussian_affinity(z, sigma, topk=1), top1)
    torch.testing.assert_close(gaussian_affinity(z, sigma, topk=1, self_loops=True), torch.eye(3))


def test_label_propagation_with_self_loops_matches_the_closed_form():
    # one support (class 0) and one query at distance 1: W = [[s, e], [e, s]], s = 0 or 1
    z, ys, alpha, e = torch.tensor([[0.0], [1.0]]), torch.tensor([0]), 0.5, math.exp(-0.5)
    plain = label_propagation(z, ys, torch.ones(2, 1), 2, alpha=alpha)
    expected = torch.tensor([[1.0, 0.0], [alpha, 0.0]]) / (1 - alpha**2)
    torch.testing.assert_close(plain, expected)
    a, b = alpha / (1 + e), alpha * e / (1 + e)  # alpha * S with S = W / (1 + e)
    det = (1 - a) ** 2 - b**2
    looped = label_propagation(z, ys, torch.ones(2, 1), 2, alpha=alpha, self_loops=True)
    torch.testing.assert_close(looped, torch.tensor([[(1 - a) / det, 0.0], [b / det, 0.0]]))


def test_raw_scores_pick_differently_from_class_mass_normalised_ones():
    raw = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.5]])
    # raw argmax: class 0 for all four, class 1 for none -> k = 0, nothing picked
    mask, labels = pick_pseudo_labels(raw, 2)
    assert mask.tolist() == [0, 0, 0, 0] and labels.tolist() == [0, 0, 0, 0]
    # normalised columns (/3.0 and /1.1): 0.30 0.09 | 0.27 0.18 | 0.23 0.27 | 0.20 0.45
    mask, labels = pick_pseudo_labels(class_mass_normalize(raw), 2)
    assert mask.tolist() == [1, 1, 1, 1] and labels.tolist() == [0, 0, 1, 1]


def test_tpn_relation_net_shapes_follow_tpn():
    net = TPNRelationNet(64 * 5 * 5, 64)  # miniImageNet Conv-4: a 64 x 5 x 5 map
    assert net.fc1.in_features == 4  # 5 -> 3 -> 2 after the two padded poolings, as in TPN
    assert [m.out_channels for m in (net.block1[0], net.block2[0])] == [64, 1]
    z = torch.randn(6, 64 * 25, requires_grad=True)
    sigma = net(z)
    assert sigma.shape == (6, 1)
    sigma.sum().backward()
    assert z.grad is not None and all(p.grad is not None for p in net.parameters())
    assert TPNRelationNet(64, 64)(torch.randn(3, 64)).shape == (3, 1)  # Omniglot: 1 x 1 map
    with pytest.raises(ValueError, match="channels x side x side"):
        TPNRelationNet(100, 64)


def _task(ways=3, shots=1, queries=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(2, ways * shots, 1, 28, 28, generator=g)
    xq = torch.rand(2, ways * queries, 1, 28, 28, generator=g)
    ys = torch.arange(ways).repeat_interleave(shots).expand(2, -1)
    yq = torch.arange(ways).repeat_interleave(queries).expand(2, -1)
    return xs, ys, xq, yq


def _paper(method, **kw):
    torch.manual_seed(0)
    return create_learner(method, Conv4(num_classes=3, hidden=8), preset="paper", **kw)


def test_paper_preset_sets_the_rules():
    for method in ("gp-maml", "gp-boil", "gp-anil"):
        learner = _paper(method)
        assert (learner.self_loops, learner.class_mass_norm, learner.lp_loss_weight) == (
            True,
            False,
            1.0,
        )
        assert isinstance(learner.relation_net, TPNRelationNet)
        assert (learner.lp_encoder is not None) == (method == "gp-anil")
        assert learner.pick_pool == 75  # the code's pic_num, at meta-training
    base = _paper("maml")  # nothing changes for a base learner (no graph at all)
    assert base.relation_net is None and base.lp_encoder is None and base.class_mass_norm
    assert _paper("gp-maml", lp_loss_weight=0.5).lp_loss_weight == 0.5  # explicit wins
    # the default preset's weight is this package's (a deviation), the same in learner and config
    default = create_learner("gp-maml", Conv4(num_classes=3, hidden=8))
    assert default.lp_loss_weight == TrainConfig().lp_loss_weight == 0.01
    with pytest.raises(ValueError, match="unknown preset"):
        create_learner("gp-maml", Conv4(num_classes=3), preset="tpn")


def test_each_paper_rule_can_be_switched_on_alone():
    data = FewShotDataset(
        torch.zeros(6, 1, 28, 28, dtype=torch.uint8), torch.arange(6), list("abcdef")
    )
    plain = build_learner(TrainConfig(method="gp-anil", backbone="conv4-32"), data)
    assert plain.self_loops and plain.lp_encoder is None  # the paper's graph is the default
    assert type(plain.relation_net) is RelationNet
    assert not build_learner(TrainConfig(method="gp-anil", self_loops=False), data).self_loops
    for rule, check in (
        ({"relation_net": "tpn"}, lambda m: isinstance(m.relation_net, TPNRelationNet)),
        ({"separate_lp_encoder": True}, lambda m: m.lp_encoder is not None),
    ):
        cfg = TrainConfig(method="gp-anil", backbone="conv4-32", **rule)
        learner = build_learner(cfg, data)
        assert check(learner), rule
        assert learner.class_mass_norm  # the other rules stay the package's
    paper = TrainConfig(method="gp-anil", preset="paper")
    assert (paper.self_loops, paper.relation_net, paper.separate_lp_encoder) == (True, "tpn", True)
    assert not TrainConfig(method="gp-maml", preset="paper").separate_lp_encoder
    base = TrainConfig(method="maml", preset="paper")  # nothing changes for base learners
    assert (base.relation_net, base.separate_lp_encoder) == ("mlp", False)
    with pytest.raises(ValueError, match="separate_lp_encoder applies to GP methods only"):
        TrainConfig(method="anil", separate_lp_encoder=True)
    with pytest.raises(ValueError, match="unknown relation_net 'conv'"):
        TrainConfig(relation_net="conv")


def test_gp_anil_encoder_is_trained_by_the_label_propagation_loss_only():
    grads = {}
    for weight in (1.0, 0.0):
        learner = _paper("gp-anil", lp_loss_weight=weight, first_order=True)
        learner(*_task()).loss.backward()
        grads[weight] = {n: p.grad for n, p in learner.named_parameters()}
    encoder = [n for n in grads[1.0] if n.startswith("lp_encoder.")]
    assert encoder and all(grads[1.0][n].abs().sum() > 0 for n in encoder)
    assert all(grads[0.0][n] is None for n in encoder)  # the query loss never reaches it
    shared = [n for n in grads[1.0] if n.startswith("model.")]
    for n in shared:  # and the label-propagation loss never reaches the shared network
        torch.testing.assert_close(grads[1.0][n], grads[0.0][n])
    # the vmap path gives the same loss
    loop = _paper("gp-anil", first_order=True, task_batching="loop")(*_task()).loss
    vmap = _paper("gp-anil", first_order=True, task_batching="vmap")(*_task()).loss
    torch.testing.assert_close(loop, vmap, rtol=1e-4, atol=1e-5)


def test_paper_config_and_final_checkpoint(shared_omniglot, tmp_path):
    cfg = TrainConfig(preset="paper")
    assert (cfg.lp_loss_weight, cfg.class_mass_norm, cfg.lr, cfg.gamma) == (1.0, False, 1e-3, 0.1)
    assert (cfg.milestones, cfg.iterations) == ((10000, 20000), 30000)
    assert (cfg.pick_pool, cfg.moment_restart) == (75, 100)  # pic_num; Adam re-created per 100
    assert TrainConfig(preset="paper", method="maml").pick_pool is None  # GP methods only
    with pytest.raises(ValueError, match="preset='paper' sets moment_restart=100, got 50"):
        TrainConfig(preset="paper", moment_restart=50)
    with pytest.raises(ValueError, match="preset='paper' sets lp_loss_weight=1.0, got 0.5"):
        TrainConfig(preset="paper", lp_loss_weight=0.5)
    assert TrainConfig.from_dict(dataclasses.asdict(cfg)) == cfg
    run = dataclasses.replace(
        cfg,
        method="gp-anil",
        backbone="conv4-32",
        data_root=str(shared_omniglot / "images_background_small1.zip"),
        out=str(tmp_path / "paper"),
        ways=2,
        queries=2,
        batch_size=1,
        iterations=2,
        val_every=1,
        val_tasks=2,
        first_order=True,
        progress=False,
        threads=1,
    )
    result = train(run)
    assert result["best_val_top1"] >= 0  # validated ...
    assert not (tmp_path / "paper" / "best.pt").exists()  # ... but the final checkpoint is it
    state = torch.load(tmp_path / "paper" / "last.pt", weights_only=False)
    assert any(k.startswith("lp_encoder.") for k in state["learner"])
    assert any(k.startswith("relation_net.block1") for k in state["learner"])
