import pytest
import torch

from gp_maml import EpisodeSampler, FewShotDataset


def _dataset(classes=10, per=6):
    labels = torch.arange(classes).repeat_interleave(per)
    # each image encodes its class (pixel 0) and its index (pixel 1)
    images = torch.zeros(classes * per, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = labels.to(torch.uint8)
    images[:, 0, 0, 1] = torch.arange(classes * per).to(torch.uint8)
    return FewShotDataset(images, labels, [f"c{i}" for i in range(classes)])


def test_episode_shapes_labels_and_no_repeats():
    s = EpisodeSampler(_dataset(), ways=4, shots=2, queries=3, seed=0)
    for _ in range(20):
        e = s.sample()
        assert e.xs.shape == (8, 1, 4, 4) and e.xq.shape == (12, 1, 4, 4)
        assert e.xs.dtype == torch.float32 and 0 <= e.xs.min() and e.xs.max() <= 1
        assert e.ys.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert e.yq.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
        cls_s = (e.xs[:, 0, 0, 0] * 255).round().long()
        cls_q = (e.xq[:, 0, 0, 0] * 255).round().long()
        # one source class per episode label, distinct across labels
        src = [set(cls_s[e.ys == k].tolist()) | set(cls_q[e.yq == k].tolist()) for k in range(4)]
        assert all(len(c) == 1 for c in src) and len(set.union(*src)) == 4
        ids = torch.cat([e.xs[:, 0, 0, 1], e.xq[:, 0, 0, 1]])
        assert len(set(ids.tolist())) == 20  # no image twice


def test_same_seed_same_episodes_and_state_resume():
    a = EpisodeSampler(_dataset(), 3, 1, 2, seed=7)
    b = EpisodeSampler(_dataset(), 3, 1, 2, seed=7)
    for _ in range(3):
        ea, eb = a.sample_batch(2), b.sample_batch(2)
        assert torch.equal(ea.xs, eb.xs) and torch.equal(ea.xq, eb.xq)
    state = a.state_dict()
    nxt = a.sample()
    a.load_state_dict(state)
    assert torch.equal(a.sample().xq, nxt.xq)
    c = EpisodeSampler(_dataset(), 3, 1, 2, seed=8)
    assert not torch.equal(c.sample().xq, EpisodeSampler(_dataset(), 3, 1, 2, seed=7).sample().xq)


def test_rotation_classes():
    ds = _dataset(classes=2, per=4)
    ds.images[:, 0, 3, 3] = 255  # a corner marker shows the rotation
    rot = ds.with_rotations()
    assert rot.num_classes == 8
    s = EpisodeSampler(rot, ways=8, shots=1, queries=1, seed=0)
    e = s.sample()
    corners = {tuple(int(v) for v in (x[0, [0, 0, 3, 3], [0, 3, 0, 3]] > 0.5)) for x in e.xs}
    assert len(corners) >= 3  # the same base images appear rotated


def test_batch_shapes():
    e = EpisodeSampler(_dataset(), 5, 1, 2, seed=0).sample_batch(3)
    assert e.xs.shape == (3, 5, 1, 4, 4) and e.yq.shape == (3, 10)


def test_impossible_episodes():
    with pytest.raises(ValueError, match="11-way"):
        EpisodeSampler(_dataset(), 11, 1, 1)
    with pytest.raises(ValueError, match="shots \\+ queries = 4 \\+ 3 = 7"):
        EpisodeSampler(_dataset(), 2, 4, 3)
    with pytest.raises(ValueError, match="shots"):
        EpisodeSampler(_dataset(), 2, 0, 3)
    with pytest.raises(ValueError, match="uint8"):
        FewShotDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2).long(), ["a"])
