"""CLKD loss: hand-computed terms, zeros, invariances, gradients, dtypes and errors."""

import math

import pytest
import torch

from clkd import (
    CLKDConfig,
    CLKDLoss,
    class_correlation_loss,
    class_correlation_matrix,
    class_loss,
    clkd_loss,
    instance_loss,
)
from lab_common.testing import DEVICES

S = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
T = torch.tensor([[4.0, 3.0], [0.0, 2.0]])
Y = torch.tensor([1, 0])
TERMS = ("loss_ins", "loss_cla", "loss_cc")


def random_logits(b=6, c=5, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, c, generator=g, dtype=dtype) * 3
    t = torch.randn(b, c, generator=g, dtype=dtype) * 3
    return s, t, torch.randint(0, c, (b,), generator=g)


def test_instance_term_hand_computed():
    # rows normalised: S -> [.6, .8], [1, 0]; T -> [.8, .6], [0, 1]
    # squared differences .04, .04, 1, 1 -> mean 0.52
    assert instance_loss(S, T).item() == pytest.approx(0.52)


def test_class_term_hand_computed():
    # columns: S (3, 1)/√10, (4, 0)/4 = (1, 0); T (4, 0)/4 = (1, 0), (3, 2)/√13
    r10, r13 = math.sqrt(10), math.sqrt(13)
    expected = ((3 / r10 - 1) ** 2 + (1 / r10) ** 2 + (1 - 3 / r13) ** 2 + (2 / r13) ** 2) / 4
    assert class_loss(S, T).item() == pytest.approx(expected)


def test_correlation_term_hand_computed():
    # centred S = [[1, 2], [-1, -2]] -> G_s = [[2, 4], [4, 8]] (B - 1 = 1)
    # centred T = [[2, .5], [-2, -.5]] -> G_t = [[8, 2], [2, .5]]
    # ‖G_s − G_t‖² = 36 + 4 + 4 + 56.25 = 100.25; / C² = 25.0625
    assert class_correlation_loss(S, T, "covariance").item() == pytest.approx(25.0625)


def test_pearson_correlation_term_hand_computed():
    # student columns (1, 2, 3), (3, 2, 1): correlation -1; teacher (1, 2, 3), (1, 3, 2):
    # centred (-1, 0, 1), (-1, 1, 0) -> r = 1 / (√2·√2) = 0.5
    # off-diagonal differences -1.5 (twice), diagonals 1 - 1 -> (2 · 2.25) / C² = 1.125
    s = torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [2.0, 3.0], [3.0, 2.0]])
    expected_t = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    torch.testing.assert_close(class_correlation_matrix(t), expected_t)
    assert class_correlation_loss(s, t, "pearson").item() == pytest.approx(1.125)
    assert class_correlation_loss(s, t).item() == pytest.approx(1.125)  # the default


def test_pearson_term_invariant_to_logit_scale_and_shift_and_bounded():
    s, t, _ = random_logits(b=8, c=5)
    base = class_correlation_loss(s, t, "pearson")
    scale = torch.tensor([0.01, 1.0, 7.0, 100.0, 3.0])  # per class, positive
    shift = torch.tensor([5.0, -2.0, 0.0, 40.0, 1.0])
    torch.testing.assert_close(class_correlation_loss(s * scale + shift, t, "pearson"), base)
    torch.testing.assert_close(class_correlation_loss(s * 1000.0, t * 0.1, "pearson"), base)
    assert 0 <= base.item() <= 4.0  # entries of G in [-1, 1]
    # the covariance form is not: it grows with the 4th power of a common scale
    cov = class_correlation_loss(s * 10.0, t * 10.0, "covariance")
    torch.testing.assert_close(cov, 1e4 * class_correlation_loss(s, t, "covariance"))


def test_pearson_constant_class_column_is_finite():
    s, t, _ = random_logits(b=4, c=3, dtype=torch.float64)
    s[:, 1] = 2.5  # constant over the batch: zero correlation with the other classes
    s.requires_grad_(True)
    loss = class_correlation_loss(s, t, "pearson")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert class_correlation_matrix(s.detach())[1].abs().max() == 0


