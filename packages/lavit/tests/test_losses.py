import pytest
import torch

from lavit import dp_loss


def _row_stochastic(n: int, batch: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, n, n, generator=g).softmax(dim=-1)


def test_intended_zero_at_identity_and_bounded():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    assert dp_loss(eye).item() == 0.0
    p = _row_stochastic(5)
    loss = dp_loss(p)
    assert 0.0 < loss.item() <= 2.0


def test_intended_prefers_symmetric_diagonal_dominant():
    n = 6
    sym_diag = torch.full((n, n), 0.2 / (n - 1)) + torch.eye(n) * (0.8 - 0.2 / (n - 1))
    asym = torch.zeros(n, n)
    asym[torch.arange(n), (torch.arange(n) + 1) % n] = 1.0  # each token attends its neighbour
    uniform = torch.full((n, n), 1.0 / n)
    l_good, l_asym, l_unif = (dp_loss(a[None]).item() for a in (sym_diag, asym, uniform))
    assert l_good < l_unif < l_asym
    # the identity is the minimum: every random row-stochastic map scores higher
    assert (torch.stack([dp_loss(p[None]) for p in _row_stochastic(n, 20)[:, 0]]) > 0.1).all()


def test_intended_diag_term_is_sign_flipped_literal():
    p = _row_stochastic(4, batch=1)[0, 0]
    n = 4
    printed = ((n - 1) * p.diag() - (p.sum(-1) - p.diag())).sum()
    flipped = -printed / (n * n)  # = mean_i (1/N - P_ii)
    diag_term = (1 - p.diag()).mean()
    assert torch.allclose(diag_term, flipped + 1 - 1 / n, atol=1e-6)
    sym_term = (p - p.t()).abs().sum() / (2 * n)
    assert torch.allclose(dp_loss(p[None]), sym_term + diag_term, atol=1e-6)


def test_literal_matches_printed_formula():
    a = torch.randn(4, 4, generator=torch.Generator().manual_seed(3))
    n = 4
    expected = sum(abs(a[i, j] - a[j, i]) for i in range(n) for j in range(n))
    expected = expected + sum(
        (n - 1) * a[i, i] - sum(a[i, j] for j in range(n) if j != i) for i in range(n)
    )
    assert torch.allclose(dp_loss(a[None, None], "literal"), expected, atol=1e-5)


def test_literal_lowers_diagonal_as_documented():
    a = torch.randn(1, 1, 5, 5)
    lowered = a - 10.0 * torch.eye(5)
    assert dp_loss(lowered, "literal") < dp_loss(a, "literal")  # unbounded below


@pytest.mark.parametrize("variant", ["intended", "literal"])
def test_gradcheck_float64(variant):
    scores = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)

    def fn(s):
        return dp_loss(s.softmax(dim=-1) if variant == "intended" else s, variant)

    assert torch.autograd.gradcheck(fn, (scores,), eps=1e-6, atol=1e-5)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="variant"):
        dp_loss(torch.eye(3), "paper")
    with pytest.raises(ValueError, match=r"square.*\(2, 3\)"):
        dp_loss(torch.zeros(2, 3))


@pytest.mark.parametrize("variant", ["intended", "literal"])
def test_valid_mask_scores_the_real_sub_matrix(variant):
    """Padded tokens of a window are left out: the loss equals dp_loss of the real block."""
    g = torch.Generator().manual_seed(4)
    maps = torch.randn(2, 3, 1, 6, 6, generator=g)  # (B, windows, heads, N, N)
    valid = torch.tensor(
        [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool
    )
    if variant == "intended":  # probabilities over the real keys only
        maps = maps.masked_fill(~valid[None, :, None, None, :], float("-inf")).softmax(-1)
    loss = dp_loss(maps, variant, valid=valid[:, None, :])
    per_window = [dp_loss(maps[:, w][..., valid[w]][..., valid[w], :], variant) for w in range(3)]
    assert torch.allclose(loss, torch.stack(per_window).mean(), atol=1e-6)
    # padded entries do not matter
    noisy = maps + 5.0 * (~(valid[:, None, :, None] & valid[:, None, None, :])).float()
    assert torch.allclose(dp_loss(noisy, variant, valid=valid[:, None, :]), loss, atol=1e-6)


def test_valid_mask_must_match_maps():
    with pytest.raises(ValueError, match=r"valid mask of shape \(4,\).*N=3"):
        dp_loss(torch.eye(3)[None], valid=torch.ones(4, dtype=torch.bool))
