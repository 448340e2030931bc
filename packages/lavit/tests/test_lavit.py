import copy
import importlib.metadata

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lavit
from lab_common import autocast
from lab_common.testing import DEVICES, require_optional
from lavit import LaViT, checkpoint_filter_fn, resample_token_matrix
from lavit.analysis import capture_attention, consecutive_similarity
from lavit.flops import count_macs
from lavit.lavit import (
    AttentionDownsample,
    LessAttention,
    StageGeometry,
    WindowAttentionDownsample,
)

# (name, paper params in M, paper MACs in G)
PAPER = [("lavit_tiny", 10.9, 1.6), ("lavit_small", 22.4, 3.3), ("lavit_base", 39.6, 6.1)]

#: The paper layout, small: 4x4 windows; at 64x64 the grids are 16/8/4/2, so stage 3 pads
#: its 2x2 grid to one 4x4 window (masked keys) and the residuals see 4 -> 1 windows.
WIN = dict(
    img_size=64,
    num_classes=5,
    depths=(2, 2, 2, 2),
    la_depths=(1, 1, 1, 1),
    embed_dims=(16, 32, 48, 64),
    num_heads=(1, 2, 3, 4),
    mlp_ratios=(2, 2, 2, 2),
    sr_ratios=(1, 1, 1, 1),
    window_sizes=(4, 4, 4, 4),
)

#: lavit_tiny in the PVTv2 layout, reachable by arguments (global attention, SR keys, LA in stages 3-4).
PVTV2_LAYOUT_TINY = dict(
    depths=(2, 2, 3, 2),
    la_depths=(0, 0, 2, 1),
    embed_dims=(64, 128, 256, 448),
    num_heads=(1, 2, 4, 7),
    mlp_ratios=(6, 4, 4, 4),
    sr_ratios=(8, 4, 2, 1),
    window_sizes=None,
    la_input="logits",
)


def _la_blocks(model):
    return [m for m in model.modules() if isinstance(m, LessAttention)]


def _win_model(seed=0, **kw):
    torch.manual_seed(seed)
    return LaViT(**dict(WIN, **kw)).eval()


def _params_macs(build, size=(224, 224)):
    with torch.device("meta"):  # count without computing
        model = build()
        x = torch.empty(1, 3, *size)
    out = model(x)
    return model, out, sum(p.numel() for p in model.parameters()) / 1e6, count_macs(model, x) / 1e9


def test_count_macs_includes_fused_attention():
    model = _win_model(window_sizes=(7, 7, 7, 7), la_depths=(0, 0, 0, 0), attn_residual=False)
    x = torch.randn(1, 3, 64, 64)  # every block runs F.scaled_dot_product_attention
    with FlopCounterMode(display=False) as fc:
        model(x)
    fused = fc.get_total_flops() / 2
    # stage 0 alone: 3x3 windows of 49 tokens, 1 head of 16 dims, QK^T and AV of 2 VA blocks
    assert count_macs(model, x) >= fused + 2 * 9 * 2 * 49 * 49 * 16
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))


def test_public_api():
    assert lavit.__version__ == importlib.metadata.version("lavit")
    for name in lavit.__all__:
        assert hasattr(lavit, name)


@pytest.mark.parametrize("name,params_m,macs_g", PAPER)
def test_variants_match_paper_budget_and_layout(name, params_m, macs_g):
    model, out, params, macs = _params_macs(lambda: timm.create_model(name))
    assert out.shape == (1, 1000)
    assert abs(params / params_m - 1) <= 0.05, params
    assert abs(macs / macs_g - 1) <= 0.10, macs
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)
    assert not model.pretrained_cfg["fixed_input_size"] and model.any_size
    # the paper's layout: every stage VA blocks then at least one LA block, square 7x7 windows
    for stage in model.stages:
        kinds = [b.less_attention for b in stage.blocks]
        assert kinds[0] is False and kinds[-1] is True and kinds == sorted(kinds)
        assert stage.window == (7, 7)
        for la in (b.attn for b in stage.blocks if b.less_attention):
            assert la.theta.shape == la.psi.shape == (49, 49) and la.dp_pool_grids is None


def test_pvtv2_layout_reachable_by_arguments():
    model, _, params, macs = _params_macs(lambda: LaViT(**PVTV2_LAYOUT_TINY))
    # 11.22 M / 1.59 G, the fused (SDPA) attention counted
    assert round(params, 2) == 11.22 and round(macs, 2) == 1.59
    assert not model.any_size
    assert [s.window for s in model.stages] == [None] * 4
    la = model.stages[2].blocks[1].attn
    assert la.psi.shape == (196, 196) and la.theta.shape == (49, 49)
    assert la.dp_pool_grids == ((14, 14), (7, 7))  # 0.1: query rows pooled for the DP loss


