"""The Distiller keeps the teacher frozen and in eval mode, and honours the loss contract."""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from lab_common.distill import Distiller, features_and_logits


class KLLoss(nn.Module):
    """A tiny loss with a learnable scale, to check the loss-parameter plumbing."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.epochs: list[tuple[int, int]] = []

    def set_epoch(self, epoch: int, num_epochs: int) -> None:
        self.epochs.append((epoch, num_epochs))

    def forward(self, s, t, target):
        kd = F.kl_div(F.log_softmax(s * self.scale, -1), F.softmax(t, -1), reduction="batchmean")
        return {"loss_ce": F.cross_entropy(s, target), "loss_kd": kd}


class FeatureLoss(nn.Module):
    needs_features = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, torch.Size] = {}

    def forward(self, s, t, target, *, student_features, teacher_features):
        self.seen = {"s": student_features.shape, "t": teacher_features.shape}
        assert not teacher_features.requires_grad
        return {"loss_feat": student_features.mean() - teacher_features.mean()}


def _models():
    torch.manual_seed(0)
    student = timm.create_model("cifar_resnet20", num_classes=10, in_chans=1, depth=8)
    teacher = timm.create_model("cifar_wrn_16_1", num_classes=10, in_chans=1)
    return student, teacher


def test_teacher_frozen_in_eval_and_unchanged_after_steps():
    student, teacher = _models()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Distiller(student, teacher, KLLoss())
    distiller.train()
    assert distiller.student.training and not distiller.teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    params = list(distiller.trainable_parameters())
    assert {id(p) for p in params} == {id(p) for p in student.parameters()} | {
        id(distiller.loss.scale)
    }
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    s_before = next(iter(student.parameters())).clone()
    for _ in range(3):
        logits, losses = distiller(x, y)
        assert logits.shape == (8, 10) and set(losses) == {"loss_ce", "loss_kd"}
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    after = teacher.state_dict()  # weights *and* BN running statistics
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(s_before, next(iter(student.parameters())))
    assert distiller.loss.scale.grad is not None
    distiller.eval()
    distiller.train(True)
    assert not distiller.teacher.training


def test_feature_hook_passes_unpooled_maps():
    student, teacher = _models()
    loss = FeatureLoss()
    distiller = Distiller(student, teacher, loss)
    logits, losses = distiller(torch.randn(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    assert loss.seen == {"s": (4, 64, 7, 7), "t": (4, 64, 7, 7)}
    assert logits.shape == (4, 10)
    losses["loss_feat"].backward()


def test_custom_feature_function_and_missing_forward_features():
    student = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    _, teacher = _models()

    def flat_features(model, x):
        return x.flatten(1), model(x)

    distiller = Distiller(student, teacher, FeatureLoss(), student_features=flat_features)
    distiller(torch.randn(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    assert distiller.loss.seen["s"] == (2, 784)
    with pytest.raises(TypeError, match="feature function"):
        features_and_logits(student, torch.randn(2, 1, 28, 28))


def test_set_epoch_forwarded_and_bad_inputs():
    student, teacher = _models()
    distiller = Distiller(student, teacher, KLLoss())
    distiller.set_epoch(3, 10)
    assert distiller.loss.epochs == [(3, 10)]
    with pytest.raises(ValueError, match="same module"):
        Distiller(student, student, KLLoss())
    with pytest.raises(TypeError, match="nn.Module"):
        Distiller(student, teacher, lambda s, t, y: {})

    class BadLoss(nn.Module):
        def forward(self, s, t, y):
            return {"kd": s.sum()}

    with pytest.raises(TypeError, match="loss_"):
        Distiller(student, teacher, BadLoss())(torch.randn(2, 1, 28, 28), torch.zeros(2).long())
