"""check_logits_targets: the one input check of KDLoss, CLKD/DKD, TRG and SupervisedModel."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lab_common.distill import KDLoss, SupervisedModel, check_logits_targets, kd_loss

S, T = torch.randn(4, 3), torch.randn(4, 3)
Y = torch.tensor([0, 2, 1, 2])


def _kd(s, t, y):
    return KDLoss(ce_weight=1.0, kd_weight=1.0, temperature=4.0)(s, t, y)


def test_good_input_passes_and_small_integer_targets_become_int64():
    assert check_logits_targets(S, T, Y, loss="x") is Y  # int64 is returned as is
    for dtype in (torch.int32, torch.int16, torch.uint8):
        out = check_logits_targets(S, T, Y.to(dtype), loss="x")
        assert out.dtype == torch.int64 and out.tolist() == Y.tolist()
    # int32 targets used to fail inside F.cross_entropy; now the loss is the int64 one
    ref = _kd(S, T, Y)
    got = _kd(S, T, Y.int())
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert check_logits_targets(S, None, Y, loss="ce").dtype == torch.int64


@pytest.mark.parametrize(
    ("s", "t", "y", "message"),
    [
        (torch.randn(3), torch.randn(3), Y[:3], r"KD: expected \(B, C\) logits, got shape \(3,\)"),
        (S, torch.randn(4, 3, 1), Y, r"shape \(4, 3, 1\) for teacher_logits"),
        (torch.randn(0, 3), torch.randn(0, 3), Y[:0], r"batch of at least 1, got .* \(0, 3\)"),
        (S, torch.randn(4, 5), Y, r"student logits \(4, 3\) and teacher logits \(4, 5\) differ"),
        (torch.randn(4, 1), torch.randn(4, 1), Y * 0, "at least 2 classes"),
        (S, T, Y.float(), r"integer class indices of shape \(4,\), got torch.float32"),
        (S, T, Y > 0, r"integer class indices .* got torch.bool"),
        (S, T, Y[:3], r"shape \(4,\), got torch.int64 \(3,\)"),
        (S, T, torch.tensor([0, 3, 1, 2]), r"in \[0, 3\) .* got values from 0 to 3"),
        (S, T, torch.tensor([0, -1, 1, 2]), r"in \[0, 3\) .* got values from -1 to 2"),
        (S.clone().fill_(float("nan")), T, Y, r"student_logits has 12 non-finite values"),
        (S, torch.tensor([[0.0, 1, float("inf")]] * 4), Y, r"teacher_logits has 4 non-finite"),
    ],
)
def test_bad_input_is_one_clear_value_error(s, t, y, message):
    with pytest.raises(ValueError, match=message):
        check_logits_targets(s, t, y, loss="KD")
    with pytest.raises(ValueError, match=message.removeprefix("KD: ")):
        _kd(s, t, y)  # the losses call it: a clear error instead of NaN or a raw torch error


def test_kd_loss_no_longer_returns_nan_for_nan_or_empty_input():
    with pytest.raises(ValueError, match="non-finite"):
        kd_loss(S * float("nan"), T, Y, ce_weight=1.0, kd_weight=1.0, temperature=4.0)
    with pytest.raises(ValueError, match="batch of at least 1"):
        kd_loss(S[:0], T[:0], Y[:0], ce_weight=1.0, kd_weight=1.0, temperature=4.0)


def test_min_batch_and_extra_finite_tensors():
    with pytest.raises(ValueError, match=r"CLKD needs a batch of at least 2.*drop_last=True"):
        check_logits_targets(S[:1], T[:1], Y[:1], loss="CLKD", min_batch=2)
    feats = torch.zeros(4, 8, 2, 2)
    feats[1, 0, 0, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"TRG: features has 1 non-finite values .*\(4, 8, 2, 2\)"):
        check_logits_targets(S, T, Y, loss="TRG", finite={"features": feats})


def test_supervised_model_checks_its_targets():
    model = SupervisedModel(nn.Linear(5, 3))
    x = torch.randn(4, 5)
    logits, losses = model(x, Y.int())  # int32 labels from a custom dataset are fine
    torch.testing.assert_close(losses["loss_ce"], F.cross_entropy(logits, Y))
    with pytest.raises(
        ValueError, match=r"cross-entropy: target class indices must be in \[0, 3\)"
    ):
        model(x, Y + 1)
