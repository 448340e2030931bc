import copy
import warnings

import pytest
import torch

from lab_common.testing import DEVICES
from trg_kd import TemperatureSchedule, TRGConfig, TRGLoss
from trg_kd.contrastive import global_relation_loss
from trg_kd.tokens import to_tokens

KEYS = {"loss_ce", "loss_kd", "loss_inner", "loss_local", "loss_global"}


def _batch(b=4, c=10, ds=8, dt=16, hw=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, c, generator=g, dtype=dtype),
        torch.randn(b, c, generator=g, dtype=dtype),
        torch.randint(0, c, (b,), generator=g),
        torch.randn(b, ds, hw, hw, generator=g, dtype=dtype),
        torch.randn(b, dt, hw, hw, generator=g, dtype=dtype),
    )


def test_returns_weighted_terms_and_backward():
    loss = TRGLoss(8, 16)
    args = list(_batch())
    args[3].requires_grad_(True)
    out = loss(*args)
    assert set(out) == KEYS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    assert args[3].grad.abs().sum() > 0 and loss.projector.proj.weight.grad is not None


def test_weights_scale_terms_and_zero_weight_skips():
    args = _batch()
    base = TRGLoss(8, 16, seed=3, inner_weight=1.0, local_weight=1.0, global_weight=1.0)
    double = TRGLoss(8, 16, seed=3, inner_weight=2.0, local_weight=2.0, global_weight=2.0)
    double.load_state_dict(base.state_dict())
    a, b = base(*args), double(*args)
    for key in ("loss_inner", "loss_local", "loss_global"):
        torch.testing.assert_close(b[key], 2 * a[key])
    torch.testing.assert_close(a["loss_ce"], b["loss_ce"])
    off = TRGLoss(8, 16, local_weight=0.0, global_weight=0.0, inner_weight=0.0)
    out = off(*_batch(b=1))  # batch of one is fine without graph terms
    assert out["loss_local"].item() == out["loss_global"].item() == out["loss_inner"].item() == 0


