"""GP-MAML with a small LaViT body as its backbone, a few meta-steps on Omniglot small1."""

from __future__ import annotations

import torch
from torch import nn

from lab_common import seed_everything


def test_gp_maml_meta_steps_with_lavit_body(omniglot_small1, small_lavit):
    from gp_maml import EpisodeSampler, RelationNet, create_learner

    seed_everything(0)
    body = nn.Sequential(nn.ZeroPad2d(2), small_lavit(num_classes=0))  # 28x28 -> 32x32
    dim = body[1].num_features
    model = nn.Sequential()
    model.add_module("body", body)
    model.add_module("head", nn.Linear(dim, 5))
    learner = create_learner(
        "gp-maml", model, inner_lr=0.1, first_order=True, relation_net=RelationNet(dim)
    )
    sampler = EpisodeSampler(omniglot_small1, ways=5, shots=1, queries=5, seed=0)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    before = {k: v.detach().clone() for k, v in learner.named_parameters()}
    losses, picked = [], []
    for _ in range(3):
        ep = sampler.sample_batch(2)
        out = learner(ep.xs, ep.ys, ep.xq, ep.yq)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
        picked.append(out.picked)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert out.logits.shape == (2, 25, 5)
    changed = [k for k, v in learner.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("relation_net") for k in changed)
    assert any(".stages.3." in k for k in changed), "LaViT's LA stage received no update"
    assert torch.cat(picked).ge(0).all()
