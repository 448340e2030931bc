import pytest
import torch
import torch.nn.functional as F

from trg_kd.tokens import (
    TokenProjector,
    align_token_grids,
    drop_prefix_tokens,
    sample_token_index,
    to_tokens,
)


def test_to_tokens_row_major():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    t = to_tokens(x)
    assert t.shape == (2, 4, 3)
    assert torch.equal(t[1, 2], x[1, :, 1, 0])  # token 2 = row 1, col 0
    assert to_tokens(t) is t
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        to_tokens(torch.randn(2, 3))


def test_drop_prefix_tokens():
    vit = torch.randn(2, 1 + 196, 8)
    assert drop_prefix_tokens(vit, 1).shape == (2, 196, 8)
    assert torch.equal(drop_prefix_tokens(vit, 1), vit[:, 1:])
    with pytest.raises(ValueError, match="num_prefix_tokens=197"):
        drop_prefix_tokens(vit, 197)


def test_align_pools_larger_grid():
    s = torch.randn(2, 4, 8, 8)
    t = torch.randn(2, 6, 4, 4)
    s_tok, t_tok = align_token_grids(s, t)
    assert s_tok.shape == (2, 16, 4) and t_tok.shape == (2, 16, 6)
    torch.testing.assert_close(s_tok, to_tokens(F.avg_pool2d(s, 2)))
    torch.testing.assert_close(t_tok, to_tokens(t))


def test_align_vit_tokens_with_cnn_map():
    vit = torch.randn(3, 16, 12)  # 4x4 patch grid, prefix tokens dropped
    cnn = torch.randn(3, 32, 8, 8)
    s_tok, t_tok = align_token_grids(vit, cnn)
    assert s_tok.shape == (3, 16, 12) and t_tok.shape == (3, 16, 32)
    torch.testing.assert_close(s_tok, vit)
    grid = vit.transpose(1, 2).reshape(3, 12, 4, 4)
    torch.testing.assert_close(to_tokens(grid), vit)


def test_align_equal_non_square_tokens_pass_through():
    s, t = torch.randn(2, 7, 3), torch.randn(2, 7, 5)
    assert align_token_grids(s, t) == (s, t)


def test_align_errors_name_sizes():
    with pytest.raises(ValueError, match="student 7x7, teacher 4x4"):
        align_token_grids(torch.randn(2, 3, 7, 7), torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 197, 3\)"):
        align_token_grids(torch.randn(2, 197, 3), torch.randn(2, 3, 14, 14))
    with pytest.raises(ValueError, match="student batch 2 != teacher batch 3"):
        align_token_grids(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))


def test_sample_token_index_reproducible_distinct_and_no_global_rng():
    state = torch.get_rng_state()
    a = sample_token_index(5, 20, 6, generator=torch.Generator().manual_seed(0))
    b = sample_token_index(5, 20, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and a.shape == (5, 6)
    for row in a.tolist():
        assert len(set(row)) == 6 and row == sorted(row) and all(0 <= i < 20 for i in row)
    assert torch.equal(sample_token_index(2, 4, 9), torch.arange(4).expand(2, 4))
    with pytest.raises(ValueError, match="tokens_per_image"):
        sample_token_index(2, 4, 0)


def test_projector():
    p = TokenProjector(4, 10)
    assert p(torch.randn(2, 3, 4)).shape == (2, 3, 10)
    with pytest.raises(ValueError, match="width 5, projector expects 4"):
        p(torch.randn(2, 3, 5))
