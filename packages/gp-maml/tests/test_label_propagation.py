import pytest
import torch

from gp_maml import (
    RelationNet,
    class_mass_normalize,
    gaussian_affinity,
    label_propagation,
    pick_pseudo_labels,
)


def _clusters(n_per: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n_per, 8, generator=g, dtype=torch.float64) * 0.3 + 3.0
    b = torch.randn(n_per, 8, generator=g, dtype=torch.float64) * 0.3 - 3.0
    # support: one per cluster, then the rest as queries
    z = torch.cat([a[:1], b[:1], a[1:], b[1:]])
    yq = torch.cat([torch.zeros(n_per - 1), torch.ones(n_per - 1)]).long()
    return z, torch.tensor([0, 1]), yq


def test_recovers_two_clusters():
    z, ys, yq = _clusters()
    sigma = torch.ones(z.shape[0], 1, dtype=z.dtype)
    f = label_propagation(z, ys, sigma, 2, topk=5)
    assert torch.equal(f[2:].argmax(-1), yq)


def test_equals_dense_direct_solve():
    z, ys, _ = _clusters(seed=1)
    sigma = torch.rand(z.shape[0], 1, dtype=z.dtype) + 0.5
    f = label_propagation(z, ys, sigma, 2, alpha=0.9, topk=4)
    # direct: dense pairwise distances, top-k union mask, normalised, explicit inverse
    n = z.shape[0]
    zs = z / sigma
    w = torch.zeros(n, n, dtype=z.dtype)
    for i in range(n):
        for j in range(n):
            if i != j:
                w[i, j] = torch.exp(-((zs[i] - zs[j]) ** 2).mean() / 2)
    keep = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        keep[i, w[i].argsort(descending=True)[:4]] = True
    w = w * (keep | keep.T)
    assert torch.allclose(w, gaussian_affinity(z, sigma, 4))
    d = torch.diag(w.sum(1) ** -0.5)
    y = torch.zeros(n, 2, dtype=z.dtype)
    y[0, 0] = y[1, 1] = 1
    expected = torch.linalg.inv(torch.eye(n, dtype=z.dtype) - 0.9 * d @ w @ d) @ y
    torch.testing.assert_close(f, expected)


def test_affinity_symmetric_and_sparse():
    z = torch.randn(12, 5)
    w = gaussian_affinity(z, torch.ones(12, 1), topk=3)
    torch.testing.assert_close(w, w.T)
    assert (w > 0).sum(1).min() >= 3 and (w > 0).sum(1).max() < 11
    assert torch.all(w.diagonal() == 0)


def test_relation_net_positive_and_grad_flows():
    net = RelationNet(16)
    z = torch.randn(7, 16, requires_grad=True)
    sigma = net(z)
    assert sigma.shape == (7, 1) and torch.all(sigma > 0)
    f = label_propagation(z, torch.tensor([0, 1]), sigma, 2)
    f.sum().backward()
    assert net.fc1.weight.grad is not None and z.grad is not None


def test_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        label_propagation(torch.randn(3, 2), torch.tensor([0]), torch.ones(3, 1), 1, alpha=1.0)


def test_class_mass_normalisation_undoes_the_dominant_class():
    # a big class-0 cluster next to a small class-1 cluster, dense graph, alpha = 0.99: the raw
    # argmax gives class 0 to every query (so the class-balanced pick takes nothing);
    # class mass normalisation recovers both clusters.
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 8, generator=g, dtype=torch.float64) * 0.5 + 1.0
    b = torch.randn(6, 8, generator=g, dtype=torch.float64) * 0.5 - 1.0
    z = torch.cat([a[:1], b[:1], a[1:], b[1:]])
    yq = torch.cat([torch.zeros(15), torch.ones(5)]).long()
    sigma = torch.ones(z.shape[0], 1, dtype=z.dtype)
    f = label_propagation(z, torch.tensor([0, 1]), sigma, 2, topk=20)[2:]
    assert torch.all(f.argmax(-1) == 0)
    assert pick_pseudo_labels(f, 2)[0].sum() == 0
    normed = class_mass_normalize(f)
    torch.testing.assert_close(normed.sum(0), torch.ones(2, dtype=f.dtype))
    assert torch.equal(normed.argmax(-1), yq)
    mask, labels = pick_pseudo_labels(normed, 2)
    assert torch.bincount(labels[mask.bool()], minlength=2).tolist() == [5, 5]
