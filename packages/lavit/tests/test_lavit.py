import copy
import importlib.metadata

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

import lavit
from lab_common import autocast
from lab_common.testing import DEVICES
from lavit import LaViT, checkpoint_filter_fn, resample_token_matrix
from lavit.lavit import AttentionDownsample, LessAttention

# (name, paper params in M, paper MACs in G)
PAPER = [("lavit_tiny", 10.9, 1.6), ("lavit_small", 22.4, 3.3), ("lavit_base", 39.6, 6.1)]


def _la_blocks(model):
    return [m for m in model.modules() if isinstance(m, LessAttention)]


def test_public_api():
    assert lavit.__version__ == importlib.metadata.version("lavit")
    for name in lavit.__all__:
        assert hasattr(lavit, name)


@pytest.mark.parametrize("name,params_m,macs_g", PAPER)
def test_variants_match_paper_budget(name, params_m, macs_g):
    with torch.device("meta"):  # count without computing
        model = timm.create_model(name)
        x = torch.empty(1, 3, 224, 224)
    with FlopCounterMode(display=False) as fc:
        out = model(x)
    assert out.shape == (1, 1000)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(params / params_m - 1) <= 0.05, params
    assert abs(fc.get_total_flops() / 2e9 / macs_g - 1) <= 0.10, fc.get_total_flops()
    assert model.pretrained_cfg["input_size"] == (3, 224, 224)


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


def test_la_identity_reproduces_previous_attention_exactly():
    torch.manual_seed(0)
    la = LessAttention(dim=32, num_heads=4, grid_size=(4, 4), sr_ratio=2)
    x = torch.randn(3, 16, 32)
    prev = torch.randn(3, 4, 16, 4) * 5
    _, scores, _ = la(x, prev)
    assert torch.equal(scores, prev)
    # the learned maps act on the query (Psi) and key (Theta) axes
    with torch.no_grad():
        la.psi.copy_(torch.randn(16, 16))
        la.theta.copy_(torch.randn(4, 4))
    _, scores, _ = la(x, prev)
    assert torch.allclose(scores, la.psi @ prev @ la.theta.t(), atol=1e-4)


def test_la_block_reuses_va_scores_in_model(tiny_model, tiny_input):
    """At init the first LA block of each stage sees exactly the preceding VA block's scores."""
    stage = tiny_model.stages[1]
    x0 = torch.randn(2, 16, 32)
    va, la = stage.blocks
    assert va.attn.return_scores and not va.less_attention and la.less_attention
    _, va_scores, _ = va(x0)
    _, la_scores, _ = la(x0, va_scores)
    assert torch.equal(la_scores, va_scores)


def test_sdpa_only_where_scores_are_not_reused(tiny_kwargs):
    model = LaViT(**dict(tiny_kwargs, depths=(3, 3, 3, 3), la_depths=(0, 1, 1, 1)))
    flags = [[b.attn.return_scores for b in s.blocks if not b.less_attention] for s in model.stages]
    # stage 0 has no LA: only its last block feeds the next stage's residual
    assert flags == [[False, False, True], [False, True], [False, True], [False, True]]
    nores = LaViT(
        **dict(tiny_kwargs, depths=(3, 3, 3, 3), la_depths=(0, 1, 1, 1), attn_residual=False)
    )
    assert not any(b.attn.return_scores for b in nores.stages[0].blocks)
    assert all(s.attn_downsample is None for s in nores.stages)


def test_fused_and_explicit_attention_agree(tiny_model, tiny_input):
    ref = tiny_model(tiny_input)
    for m in tiny_model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    assert torch.allclose(tiny_model(tiny_input), ref, atol=1e-5)


def test_gradients_reach_theta_psi_and_downsample_conv(tiny_kwargs):
    # at 64x64 every stage has more than one key (with a single key softmax is constant)
    torch.manual_seed(0)
    model = LaViT(**dict(tiny_kwargs, img_size=64)).train()
    tiny_input = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # break the exact symmetry of the identity init
        for la in _la_blocks(model):
            la.psi.add_(0.01 * torch.randn_like(la.psi))
    logits, aux = model(tiny_input, return_aux=True)
    (logits.logsumexp(-1).mean() + aux["loss_dp"]).backward()
    for la in _la_blocks(model):
        assert la.theta.grad is not None and la.theta.grad.abs().sum() > 0
        assert la.psi.grad is not None and la.psi.grad.abs().sum() > 0
    downs = [m for m in model.modules() if isinstance(m, AttentionDownsample)]
    assert len(downs) == 3
    for d in downs:
        assert d.conv.weight.grad.abs().sum() > 0


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


