import math

import pytest
import torch

from trg_kd.graph import gaussian_kernel, knn_graph


def test_knn_hand_example():
    nodes = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    g = knn_graph(nodes, k=2)
    assert g.index.tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    assert g.sq_dist.tolist() == [[1.0, 9.0], [1.0, 4.0], [4.0, 9.0], [16.0, 36.0]]


def test_knn_never_contains_self_even_when_all_distances_tie():
    nodes = torch.zeros(5, 3)
    g = knn_graph(nodes, k=4)
    for i, row in enumerate(g.index.tolist()):
        assert i not in row and len(set(row)) == 4


def test_gaussian_kernel_hand_example():
    w = gaussian_kernel(torch.tensor([0.0, 2.0]), sigma=0.5)
    assert w.tolist() == pytest.approx([1.0, math.exp(-2.0)])


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 299, 10_000])
def test_chunked_equals_unchunked(chunk_size):
    gen = torch.Generator().manual_seed(0)
    nodes = torch.randn(300, 16, generator=gen)
    full = knn_graph(nodes, k=10, chunk_size=nodes.shape[0])
    chunked = knn_graph(nodes, k=10, chunk_size=chunk_size)
    assert torch.equal(full.index, chunked.index)
    assert torch.equal(full.sq_dist, chunked.sq_dist)


def test_knn_matches_brute_force_cdist():
    gen = torch.Generator().manual_seed(1)
    nodes = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    d = torch.cdist(nodes, nodes).pow(2)
    d.fill_diagonal_(float("inf"))
    ref = d.topk(5, largest=False)
    g = knn_graph(nodes, k=5, chunk_size=8)
    assert torch.equal(g.index, ref.indices)
    torch.testing.assert_close(g.sq_dist, ref.values)


def test_graph_invariant_to_batch_order():
    """Permuting the images (blocks of tokens) permutes the nodes; the edge set is the same."""
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(6, 5, 8, generator=gen)  # 6 images x 5 tokens
    perm = torch.randperm(6, generator=gen)
    nodes, nodes_p = tokens.flatten(0, 1), tokens[perm].flatten(0, 1)
    # position of each permuted node in the original node list
    orig_pos = (perm[:, None] * 5 + torch.arange(5)).flatten()
    g, g_p = knn_graph(nodes, k=4), knn_graph(nodes_p, k=4)
    edges = {(i, j) for i, row in enumerate(g.index.tolist()) for j in row}
    edges_p = {
        (orig_pos[i].item(), orig_pos[j].item())
        for i, row in enumerate(g_p.index.tolist())
        for j in row
    }
    assert edges == edges_p


def test_query_index_gives_rows_of_full_graph():
    nodes = torch.randn(40, 3, generator=torch.Generator().manual_seed(3))
    q = torch.tensor([5, 17, 39])
    full, part = knn_graph(nodes, 6), knn_graph(nodes, 6, query_index=q)
    assert torch.equal(full.index[q], part.index)


def test_sq_dist_gradcheck_float64():
    nodes = torch.randn(12, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: knn_graph(x, 3).sq_dist, (nodes,))


@pytest.mark.parametrize("k", [0, 4, 9])
def test_bad_k_names_sizes(k):
    with pytest.raises(ValueError, match=rf"k={k}.*got 4 nodes"):
        knn_graph(torch.randn(4, 2), k=k)


def test_bad_shape_and_chunk():
    with pytest.raises(ValueError, match="nodes must be"):
        knn_graph(torch.randn(2, 3, 4), k=1)
    with pytest.raises(ValueError, match="chunk_size"):
        knn_graph(torch.randn(5, 2), k=1, chunk_size=0)