@pytest.mark.parametrize("correlation", ["pearson", "covariance"])
def test_correlation_term_gradcheck_float64(correlation):
    s, t, _ = random_logits(b=5, c=4, dtype=torch.float64)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: class_correlation_loss(x, t, correlation), (s,))
    out = clkd_loss(s, t, torch.zeros(5, dtype=torch.long), correlation=correlation)
    assert torch.autograd.gradcheck(
        lambda x: clkd_loss(x, t, torch.zeros(5, dtype=torch.long), correlation=correlation)[
            "loss_cc"
        ],
        (s,),
    )
    assert out["loss_cc"].dtype == torch.float64


def test_bad_correlation_raises():
    s, t, y = random_logits()
    with pytest.raises(ValueError, match="correlation must be one of"):
        clkd_loss(s, t, y, correlation="spearman")
    with pytest.raises(ValueError, match="'spearman'"):
        CLKDConfig(correlation="spearman")
    with pytest.raises(ValueError, match="correlation must be one of"):
        class_correlation_loss(s, t, "cov")


def test_softmax_instance_term_hand_computed():
    s = torch.zeros(2, 2)
    t = torch.tensor([[math.log(3.0), 0.0]] * 2)  # softmax -> (.75, .25) vs (.5, .5)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert instance_loss(s, t, "softmax", temperature=1.0).item() == pytest.approx(kl)
    # class level at T = 1: each column's softmax over the batch is uniform for both
    assert class_loss(s, t, "softmax", temperature=1.0).item() == pytest.approx(0.0, abs=1e-7)


def test_weights_applied_as_documented():
    out = clkd_loss(
        S,
        T,
        Y,
        ce_weight=0.3,
        logit_weight=0.5,
        class_weight=2.0,
        correlation_weight=0.4,
        correlation="covariance",
        reduction="mean",
    )
    ce = torch.nn.functional.cross_entropy(S, Y)
    torch.testing.assert_close(out["loss_ce"], 0.3 * ce)
    torch.testing.assert_close(out["loss_ins"], torch.tensor(0.5 * 0.52))
    torch.testing.assert_close(out["loss_cla"], 0.5 * 2.0 * class_loss(S, T))
    torch.testing.assert_close(out["loss_cc"], torch.tensor(0.4 * 25.0625))
    assert set(out) == {"loss_ce", *TERMS}


@pytest.mark.parametrize("variant", ["mse", "softmax"])
def test_distillation_terms_zero_when_student_equals_teacher(variant):
    s, _, y = random_logits()
    out = clkd_loss(s, s.clone(), y, variant=variant)
    for k in TERMS:
        assert out[k].item() == pytest.approx(0.0, abs=1e-6), k
    assert out["loss_ce"] > 0


@pytest.mark.parametrize("variant", ["mse", "softmax"])
def test_terms_non_negative(variant):
    for seed in range(20):
        s, t, y = random_logits(b=2 + seed % 5, c=2 + seed % 7, seed=seed)
        for k, v in clkd_loss(s, t, y, variant=variant).items():
            assert v.item() >= 0, (k, seed)


def test_instance_term_invariant_to_positive_row_scaling():
    s, t, _ = random_logits()
    scaled = s.clone()
    scaled[2] *= 7.5
    scaled[4] *= 0.01
    torch.testing.assert_close(instance_loss(scaled, t), instance_loss(s, t))
    assert not torch.allclose(class_loss(scaled, t), class_loss(s, t))  # columns do change


@pytest.mark.parametrize("variant", ["mse", "softmax"])
def test_batch_permutation_leaves_every_term_unchanged(variant):
    s, t, y = random_logits(b=8, c=6)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    a = clkd_loss(s, t, y, variant=variant)
    b = clkd_loss(s[perm], t[perm], y[perm], variant=variant)
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


@pytest.mark.parametrize("variant", ["mse", "softmax"])
def test_gradcheck_float64(variant):
    s, t, y = random_logits(b=4, c=3, dtype=torch.float64)
    s.requires_grad_(True)

    def total(x):
        return sum(clkd_loss(x, t, y, variant=variant, temperature=2.0).values())

    assert torch.autograd.gradcheck(total, (s,))
    assert total(s).dtype == torch.float64


