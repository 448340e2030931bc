"""A CNN teacher distilled into a LaViT student with TRG (LaViT tokens) and with CLKD."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from lab_common import seed_everything
from lab_common.distill import Distiller  # importing lab_common.distill registers cifar_*


@pytest.fixture(scope="module")
def teacher(fashion_mnist_32):
    """cifar_resnet8 trained for 60 real steps (well above chance, far from converged)."""
    seed_everything(0)
    x, y = fashion_mnist_32
    model = timm.create_model("cifar_resnet8", num_classes=10, in_chans=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(60):
        idx = torch.arange(step * 64, step * 64 + 64) % len(x)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[:512]).argmax(1) == y[:512]).float().mean().item()
    assert acc > 0.4, f"teacher only reached {acc:.2f} on its training images"
    return model


def _distil(loss_module, teacher, data, student, steps: int = 30) -> list[float]:
    x, y = data
    distiller = Distiller(student, teacher, loss_module)
    opt = torch.optim.AdamW(distiller.trainable_parameters(), lr=2e-3)
    distiller.train()
    history = []
    for step in range(steps):
        idx = torch.arange(step * 32, step * 32 + 32) % 256  # revisit 256 images: loss must fall
        _, losses = distiller(x[idx], y[idx])
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    return history


def _assert_decreasing(history: list[float]) -> None:
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.9 * first, (
        f"loss did not decrease: first five {first:.4f}, last five {last:.4f}"
    )


def test_trg_with_lavit_tokens(teacher, fashion_mnist_32, small_lavit):
    import trg_kd

    seed_everything(1)
    student = small_lavit()
    student_dim = student.num_features
    teacher_dim = teacher.num_features
    loss = trg_kd.TRGLoss(student_dim, teacher_dim, tokens_per_image=4, k=4)
    assert loss.needs_features
    history = _distil(loss, teacher, fashion_mnist_32, student)
    _assert_decreasing(history)


def test_clkd_into_lavit(teacher, fashion_mnist_32, small_lavit):
    import clkd

    seed_everything(1)
    history = _distil(clkd.CLKDLoss(), teacher, fashion_mnist_32, small_lavit())
    _assert_decreasing(history)