def test_attention_downsample_shapes_and_mean_init():
    down = AttentionDownsample(2, 3, (4, 4), (2, 2), (4, 4), (2, 2))
    scores = torch.randn(5, 2, 16, 16)
    out = down(scores)
    assert out.shape == (5, 3, 4, 4)
    # mean init: constant scores stay constant
    assert torch.allclose(down(torch.full((1, 2, 16, 16), 3.0)), torch.full((1, 3, 4, 4), 3.0))


def test_same_seed_same_output(tiny_input, tiny_kwargs):
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(LaViT(**tiny_kwargs).eval()(tiny_input))
    assert torch.equal(outs[0], outs[1])


def test_save_load_identical(tmp_path, tiny_input):
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


def test_resolution_resampling(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("lavit_tiny", img_size=64, num_classes=3)
    with torch.no_grad():
        model.stages[2].blocks[2].attn.psi.add_(0.05)  # uniform extra mixing over 16 tokens
    path = tmp_path / "ckpt.pth"
    torch.save(model.state_dict(), path)
    big = timm.create_model(
        "lavit_tiny",
        img_size=128,
        num_classes=3,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=3),
    ).eval()
    out = big(torch.randn(1, 3, 128, 128))
    assert out.shape == (1, 3) and out.isfinite().all()
    psi = big.stages[2].blocks[2].attn.psi  # 8x8 grid now: 64 tokens
    assert psi.shape == (64, 64)
    assert torch.allclose(psi, torch.eye(64) + 0.05 * 16 / 64, atol=1e-5)
    assert torch.equal(big.stages[2].blocks[1].attn.theta, torch.eye(16))  # identity stays exact
    assert big.stages[0].pos_embed.shape == (1, 32 * 32, 64)


def test_resample_token_matrix_properties():
    eye = torch.eye(16)
    assert torch.equal(resample_token_matrix(eye, (4, 4), (6, 6)), torch.eye(36))
    w = torch.eye(16) + 0.1 * torch.randn(16, 16)
    assert torch.allclose(resample_token_matrix(w, (4, 4), (4, 4)), w, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit grid"):
        resample_token_matrix(w, (3, 3), (4, 4))


def test_clear_errors(tiny_model, tiny_kwargs):
    with pytest.raises(ValueError, match=r"\(48, 48\).*img_size=\(32, 32\)"):
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


def test_channels_last_input(tiny_model, tiny_input):
    ref = tiny_model(tiny_input)
    out = tiny_model(tiny_input.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(out, ref, atol=1e-5)
    cl = copy.deepcopy(tiny_model).to(memory_format=torch.channels_last)
    assert torch.allclose(cl(tiny_input), ref, atol=1e-5)


def test_bf16_autocast(tiny_model, tiny_input):
    ref = tiny_model(tiny_input)
    with autocast(torch.device("cpu"), dtype=torch.bfloat16):
        out, aux = tiny_model(tiny_input, return_aux=True)
    assert out.dtype == torch.bfloat16 and out.isfinite().all() and aux["loss_dp"].isfinite()
    assert torch.allclose(out.float(), ref, atol=0.1)


@pytest.mark.slow
def test_torch_compile_cpu():
    """Inductor on CPU, fullgraph (no graph breaks); 2-stage model to bound compile time."""
    torch.manual_seed(0)
    kw = dict(img_size=16, num_classes=3, depths=(2, 2), la_depths=(1, 1), embed_dims=(16, 32))
    model = LaViT(**kw, num_heads=(1, 2), mlp_ratios=(2, 2), sr_ratios=(2, 1)).eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-5)


@pytest.mark.slow
def test_onnx_export_fixed_size(tmp_path, tiny_model, tiny_input):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    path = tmp_path / "lavit.onnx"
    torch.onnx.export(tiny_model, (tiny_input,), str(path), dynamo=True, verbose=False)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    out = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: tiny_input.numpy()})[0]
    assert torch.allclose(torch.from_numpy(out), tiny_model(tiny_input), atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_backward_on_device(device, tiny_input, tiny_kwargs):
    torch.manual_seed(0)
    model = LaViT(**tiny_kwargs).to(device).train()
    logits, aux = model(tiny_input.to(device), return_aux=True)
    (logits.sum() + aux["loss_dp"]).backward()
    assert logits.device.type == device
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