def test_param_count_independent_of_input_size():
    """One model runs every size; Theta/Psi do not depend on the build size either (only the
    position embeddings, defined on the ``img_size`` grid, do)."""
    counts = {}
    for size in (224, 512):
        model = timm.create_model("lavit_small", img_size=size)
        counts[size] = {
            n: p.numel() for n, p in model.named_parameters() if not n.endswith("pos_embed")
        }
    assert counts[224] == counts[512]


def test_same_weights_run_at_any_multiple_of_32():
    model = _win_model(window_sizes=(7, 7, 7, 7))
    sizes = [(64, 64), (96, 96), (128, 128), (224, 224), (96, 160), (160, 96)]
    with torch.no_grad():
        for size in sizes:
            feats = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
            assert [tuple(f.shape[-2:]) for f in feats] == [
                (size[0] // s, size[1] // s) for s in (4, 8, 16, 32)
            ]
            logits, aux = model(torch.randn(2, 3, *size), return_aux=True)
            assert logits.shape == (2, 5) and logits.isfinite().all() and aux["loss_dp"] > 0


@pytest.mark.slow
def test_lavit_tiny_built_at_224_runs_at_detection_sizes():
    model = timm.create_model("lavit_tiny", features_only=True).eval()
    with torch.no_grad():
        for size in [(256, 256), (384, 384), (512, 512), (800, 1216)]:
            feats = model(torch.randn(1, 3, *size))
            assert tuple(feats[-1].shape) == (1, 448, size[0] // 32, size[1] // 32)
            assert all(f.isfinite().all() for f in feats)


def test_sizes_that_cannot_work_name_the_nearest():
    model = _win_model()
    with pytest.raises(
        ValueError,
        match=r"\(250, 64\).*multiples of the total stride 32.*"
        r"\(224, 64\), \(256, 64\)",
    ):
        model(torch.randn(1, 3, 250, 64))
    with pytest.raises(ValueError, match=r"\(16, 64\).*\(32, 64\)"):
        model(torch.randn(1, 3, 16, 64))


def test_window_geometry_round_trip_and_mask():
    geom = StageGeometry((5, 9), (4, 4), torch.device("cpu"))
    assert geom.counts == (2, 3) and geom.padded == (8, 12) and geom.num_windows == 6
    x = torch.randn(2, 45, 3)
    w = geom.partition(x)
    assert w.shape == (2, 6, 16, 3)
    assert torch.equal(geom.merge(w), x)
    assert int(geom.valid.sum()) == 45 and torch.equal(geom.valid, w[0, :, :, 0] != 0)
    assert geom.key_mask.shape == (6, 1, 1, 16)
    assert torch.equal(geom.key_mask[:, 0, 0].isinf(), ~geom.valid)
    assert StageGeometry((8, 8), (4, 4), torch.device("cpu")).key_mask is None


def test_padded_keys_get_no_attention():
    model = _win_model(window_sizes=(7, 7, 7, 7))  # at 64x64 every stage pads
    maps = capture_attention(model, torch.randn(1, 3, 64, 64))
    # stage 0: grid 16x16 -> 3x3 windows of 7x7; the bottom-right window holds 2x2 real tokens
    _, p = maps[0]
    geom = StageGeometry((16, 16), (7, 7), torch.device("cpu"))
    assert p.shape == (9, 1, 49, 49)
    assert torch.all(p[~geom.valid[:, None, None, :].expand_as(p)] == 0)
    assert torch.allclose(p.sum(-1), torch.ones(9, 1, 49))


@pytest.mark.parametrize("size", [64, 512])
def test_softmax_input_init_reuses_the_attention_in_padded_windows(size):
    """Psi = N_k * I is rescaled to the real keys of a padded window: at 64x64 (every stage
    pads) and 512x512 (border windows) an untrained first LA block still re-uses its VA map
    (before the rescale: cosine 0.68 at stage 3 at 64x64, 0.96 at 512x512)."""
    torch.manual_seed(0)
    model = timm.create_model("lavit_tiny").eval()
    with torch.no_grad():
        sims = consecutive_similarity(capture_attention(model, torch.randn(1, 3, size, size)))
    assert min(s["cosine"] for s in sims) > 0.98


def test_tiny_forward_224():
    model = timm.create_model("lavit_tiny", num_classes=11).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 11) and out.isfinite().all()


def test_create_model_kwargs_reach_model():
    model = timm.create_model("lavit_tiny", img_size=64, num_classes=5, drop_path_rate=0.1)
    assert model.img_size == (64, 64) and model.num_classes == 5
    dpr = [
        b.drop_path1.drop_prob
        for s in model.stages
        for b in s.blocks
        if b.drop_path1.__class__.__name__ == "DropPath"
    ]
    assert max(dpr) == pytest.approx(0.1)


def test_features_only_shapes_match_feature_info():
    model = timm.create_model("lavit_tiny", img_size=64, features_only=True, out_indices=(1, 3))
    feats = model(torch.randn(2, 3, 64, 64))
    assert model.feature_info.channels() == [128, 448]
    assert model.feature_info.reduction() == [8, 32]
    assert [tuple(f.shape) for f in feats] == [(2, 128, 8, 8), (2, 448, 2, 2)]


def test_timm_model_contract(tiny_model, tiny_input):
    model = tiny_model
    feats = model.forward_features(tiny_input)
    assert feats.shape == (2, model.num_features, 1, 1)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    assert model.get_classifier().out_features == 7
    model.reset_classifier(0)
    assert model(tiny_input).shape == (2, model.num_features)
    model.reset_classifier(0, "")
    assert model(tiny_input).shape == feats.shape
    model.reset_classifier(4, "avg")
    assert model(tiny_input).shape == (2, 4)
    nwd = model.no_weight_decay()
    assert {
        "stages.0.pos_embed",
        "stages.0.blocks.1.attn.psi",
        "stages.3.blocks.1.attn.theta",
    } <= nwd
    groups = timm.models.group_parameters(model, model.group_matcher())
    assert sum(len(g) for g in groups.values()) == len(list(model.parameters()))


def test_forward_intermediates(tiny_model, tiny_input):
    final, inter = tiny_model.forward_intermediates(tiny_input)
    assert [t.shape[1:] for t in inter] == [(16, 8, 8), (32, 4, 4), (48, 2, 2), (64, 1, 1)]
    assert torch.equal(final, tiny_model.forward_features(tiny_input))
    only = tiny_model.forward_intermediates(tiny_input, indices=[0, 2], intermediates_only=True)
    assert torch.equal(only[0], inter[0]) and torch.equal(only[1], inter[2])


def test_la_transform_is_psi_theta_as_printed():
    """``A^l = Psi(Theta(A)^T)^T``: Theta acts on the key axis, Psi on the query axis."""
    torch.manual_seed(0)
    la = LessAttention(dim=32, num_heads=4, query_tokens=6, key_tokens=5)
    prev = torch.randn(2, 3, 4, 6, 5)
    assert torch.equal(la.transform(prev), prev)  # Theta = Psi = I at init
    with torch.no_grad():
        la.theta.copy_(torch.randn(5, 5))
        la.psi.copy_(torch.randn(6, 6))
    theta_lin, psi_lin = torch.nn.Linear(5, 5, bias=False), torch.nn.Linear(6, 6, bias=False)
    theta_lin.weight.data, psi_lin.weight.data = la.theta.data, la.psi.data
    printed = psi_lin(theta_lin(prev).transpose(-1, -2)).transpose(-1, -2)
    assert torch.allclose(la.transform(prev), printed, atol=1e-5)
    assert torch.allclose(la.transform(prev), la.psi @ prev @ la.theta.t(), atol=1e-4)
    # a key permutation in Theta permutes columns only
    with torch.no_grad():
        la.psi.copy_(torch.eye(6))
        la.theta.copy_(torch.eye(5)[[1, 2, 3, 4, 0]])
    assert torch.equal(la.transform(prev), prev[..., [1, 2, 3, 4, 0]])


def _va_la_pair(la_input):
    """Stage 0 of a windowed model: its VA block, its first LA block and a window input."""
    model = _win_model(la_input=la_input)
    va, la = model.stages[0].blocks
    geom = StageGeometry((8, 8), (4, 4), torch.device("cpu"))
    x = geom.partition(torch.randn(2, 64, 16, generator=torch.Generator().manual_seed(1)))
    return va, la, geom, x


def test_logits_input_reuses_the_previous_attention_exactly():
    va, la, geom, x = _va_la_pair("logits")
    assert va.hand_on == "logits" and torch.equal(la.attn.psi, torch.eye(16))
    _, scores = va.attn(x, geom, None, "logits")
    _, probs, _ = la.attn(x, geom, scores, hand_on="probs")
    assert torch.equal(probs, scores.softmax(-1))


def test_softmax_input_init_reuses_the_previous_attention():
    """Psi starts as N * I: Softmax(N P) = P to first order around the uniform map."""
    va, la, geom, x = _va_la_pair("softmax")
    n = 16
    assert va.hand_on == "probs" and torch.equal(la.attn.psi, n * torch.eye(n))
    assert torch.equal(la.attn.theta, torch.eye(n))
    uniform = torch.full((1, 1, 1, n, n), 1.0 / n)
    assert torch.allclose(la.attn.transform(uniform).softmax(-1), uniform, atol=1e-7)
    scores = torch.randn(2, 4, 1, n, n, generator=torch.Generator().manual_seed(2))
    p = (0.05 * scores).softmax(-1)  # logits of std 0.05: about twice an untrained model's
    reused = la.attn.transform(p).softmax(-1)
    assert (reused - p).abs().max() < 0.1 * (p - 1.0 / n).abs().max()
    # sharper maps: the same ranking per row, sharpened (Softmax(N P) is monotone in P)
    p = (2.0 * scores).softmax(-1)
    reused = la.attn.transform(p).softmax(-1)
    assert torch.equal(reused.argsort(-1), p.argsort(-1))
    entropy = lambda q: -(q * q.log()).sum(-1)  # noqa: E731
    assert (entropy(reused) < entropy(p)).all()
    # in the model at init: the LA block's attention output matches the VA block's
    _, probs = va.attn(x, geom, None, "probs")
    with torch.no_grad():
        la.attn.v.weight.copy_(va.attn.kv.weight[16:])
        la.attn.v.bias.copy_(va.attn.kv.bias[16:])
        la.attn.proj.load_state_dict(va.attn.proj.state_dict())
    y_va, _ = va.attn(x, geom)
    y_la, reused, _ = la.attn(x, geom, probs, hand_on="probs")
    assert (reused - probs).abs().max() < 0.05 * (probs - 1.0 / n).abs().max()
    assert torch.allclose(y_la, y_va, atol=1e-4 * y_va.abs().max().item())


def test_hand_on_flags_follow_the_layout():
    model = LaViT(**dict(WIN, depths=(3, 3, 3, 3), la_depths=(1, 2, 1, 0)))
    flags = [[b.hand_on for b in s.blocks] for s in model.stages]
    assert flags == [
        [None, "probs", "probs"],  # VA VA LA: the last VA hands P to LA; LA feeds the residual
        ["probs", "logits", "probs"],  # VA LA LA: LA hands its A^l to the next LA
        [None, "probs", "probs"],
        [None, None, None],  # last stage, no LA: nothing is reused, SDPA everywhere
    ]
    logits = LaViT(**dict(WIN, la_input="logits"))
    assert [b.hand_on for b in logits.stages[1].blocks] == ["logits", "logits"]
    assert logits.stages[0].blocks[1].attn.init_scale == 1.0
    nores = LaViT(**dict(WIN, attn_residual=False))
    assert [b.hand_on for b in nores.stages[1].blocks] == ["probs", None]
    assert all(s.attn_downsample is None for s in nores.stages)


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_fused_and_explicit_attention_agree(size):
    model = _win_model(window_sizes=(7, 7, 7, 7))
    x = torch.randn(2, 3, *size)
    ref = model(x)
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_gradients_reach_theta_psi_and_downsampling():
    torch.manual_seed(0)
    for model in (LaViT(**WIN).train(), LaViT(**dict(WIN, window_sizes=None, img_size=64))):
        with torch.no_grad():  # break the exact symmetry of the identity init
            for la in _la_blocks(model):
                la.psi.add_(0.01 * torch.randn_like(la.psi))
        logits, aux = model(torch.randn(2, 3, 64, 64), return_aux=True)
        (logits.logsumexp(-1).mean() + aux["loss_dp"]).backward()
        for la in _la_blocks(model):
            assert la.theta.grad is not None and la.theta.grad.abs().sum() > 0
            assert la.psi.grad is not None and la.psi.grad.abs().sum() > 0
        downs = [s.attn_downsample for s in model.stages[1:]]
        assert all(d is not None for d in downs)
        for d in downs:
            assert next(d.parameters()).grad.abs().sum() > 0


def test_aux_dp_loss(tiny_model, tiny_input, tiny_kwargs):
    logits, aux = tiny_model(tiny_input, return_aux=True)
    assert torch.equal(logits, tiny_model(tiny_input))
    assert aux["loss_dp"].ndim == 0 and 0 < aux["loss_dp"].item() < 2
    feats, aux_f = tiny_model.forward_features(tiny_input, return_aux=True)
    assert torch.equal(aux_f["loss_dp"], aux["loss_dp"])
    literal = LaViT(**dict(tiny_kwargs, dp_loss_variant="literal")).eval()
    literal.load_state_dict(tiny_model.state_dict())
    logits_l, aux_l = literal(tiny_input, return_aux=True)
    assert torch.equal(logits_l, logits)  # the variant changes the auxiliary loss only
    assert aux_l["loss_dp"].isfinite() and aux_l["loss_dp"].item() != aux["loss_dp"].item()
    all_va = LaViT(**dict(tiny_kwargs, la_depths=(0, 0, 0, 0)))
    assert all_va(tiny_input, return_aux=True)[1]["loss_dp"].item() == 0.0


def test_dp_loss_on_square_windows_ignores_padding():
    """The model's DP loss is the mean of dp_loss over the LA blocks' square window maps."""
    model = _win_model(window_sizes=(7, 7, 7, 7))
    x = torch.randn(1, 3, 64, 64)
    maps = dict(capture_attention(model, x))
    expected = []
    for i in range(len(model.stages)):
        grid = (16 // 2**i, 16 // 2**i)
        valid = StageGeometry(grid, (7, 7), torch.device("cpu")).valid[:, None, :]
        p = maps[f"stages.{i}.blocks.1.attn"]
        expected.append(lavit.dp_loss(p, valid=valid))
    _, aux = model(x, return_aux=True)
    assert torch.allclose(aux["loss_dp"], torch.stack(expected).mean(), atol=1e-6)
    literal = _win_model(window_sizes=(7, 7, 7, 7), dp_loss_variant="literal")
    assert literal(x, return_aux=True)[1]["loss_dp"].isfinite()


def test_attention_downsample_global_shapes_and_mean_init():
    down = AttentionDownsample(2, 3, (4, 4), (2, 2), (4, 4), (2, 2))
    out = down(torch.randn(5, 1, 2, 16, 16), None, None)
    assert out.shape == (5, 1, 3, 4, 4)
    # mean init: constant scores stay constant
    const = down(torch.full((1, 1, 2, 16, 16), 3.0), None, None)
    assert torch.allclose(const, torch.full((1, 1, 3, 4, 4), 3.0))


@pytest.mark.parametrize(
    "args, shape",
    [
        ((2, 3, (4, 4), (2, 2), (4, 4), (2, 2)), (5, 1, 2, 16, 16)),
        ((1, 2, (8, 8), (4, 4), (8, 8), (4, 4)), (3, 1, 1, 64, 64)),
        ((2, 4, (6, 10), (3, 5), (6, 10), (6, 10)), (2, 1, 2, 60, 60)),
        ((2, 2, (7, 7), (3, 3), (7, 7), (7, 7)), (2, 1, 2, 49, 49)),  # a remainder row/column
    ],
)
def test_attention_downsample_is_its_conv_over_the_query_grid(args, shape):
    """The matrix-product form equals ``conv`` applied to the query grid (then the key pooling),
    values and gradients, in float64."""
    torch.manual_seed(0)
    down = AttentionDownsample(*args).double()
    nn.init.normal_(down.conv.weight)
    nn.init.normal_(down.conv.bias)
    attn = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    b, _, h, _, nk = shape
    x = down.conv(attn.squeeze(1).permute(0, 3, 1, 2).reshape(b * nk, h, *down.q_grid_in))
    ref = x.reshape(b, nk, x.shape[1], -1).permute(0, 2, 3, 1)
    if down.k_grid_in != down.k_grid_out:
        nq = ref.shape[2]
        ref = F.adaptive_avg_pool2d(ref.reshape(-1, 1, *down.k_grid_in), down.k_grid_out)
        ref = ref.reshape(b, x.shape[1], nq, -1)
    out = down(attn, None, None)
    assert out.shape == (b, 1, *ref.shape[1:])
    assert torch.allclose(out.squeeze(1), ref, atol=1e-12)
    grad = torch.randn_like(ref)
    inputs = [attn, down.conv.weight, down.conv.bias]
    got = torch.autograd.grad((out.squeeze(1) * grad).sum(), inputs)
    want = torch.autograd.grad((ref * grad).sum(), inputs)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-10)


def _window_ids(padded, window):
    """``(n_windows, n)`` ids of each window's tokens on the (unpadded) grid ``padded``."""
    geom = StageGeometry(padded, window, torch.device("cpu"))
    ids = torch.arange(padded[0] * padded[1], dtype=torch.float).reshape(1, -1, 1)
    return geom.partition(ids)[0, :, :, 0].long()


def _dense_window_relations(attn, geom):
    """Scatter window maps ``(B, nW, H, n, n)`` into a dense ``(B, H, Np, Np)`` relation
    matrix over the padded grid (zero across windows)."""
    b, _, h, _, _ = attn.shape
    ph, pw = geom.padded
    dense = torch.zeros(b, h, ph * pw, ph * pw)
    for w, ids in enumerate(_window_ids(geom.padded, geom.window)):
        dense[:, :, ids[:, None], ids[None, :]] = attn[:, w]
    return dense, (ph, pw)


@pytest.mark.parametrize("grid_in", [(8, 8), (12, 20)])
def test_window_attention_downsample_pools_cells(grid_in):
    """Each next-stage token is a 2x2 cell: rows averaged, probability columns summed."""
    torch.manual_seed(0)
    g_in = StageGeometry(grid_in, (4, 4), torch.device("cpu"))
    g_out = StageGeometry((grid_in[0] // 2, grid_in[1] // 2), (4, 4), torch.device("cpu"))
    p = torch.randn(2, g_in.num_windows, 3, 16, 16).softmax(-1)
    down = WindowAttentionDownsample(3, 2, (4, 4), sum_keys=True)
    out = down(p, g_in, g_out)
    assert out.shape == (2, g_out.num_windows, 2, 16, 16)
    rows = out.sum(-1)  # (B, nW, H, n): one for real next-stage tokens, zero for padding
    valid = torch.ones(g_out.num_windows, 16, dtype=torch.bool)
    if g_out.valid is not None:
        valid = g_out.valid
    assert torch.allclose(rows, valid[None, :, None, :].float().expand_as(rows), atol=1e-6)
    # reference: dense relations over the previous grid, pooled over 2x2 cells
    dense, (ph, pw) = _dense_window_relations(p.mean(2, keepdim=True), g_in)
    dense = dense.reshape(2, ph, pw, ph, pw)
    oh, ow = g_out.padded
    dense = F.pad(dense, (0, 2 * ow - pw, 0, 2 * oh - ph, 0, 2 * ow - pw, 0, 2 * oh - ph))
    pooled = dense.reshape(2, oh, 2, ow, 2, oh, 2, ow, 2).sum((2, 4, 6, 8)) / 4
    pooled = pooled.reshape(2, oh * ow, oh * ow)
    ids = _window_ids((oh, ow), (4, 4))
    ref = torch.stack([pooled[:, i[:, None], i[None, :]] for i in ids], 1)
    assert torch.allclose(out[:, :, 0], ref, atol=1e-5)
    assert torch.allclose(out[:, :, 1], ref, atol=1e-5)


def test_same_seed_same_output():
    outs = [_win_model(seed=123)(torch.ones(1, 3, 64, 64)) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])


def test_save_load_identical(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("lavit_tiny", img_size=64, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    a = timm.create_model("lavit_tiny", img_size=64, num_classes=3, checkpoint_path=str(path))
    b = timm.create_model(
        "lavit_tiny",
        img_size=64,
        num_classes=3,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=3),
    )
    ref = model(x)
    assert torch.equal(a.eval()(x), ref) and torch.equal(b.eval()(x), ref)


def test_windowed_checkpoint_loads_at_another_build_size(tmp_path):
    """Only the position embeddings depend on the build size; run-time resampling matches."""
    torch.manual_seed(0)
    model = timm.create_model("lavit_tiny", img_size=64, num_classes=3).eval()
    path = tmp_path / "ckpt.pth"
    torch.save(model.state_dict(), path)
    big = timm.create_model(
        "lavit_tiny",
        img_size=128,
        num_classes=3,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=3),
    ).eval()
    assert big.stages[0].pos_embed.shape == (1, 32 * 32, 64)
    x = torch.randn(1, 3, 128, 128)
    assert torch.allclose(big(x), model(x), atol=1e-5)  # same weights, resampled in forward


def test_global_resolution_resampling(tmp_path, tiny_kwargs):
    torch.manual_seed(0)
    kw = dict(tiny_kwargs, img_size=64, la_input="logits")
    model = LaViT(**kw)
    with torch.no_grad():
        model.stages[2].blocks[1].attn.psi.add_(0.05)  # uniform extra mixing over 16 tokens
    sd = checkpoint_filter_fn(model.state_dict(), LaViT(**dict(kw, img_size=128)))
    big = LaViT(**dict(kw, img_size=128))
    big.load_state_dict(sd)
    out = big.eval()(torch.randn(1, 3, 128, 128))
    assert out.shape == (1, 7) and out.isfinite().all()
    psi = big.stages[2].blocks[1].attn.psi  # 8x8 grid now: 64 tokens
    assert psi.shape == (64, 64)
    assert torch.allclose(psi, torch.eye(64) + 0.05 * 16 / 64, atol=1e-5)
    assert torch.equal(big.stages[1].blocks[1].attn.theta, torch.eye(256))  # identity stays exact
    # a softmax-input LA block keeps its N_k * I start when resampled
    soft = LaViT(**dict(tiny_kwargs, img_size=64))
    sd = checkpoint_filter_fn(soft.state_dict(), LaViT(**dict(tiny_kwargs, img_size=128)))
    assert torch.equal(sd["stages.3.blocks.1.attn.psi"], 16.0 * torch.eye(16))


def test_resample_token_matrix_properties():
    eye = torch.eye(16)
    assert torch.equal(resample_token_matrix(eye, (4, 4), (6, 6)), torch.eye(36))
    assert torch.equal(resample_token_matrix(3 * eye, (4, 4), (6, 6), 3.0), 3 * torch.eye(36))
    assert torch.equal(resample_token_matrix(16 * eye, (4, 4), (6, 6), 16, 36), 36 * torch.eye(36))
    w = torch.eye(16) + 0.1 * torch.randn(16, 16)
    assert torch.allclose(resample_token_matrix(w, (4, 4), (4, 4)), w, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit grid"):
        resample_token_matrix(w, (3, 3), (4, 4))


def test_clear_errors(tiny_model, tiny_kwargs):
    with pytest.raises(ValueError, match=r"\(48, 48\).*img_size=\(32, 32\).*window_sizes"):
        tiny_model(torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match="1 channels.*in_chans=3"):
        tiny_model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="B, C, H, W"):
        tiny_model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="divisible by the total stride 32"):
        LaViT(**dict(tiny_kwargs, img_size=40))
    with pytest.raises(ValueError, match="not divisible by sr_ratios"):
        LaViT(**dict(tiny_kwargs, img_size=32, sr_ratios=(16, 1, 1, 1)))
    with pytest.raises(ValueError, match="la_depths"):
        LaViT(**dict(tiny_kwargs, la_depths=(2, 1, 1, 1)))
    with pytest.raises(ValueError, match="num_heads has 3 entries"):
        LaViT(**dict(tiny_kwargs, num_heads=(1, 2, 3)))
    with pytest.raises(ValueError, match="dp_loss_variant"):
        LaViT(**dict(tiny_kwargs, dp_loss_variant="paper"))
    with pytest.raises(ValueError, match="la_input must be one of"):
        LaViT(**dict(WIN, la_input="probs"))
    with pytest.raises(ValueError, match=r"window_sizes\[0\]=4 with sr_ratios\[0\]=2"):
        LaViT(**dict(WIN, sr_ratios=(2, 1, 1, 1)))
    with pytest.raises(ValueError, match="attn_residual between stage 0.*attn_residual=False"):
        LaViT(**dict(WIN, window_sizes=(4, 2, 2, 2)))
    assert LaViT(**dict(WIN, window_sizes=(4, 2, 2, 2), attn_residual=False))


def test_bad_checkpoint_is_a_value_error(tmp_path):
    small = timm.create_model("lavit_small", img_size=64)
    tiny = timm.create_model("lavit_tiny", img_size=64)
    with pytest.raises(ValueError, match="different variant"):
        checkpoint_filter_fn(small.state_dict(), tiny)
    path = tmp_path / "small.pth"
    torch.save(small.state_dict(), path)
    with pytest.raises(ValueError, match="different variant"):
        timm.create_model(
            "lavit_tiny", img_size=64, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
        )


def test_grad_checkpointing_same_result(tiny_model, tiny_input):
    model = tiny_model.train()
    ref = model(tiny_input)
    model.set_grad_checkpointing(True)
    out, aux = model(tiny_input, return_aux=True)
    assert torch.allclose(out, ref, atol=1e-6)
    (out.sum() + aux["loss_dp"]).backward()
    assert model.stages[0].blocks[1].attn.psi.grad is not None
    win = _win_model().train()
    x = torch.randn(1, 3, 96, 64)
    ref = win(x)
    win.set_grad_checkpointing(True)
    assert torch.allclose(win(x), ref, atol=1e-6)


def test_mlp_dwconv_option():
    model = _win_model(mlp_dwconv=True)
    assert all(b.mlp.dwconv is not None for s in model.stages for b in s.blocks)
    x = torch.randn(1, 3, 64, 96)
    assert model(x).isfinite().all()
    assert _win_model().stages[0].blocks[0].mlp.dwconv is None


def test_mlp_chunking_in_inference_gives_the_same_result():
    x = torch.randn(2, 3, 64, 96)
    ref = _win_model(mlp_chunk_size=0)
    assert _win_model().stages[0].blocks[0].mlp.chunk_size == 16384  # on by default
    chunked = _win_model(mlp_chunk_size=37)  # stage 1 has 2 x 16 x 24 = 768 rows: 21 chunks
    assert chunked.stages[0].blocks[0].mlp.chunk_size == 37
    with torch.inference_mode():
        torch.testing.assert_close(chunked.forward_features(x), ref.forward_features(x))
    calls = []
    fc1 = chunked.stages[0].blocks[0].mlp.fc1
    handle = fc1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        chunked(x)
    assert len(calls) == 21 and max(calls) == 37  # chunked ...
    calls.clear()
    out = chunked.train()(x)  # ... but not while autograd records (training is unchanged)
    handle.remove()
    assert len(calls) == 1
    out.sum().backward()
    with pytest.raises(ValueError, match="chunk_size must be >= 0"):
        _win_model(mlp_chunk_size=-1)


@pytest.mark.parametrize("chunk", [37, 100, 700])
def test_dwconv_mlp_in_bands_of_rows_gives_the_same_result(chunk):
    # 64x96: grids 16x24 / 8x12 / 4x6 / 2x3 in 4x4 windows (the last two padded); chunk 37
    # gives one-row bands (2 x 24 tokens a row), 100 two-row bands, 700 ~ whole stages
    x = torch.randn(2, 3, 64, 96)
    ref = _win_model(mlp_dwconv=True, mlp_chunk_size=0)
    banded = _win_model(mlp_dwconv=True, mlp_chunk_size=chunk)
    calls = []
    fc1 = banded.stages[0].blocks[0].mlp.fc1
    handle = fc1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[1]))
    with torch.inference_mode():
        torch.testing.assert_close(banded(x), ref(x))
        torch.testing.assert_close(banded.forward_features(x), ref.forward_features(x))
    handle.remove()
    band = max(1, chunk // 48)
    assert len(calls) == 2 * -(-16 // band) and max(calls) <= band + 2  # a band + its neighbours


def test_channels_last_input(tiny_model, tiny_input):
    ref = tiny_model(tiny_input)
    out = tiny_model(tiny_input.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5)
    cl = copy.deepcopy(tiny_model).to(memory_format=torch.channels_last)
    assert torch.allclose(cl(tiny_input), ref, atol=1e-5)


def test_bf16_autocast():
    model = _win_model(window_sizes=(7, 7, 7, 7))
    x = torch.randn(2, 3, 64, 96)
    ref = model(x)
    with autocast(torch.device("cpu"), dtype=torch.bfloat16):
        out, aux = model(x, return_aux=True)
    assert out.dtype == torch.bfloat16 and out.isfinite().all() and aux["loss_dp"].isfinite()
    assert torch.allclose(out.float(), ref, atol=0.1)


@pytest.mark.slow
def test_torch_compile_cpu():
    """Inductor on CPU, fullgraph (no graph breaks); 2-stage windowed model with padding, its
    inference MLPs chunked (stage 1: 2 x 9 x 9 = 162 rows, 5 chunks)."""
    torch.manual_seed(0)
    kw = dict(img_size=32, num_classes=3, depths=(2, 2), la_depths=(1, 1), embed_dims=(16, 32))
    model = LaViT(
        **kw,
        num_heads=(1, 2),
        mlp_ratios=(2, 2),
        sr_ratios=(1, 1),
        window_sizes=(3, 3),
        mlp_chunk_size=40,
    ).eval()
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.slow
def test_onnx_export_fixed_size(tmp_path):
    onnx = require_optional("onnx")
    require_optional("onnxscript")  # torch.onnx.export(dynamo=True) needs it
    from onnx.reference import ReferenceEvaluator

    model = _win_model()
    x = torch.randn(1, 3, 64, 64)
    path = tmp_path / "lavit.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    out = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(out), model(x), atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_backward_on_device(device):
    torch.manual_seed(0)
    model = LaViT(**WIN).to(device).train()
    logits, aux = model(torch.randn(2, 3, 64, 96, device=device), return_aux=True)
    (logits.sum() + aux["loss_dp"]).backward()
    assert logits.device.type == device
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