def test_half_precision_under_autocast_is_float32_and_teacher_detached():
    s, t, y = random_logits(b=8, c=10)
    s = s.requires_grad_(True)
    t = t.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = CLKDLoss()(s.bfloat16(), t.bfloat16(), y)
    assert all(v.dtype == torch.float32 for v in out.values())
    sum(out.values()).backward()
    assert s.grad is not None and t.grad is None
    ref = clkd_loss(s.detach().bfloat16().float(), t.detach().bfloat16().float(), y)
    for k in out:
        torch.testing.assert_close(out[k].detach(), ref[k], rtol=1e-5, atol=1e-6)


def test_module_config_and_overrides():
    loss = CLKDLoss(class_weight=2.0, variant="softmax")
    assert loss.config == CLKDConfig(class_weight=2.0, variant="softmax")
    s, t, y = random_logits()
    expected = clkd_loss(s, t, y, class_weight=2.0, variant="softmax")
    for k, v in loss(s, t, y).items():
        torch.testing.assert_close(v, expected[k])
    with pytest.raises(TypeError):
        CLKDLoss(gamma=1.0)


@pytest.mark.parametrize(
    ("s", "t", "y", "match"),
    [
        (
            torch.randn(1, 5),
            torch.randn(1, 5),
            torch.tensor([0]),
            r"at least 2, got logits of shape \(1, 5\)",
        ),
        (
            torch.randn(4, 5),
            torch.randn(4, 6),
            torch.zeros(4).long(),
            r"\(4, 5\) and teacher logits \(4, 6\)",
        ),
        (
            torch.randn(4, 5),
            torch.randn(3, 5),
            torch.zeros(4).long(),
            r"\(4, 5\) and teacher logits \(3, 5\)",
        ),
        (torch.randn(4, 1), torch.randn(4, 1), torch.zeros(4).long(), "at least 2 classes"),
        (torch.randn(4, 5, 1), torch.randn(4, 5, 1), torch.zeros(4).long(), r"\(B, C\)"),
        (torch.randn(4, 5), torch.randn(4, 5), torch.zeros(3).long(), r"shape \(4,\)"),
        (torch.randn(4, 5), torch.randn(4, 5), torch.zeros(4), "integer class indices"),
        (
            torch.tensor([[0.0, float("nan")], [1, 2]]),
            torch.randn(2, 2),
            torch.zeros(2).long(),
            r"student_logits has 1 non-finite values \(e.g. \[nan\]\)",
        ),
        (
            torch.randn(2, 2),
            torch.tensor([[0.0, float("inf")], [1, 2]]),
            torch.zeros(2).long(),
            r"teacher_logits has 1 non-finite values \(e.g. \[inf\]\)",
        ),
    ],
)
def test_bad_inputs_raise_value_error_naming_shapes(s, t, y, match):
    with pytest.raises(ValueError, match=match):
        clkd_loss(s, t, y)


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (torch.tensor([0, 5, 1, 2, 3, 4]), r"in \[0, 5\) .* got values from 0 to 5"),
        (torch.tensor([0, -1, 1, 2, 3, 4]), r"in \[0, 5\) .* got values from -1 to 4"),
        (torch.tensor([0.0, 1, 1, 2, 3, 4]), "integer class indices"),
    ],
)
def test_out_of_range_negative_and_float_targets_name_the_range(y, match):
    s, t, _ = random_logits()
    for loss in (lambda: clkd_loss(s, t, y), lambda: CLKDLoss()(s, t, y)):
        with pytest.raises(ValueError, match=match):
            loss()


def test_int32_targets_are_accepted_and_give_the_int64_loss():
    s, t, y = random_logits()
    ref, got = CLKDLoss()(s, t, y), CLKDLoss()(s, t, y.int())
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_empty_batch_is_a_value_error():
    with pytest.raises(ValueError, match=r"at least 2, got logits of shape \(0, 5\)"):
        clkd_loss(torch.randn(0, 5), torch.randn(0, 5), torch.zeros(0).long())


def test_bad_config_values():
    with pytest.raises(ValueError, match="variant"):
        CLKDConfig(variant="l1")
    with pytest.raises(ValueError, match="temperature"):
        CLKDConfig(temperature=0.0)
    with pytest.raises(ValueError, match="correlation_weight"):
        CLKDConfig(correlation_weight=-1.0)
    with pytest.raises(ValueError, match="variant"):
        clkd_loss(S, T, Y, variant="cosine")


