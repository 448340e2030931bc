"""Documented token shapes for timm ViT / CNN, torchvision CNN / ViT and callables."""

import gc
import pickle
import weakref

import pytest
import timm
import torch
import torchvision
import torchvision.models.feature_extraction as tv_fx

from lab_common.distill import Distiller  # importing lab_common.distill registers cifar_*
from trg_kd import TRGLoss
from trg_kd.extraction import TokenExtractor

X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _vit(name="vit_tiny_patch16_224"):
    return timm.create_model(name, pretrained=False, img_size=32, patch_size=8, num_classes=10)


@pytest.mark.parametrize(
    "name,prefix", [("vit_tiny_patch16_224", 1), ("deit_tiny_distilled_patch16_224", 2)]
)
def test_timm_vit_drops_prefix_tokens(name, prefix):
    model = _vit(name).eval()
    tokens, logits = TokenExtractor()(model, X32)
    assert model.num_prefix_tokens == prefix
    assert tokens.shape == (2, 16, 192) and logits.shape == (2, 10)  # (32 / 8)^2 patch tokens
    feats = model.forward_features(X32)
    torch.testing.assert_close(tokens, feats[:, prefix:])
    torch.testing.assert_close(logits, model(X32))


def test_timm_vit_intermediate_block():
    model = _vit().eval()
    tokens, logits = TokenExtractor(index=5)(model, X32)
    assert tokens.shape == (2, 16, 192) and logits.shape == (2, 10)


def test_timm_cnn_map_to_tokens():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    tokens, logits = TokenExtractor("timm")(model, x)
    assert tokens.shape == (2, 4, 512)  # 64 / 32 = 2x2 grid of 512-wide tokens
    torch.testing.assert_close(logits, model(x))
    inter, _ = TokenExtractor(index=2)(model, x)
    assert inter.shape == (2, 64, 128)  # layer2: stride 8 -> 8x8 grid
    assert TokenExtractor().token_shape(model, (3, 64, 64)) == (4, 512)


def test_zoo_model():
    model = timm.create_model("cifar_resnet8x4", num_classes=10).eval()
    tokens, logits = TokenExtractor()(model, X32)
    assert tokens.shape == (2, 64, 256) and logits.shape == (2, 10)


def test_torchvision_resnet18():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    ext = TokenExtractor()
    tokens, logits = ext(model, x)
    assert tokens.shape == (2, 4, 512)
    torch.testing.assert_close(logits, model(x))
    tokens3, _ = TokenExtractor("torchvision", node="layer3")(model, x)
    assert tokens3.shape == (2, 16, 256)
    # the extractor shares the model's parameters: gradients reach the model
    model.train()
    t, z = ext(model, x)
    (t.sum() + z.sum()).backward()
    assert model.conv1.weight.grad is not None
    with pytest.raises(ValueError, match="graph node 'nope'"):
        TokenExtractor("torchvision", node="nope")(model, x)


def test_one_extractor_traces_each_torchvision_model_once(monkeypatch):
    traced = []

    def counting(model, *args, **kwargs):
        traced.append(id(model))
        return create(model, *args, **kwargs)

    create = tv_fx.create_feature_extractor
    monkeypatch.setattr(tv_fx, "create_feature_extractor", counting)
    torch.manual_seed(0)
    student = torchvision.models.resnet18(num_classes=10).eval()
    teacher = torchvision.models.resnet34(num_classes=10).eval()
    ext = TokenExtractor("torchvision")
    x = torch.randn(2, 3, 64, 64)
    for _ in range(3):  # a Distiller's order: student, teacher, student, ...
        for model in (student, teacher):
            tokens, logits = ext(model, x)
            torch.testing.assert_close(logits, model(x))
    assert traced == [id(student), id(teacher)]
    assert pickle.loads(pickle.dumps(ext))(student, x)[0].shape == tokens.shape
    gone = weakref.ref(teacher)
    del teacher, model
    gc.collect()
    assert gone() is None  # the cache does not keep a model alive


def test_torchvision_vit_drops_class_token():
    model = torchvision.models.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=10,
    ).eval()
    tokens, logits = TokenExtractor()(model, X32)
    assert tokens.shape == (2, 16, 16) and logits.shape == (2, 10)


def test_callable_source():
    conv = torch.nn.Conv2d(3, 5, 3, stride=4, padding=1)

    def fn(model, x):
        f = model(x)
        return f, f.mean((2, 3))

    tokens, logits = TokenExtractor(fn=fn)(conv, X32)
    assert tokens.shape == (2, 64, 5) and logits.shape == (2, 5)


def test_errors():
    with pytest.raises(ValueError, match="source"):
        TokenExtractor("keras")
    with pytest.raises(ValueError, match="fn="):
        TokenExtractor("callable")
    with pytest.raises(TypeError, match="forward_features"):
        TokenExtractor("timm")(torch.nn.Linear(2, 2), torch.randn(1, 2))


def test_vit_student_cnn_teacher_in_distiller():
    teacher = timm.create_model("cifar_resnet8x4", num_classes=10)
    student = _vit()
    ext = TokenExtractor()
    loss = TRGLoss(
        ext.token_shape(student, (3, 32, 32))[1], ext.token_shape(teacher, (3, 32, 32))[1]
    )
    distiller = Distiller(student, teacher, loss, student_features=ext, teacher_features=ext)
    logits, losses = distiller(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert logits.shape == (4, 10)
    assert set(losses) == {"loss_ce", "loss_kd", "loss_inner", "loss_local", "loss_global"}
    sum(losses.values()).backward()
    assert loss.projector.proj.weight.grad is not None
