import math

import pytest
import torch

from lab_common.benchmarking import measure
from trg_kd.graph import gaussian_kernel, knn_graph, pair_sq_dists
from trg_kd.local import local_preserving_loss


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


def _old_pair_sq_dists(queries, nodes, index):
    """The formula before 0.2: gathers a (Q, k, D) tensor that autograd keeps for backward."""
    return (queries.unsqueeze(1) - nodes[index]).pow(2).sum(-1)


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_pair_sq_dists_equal_the_old_formula_values_and_gradients(chunk_size):
    gen = torch.Generator().manual_seed(4)
    nodes = torch.randn(64, 24, generator=gen)
    index = torch.randint(0, 64, (40, 7), generator=gen)
    q = torch.randn(40, 24, generator=gen)
    grad = torch.rand(40, 7, generator=gen)
    got_in = [t.clone().requires_grad_(True) for t in (q, nodes)]
    ref_in = [t.clone().requires_grad_(True) for t in (q, nodes)]
    got = pair_sq_dists(*got_in, index, chunk_size=chunk_size)
    ref = _old_pair_sq_dists(*ref_in, index)
    assert torch.equal(got, ref)  # the same differences, summed the same way
    got.backward(grad)
    ref.backward(grad)
    for a, b in zip(got_in, ref_in, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_pair_sq_dists_gradcheck_in_blocks_and_errors():
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(6, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    x = torch.randn(9, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    index = torch.randint(0, 9, (6, 4), generator=gen)
    assert torch.autograd.gradcheck(lambda a, b: pair_sq_dists(a, b, index, chunk_size=1), (q, x))
    with pytest.raises(ValueError, match=r"index must be \(Q, k\) = \(6, k\)"):
        pair_sq_dists(q, x, index[:5])
    with pytest.raises(ValueError, match="one width D"):
        pair_sq_dists(q, x[:, :2], index)


def test_autograd_keeps_no_q_k_d_tensor():
    """The fault: nodes[index] of shape (Q, k, D) was saved for backward (4.1 GB at k = 1000)."""
    m, d, k = 256, 32, 200
    gen = torch.Generator().manual_seed(6)
    s = torch.randn(m, d, generator=gen, requires_grad=True)
    t = torch.randn(m, d, generator=gen)
    saved: list[int] = []

    def pack(x):
        saved.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        local_preserving_loss(s, t, k, chunk_size=16)
    assert max(saved) < m * k * d / 10  # the largest saved tensor is (Q, k) or (M, D)


def test_chunk_size_bounds_the_peak_memory_of_large_k():
    """Q·k·D = 1024·1000·256 floats was 4 GB; a block is now at most chunk_size × M values."""
    m, d, k = 1024, 64, 1000  # old: a 256 MiB (Q, k, D) tensor, plus its gradient
    gen = torch.Generator().manual_seed(7)
    t = torch.nn.functional.normalize(torch.randn(m, d, generator=gen), dim=1)
    s0 = torch.nn.functional.normalize(torch.randn(m, d, generator=gen), dim=1)

    def step(chunk_size):
        s = s0.clone().requires_grad_(True)
        local_preserving_loss(s, t, k, chunk_size=chunk_size).backward()
        return s.grad

    ref = step(m)
    small = measure(lambda: step(64), warmup=0, repeats=1)
    assert small.peak_memory_mb < 64  # a 64 × 1024 block: 0.25 MiB of distances
    torch.testing.assert_close(step(64), ref, rtol=0, atol=0)  # chunking changes no bit


def test_backward_is_bit_identical_on_several_threads():
    """The fault behind non-reproducible TRG runs: nodes[index]'s backward (index_put_ with
    accumulate=True) adds duplicated neighbours in a varying order on a multi-threaded CPU."""
    gen = torch.Generator().manual_seed(8)
    s0 = torch.nn.functional.normalize(torch.randn(1024, 64, generator=gen), dim=1)
    t = torch.nn.functional.normalize(torch.randn(1024, 64, generator=gen), dim=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        grads = []
        for _ in range(4):
            s = s0.clone().requires_grad_(True)
            local_preserving_loss(s, t, 8).backward()
            grads.append(s.grad)
    finally:
        torch.set_num_threads(threads)
    assert grads[0].abs().min() > 0  # every node has a gradient, from many edges
    assert all(torch.equal(g, grads[0]) for g in grads[1:])