@pytest.mark.parametrize("device", DEVICES)
def test_loss_on_device_matches_cpu(device):
    s, t, y = random_logits(b=8, c=5, seed=3)
    ref = CLKDLoss()(s, t, y)
    s_dev = s.to(device).requires_grad_()
    out = CLKDLoss()(s_dev, t.to(device), y.to(device))
    sum(out.values()).backward()
    assert s_dev.grad.device.type == device and torch.isfinite(s_dev.grad).all()
    for key in ref:
        torch.testing.assert_close(out[key].cpu(), ref[key], rtol=1e-5, atol=1e-6)


def test_batchmean_reduction_sums_each_vector_and_averages_over_vectors():
    # instance: squared differences .04 + .04 (row 1) and 1 + 1 (row 2) -> (0.08 + 2) / 2
    assert instance_loss(S, T, reduction="batchmean").item() == pytest.approx(1.04)
    s, t, _ = random_logits(b=6, c=5)
    torch.testing.assert_close(
        instance_loss(s, t, reduction="batchmean"), 5 * instance_loss(s, t, reduction="mean")
    )
    torch.testing.assert_close(
        class_loss(s, t, reduction="batchmean"), 6 * class_loss(s, t, reduction="mean")
    )
    with pytest.raises(ValueError, match="reduction must be one of"):
        instance_loss(s, t, reduction="sum")
    with pytest.raises(ValueError, match="'sum'"):
        CLKDConfig(reduction="sum")


def test_defaults_are_batchmean_at_ce_weight_1_and_the_0_1_reading_stays_reachable():
    s, t, y = random_logits(b=8, c=10)
    new = CLKDLoss()(s, t, y)
    cfg = CLKDConfig()
    assert (cfg.ce_weight, cfg.reduction) == (1.0, "batchmean")
    torch.testing.assert_close(new["loss_ce"], torch.nn.functional.cross_entropy(s, y))
    torch.testing.assert_close(
        new["loss_ins"], cfg.logit_weight * instance_loss(s, t, reduction="batchmean")
    )
    old = CLKDLoss(ce_weight=0.1, reduction="mean", logit_weight=0.5, correlation_weight=0.4)(
        s, t, y
    )
    torch.testing.assert_close(old["loss_ins"], 0.5 * instance_loss(s, t))
    torch.testing.assert_close(old["loss_cla"], 0.5 * class_loss(s, t))


def test_covariance_mode_divides_by_classes_minus_one():
    # B = 3 samples, C = 2 classes: centred columns (-1, 0, 1) and (-2, 0, 2)
    z = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    g = class_correlation_matrix(z, "covariance")
    torch.testing.assert_close(g, torch.tensor([[2.0, 4.0], [4.0, 8.0]]) / (2 - 1))


def test_batch_axis_correlates_the_samples_over_the_classes():
    # rows centred over the C = 3 classes: (-1, 0, 1), (1, 0, -1), (-1, 1, 0)
    z = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    cov = class_correlation_matrix(z, "covariance", axis="batch")
    expected = torch.tensor([[2.0, -2.0, 1.0], [-2.0, 2.0, -1.0], [1.0, -1.0, 2.0]]) / (3 - 1)
    torch.testing.assert_close(cov, expected)
    pearson = class_correlation_matrix(z, "pearson", axis="batch")
    torch.testing.assert_close(pearson, expected * (3 - 1) / 2)  # every row has norm √2
    assert pearson.shape == (3, 3)  # B × B, not C × C
    s, t, y = random_logits(b=6, c=5)
    out = clkd_loss(s, t, y, correlation_axis="batch")
    direct = class_correlation_loss(s, t, "pearson", axis="batch")
    assert out["loss_cc"].item() == pytest.approx(0.4 * direct.item())
    assert direct.item() != pytest.approx(class_correlation_loss(s, t).item())
    assert CLKDLoss(correlation_axis="batch").config.correlation_axis == "batch"
    with pytest.raises(ValueError, match="correlation_axis must be one of"):
        CLKDConfig(correlation_axis="classes")