def test_relation_terms_zero_when_student_equals_teacher():
    logits, _, target, _, teacher = _batch(ds=16)
    loss = TRGLoss(16, 16, tokens_per_image=8, k=4)
    with torch.no_grad():
        loss.projector.proj.weight.copy_(torch.eye(16))
        loss.projector.proj.bias.zero_()
    out = loss(logits, logits, target, teacher.clone(), teacher)
    assert out["loss_kd"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["loss_inner"].item() == pytest.approx(0.0, abs=1e-7)
    assert out["loss_local"].item() == pytest.approx(0.0, abs=1e-6)


def test_global_term_uses_schedule_and_progress():
    sched = TemperatureSchedule(1.0, 0.1, "linear")
    args = _batch()
    loss = TRGLoss(8, 16, temperature=sched, tokens_per_image=16, global_weight=1.0)
    assert loss.temperature == 1.0
    loss.set_progress(1.0)
    assert loss.temperature == pytest.approx(0.1)
    out = loss(*args)
    s_nodes = loss.projector(to_tokens(args[3])).flatten(0, 1)
    t_nodes = to_tokens(args[4]).flatten(0, 1)
    ref = global_relation_loss(s_nodes, t_nodes, 0.1)
    torch.testing.assert_close(out["loss_global"], ref)
    out_p0 = loss(*args, progress=0.0)
    torch.testing.assert_close(out_p0["loss_global"], global_relation_loss(s_nodes, t_nodes, 1.0))
    with pytest.raises(ValueError, match="progress"):
        loss.set_progress(2.0)


def test_invariant_to_batch_order_when_all_tokens_are_nodes():
    args = _batch(b=6)
    loss = TRGLoss(8, 16, tokens_per_image=16, k=5)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    out = loss(*args)
    out_p = loss(*[a[perm] for a in args])
    for key in KEYS:
        torch.testing.assert_close(out[key], out_p[key], rtol=1e-5, atol=1e-6)


def test_sampling_uses_own_generator_and_resumes_from_state_dict():
    args = _batch()
    loss = TRGLoss(8, 16, tokens_per_image=3, k=2)
    loss(*args)  # advance the generator
    state = copy.deepcopy(loss.state_dict())
    rng = torch.get_rng_state()
    first = loss(*args)
    assert torch.equal(torch.get_rng_state(), rng)
    restored = TRGLoss(8, 16, tokens_per_image=3, k=2)
    restored.load_state_dict(state)
    second = restored(*args)
    for key in KEYS:
        torch.testing.assert_close(first[key], second[key])
    explicit = [loss(*args, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    torch.testing.assert_close(explicit[0]["loss_local"], explicit[1]["loss_local"])


def test_float32_under_bfloat16_autocast():
    loss = TRGLoss(8, 16)
    args = [a.bfloat16() if a.is_floating_point() else a for a in _batch()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(*args)
    assert all(v.dtype == torch.float32 for v in out.values())


def test_gradcheck_float64():
    s_logits, t_logits, target, s_feat, t_feat = _batch(
        b=3, c=4, ds=3, dt=4, hw=2, dtype=torch.float64
    )
    loss = TRGLoss(3, 4, tokens_per_image=4, k=3).double()
    s_logits.requires_grad_(True)
    s_feat.requires_grad_(True)

    def total(z, f):
        out = loss(z, t_logits, target, f, t_feat, generator=torch.Generator().manual_seed(0))
        return sum(out.values())

    assert torch.autograd.gradcheck(total, (s_logits, s_feat))


def test_accepts_vit_tokens_and_cnn_maps():
    logits, t_logits, target, _, t_feat = _batch(hw=8)
    vit_tokens = torch.randn(4, 16, 12)  # 4x4 grid
    out = TRGLoss(12, 16)(logits, t_logits, target, vit_tokens, t_feat)
    assert set(out) == KEYS


def test_errors_name_sizes():
    args = list(_batch())
    loss = TRGLoss(8, 16, tokens_per_image=2, k=8)
    with pytest.raises(
        ValueError, match=r"k=8 needs more than 8 graph nodes, got 8 \(4 images x 2"
    ):
        loss(*args)
    with pytest.raises(ValueError, match="batch of 1 is too small"):
        TRGLoss(8, 16)(*[a[:1] for a in args])
    bad = list(args)
    bad[2] = bad[2][:3]
    with pytest.raises(ValueError, match=r"TRGLoss: target must be .* shape \(4,\), got .* \(3,\)"):
        TRGLoss(8, 16)(*bad)
    bad = list(args)
    bad[4] = bad[4][:3]
    with pytest.raises(ValueError, match="mismatched batch sizes.*'teacher_features': 3"):
        TRGLoss(8, 16)(*bad)
    bad = list(args)
    bad[4] = torch.randn(4, 16, 3, 3)
    with pytest.raises(ValueError, match="student 4x4, teacher 3x3"):
        TRGLoss(8, 16)(*bad)
    bad = list(args)
    bad[3] = bad[3].clone()
    bad[3][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="student_features .* 1 non-finite"):
        TRGLoss(8, 16)(*bad)
    bad = list(args)
    bad[1] = bad[1].clone()
    bad[1][0, 0] = float("inf")
    with pytest.raises(ValueError, match="teacher_logits"):
        TRGLoss(8, 16)(*bad)


def test_logits_and_targets_checked_by_the_shared_check():
    args = list(_batch())
    loss = TRGLoss(8, 16)
    bad = list(args)
    bad[0], bad[1] = bad[0][0], bad[1][0]  # 1-D logits: used to read "mismatched batch sizes"
    with pytest.raises(ValueError, match=r"TRGLoss: expected \(B, C\) logits, got shape \(10,\)"):
        loss(*bad)
    for target, match in (
        (torch.tensor([0, 10, 1, 2]), r"in \[0, 10\) .* got values from 0 to 10"),
        (torch.tensor([0, -3, 1, 2]), r"in \[0, 10\) .* got values from -3 to 2"),
        (torch.tensor([0.0, 1, 1, 2]), "integer class indices"),
    ):
        with pytest.raises(ValueError, match=match):
            loss(*args[:2], target, *args[3:])
    with pytest.raises(ValueError, match=r"TRGLoss needs a batch of at least 1, got .*\(0, 10\)"):
        loss(*[a[:0] for a in args])
    ref_loss = TRGLoss(8, 16)
    int32 = copy.deepcopy(ref_loss)  # same projector and token-sampling generator
    ref = ref_loss(*args)
    got = int32(*args[:2], args[2].int(), *args[3:])  # int32 used to fail in cross_entropy
    for key in KEYS:
        torch.testing.assert_close(got[key], ref[key])


@pytest.mark.parametrize(
    "field,value", [("k", 0), ("sigma", 0.0), ("tokens_per_image", 0), ("local_weight", -1.0)]
)
def test_config_validation(field, value):
    with pytest.raises(ValueError, match=field):
        TRGConfig(**{field: value})


def test_set_epoch_reaches_final_temperature():
    loss = TRGLoss(8, 16, temperature=TemperatureSchedule(1.0, 0.1, "linear"))
    loss.set_epoch(0, 5)
    assert loss.temperature == 1.0
    loss.set_epoch(4, 5)
    assert loss.temperature == pytest.approx(0.1)
    with pytest.raises(ValueError, match="epoch"):
        loss.set_epoch(5, 5)


@pytest.mark.parametrize("device", DEVICES)
def test_loss_on_device_matches_cpu(device):
    args = _batch()
    ref_loss = TRGLoss(8, 16, seed=3)
    loss = copy.deepcopy(ref_loss).to(device)  # same weights and token-sampling generator
    ref = ref_loss(*args)
    dev_args = [a.to(device) for a in args]
    dev_args[3].requires_grad_(True)
    out = loss(*dev_args)
    sum(out.values()).backward()
    assert dev_args[3].grad.device.type == device and torch.isfinite(dev_args[3].grad).all()
    for key in ref:
        torch.testing.assert_close(out[key].cpu(), ref[key], rtol=1e-4, atol=1e-5)


def test_global_term_is_off_by_default_and_on_when_weighted():
    args = _batch()
    assert TRGConfig().global_weight == 0.0
    off_loss = TRGLoss(8, 16, seed=3)
    on_loss = TRGLoss(8, 16, seed=3, global_weight=5.0)
    on_loss.load_state_dict(off_loss.state_dict())  # same projector and sampling generator
    out = off_loss(*args)
    assert out["loss_global"].item() == 0.0 and not out["loss_global"].requires_grad
    on = on_loss(*args)
    assert on["loss_global"].item() > 0
    for key in ("loss_ce", "loss_kd", "loss_inner", "loss_local"):  # the other terms unchanged
        torch.testing.assert_close(on[key], out[key])


def test_one_token_per_image_warns_once_that_loss_inner_is_zero():
    s_logits, t_logits, y, _, _ = _batch(b=8)  # 8 graph nodes: enough for k = 4
    s_map, t_map = torch.randn(8, 8, 1, 1), torch.randn(8, 16, 1, 1)
    loss = TRGLoss(8, 16)
    with pytest.warns(UserWarning, match=r"student 1x1, teacher 1x1\) give 1 token per image"):
        out = loss(s_logits, t_logits, y, s_map, t_map)
    assert out["loss_inner"] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(s_logits, t_logits, y, s_map, t_map)  # once per loss
        TRGLoss(8, 16, inner_weight=0.0)(s_logits, t_logits, y, s_map, t_map)
        TRGLoss(8, 16)(s_logits, t_logits, y, torch.randn(8, 8, 2, 2), torch.randn(8, 16, 2, 2))
