from functools import partial

import pytest
import torch
import torch.nn.functional as F

from gp_maml import (
    BatchNorm2d,
    ChannelsLastMaxPool2d,
    Conv4,
    ElementwiseBackwardMaxPool2d,
    FusedBatchNorm2d,
    MaxPool2d,
    SampleWeightedBatchNorm2d,
    swap_layers,
)


def _bn(channels: int = 6) -> BatchNorm2d:
    torch.manual_seed(0)
    bn = BatchNorm2d(channels).double()
    torch.nn.init.normal_(bn.weight)
    torch.nn.init.normal_(bn.bias)
    return bn


@pytest.mark.parametrize("variant", [BatchNorm2d, FusedBatchNorm2d])
def test_batch_norm_matches_torch(variant):
    ours = variant.from_layer(_bn())
    ref = torch.nn.BatchNorm2d(6, track_running_stats=False).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 6, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x))
    assert ours.state_dict().keys() == ref.state_dict().keys()


def test_sample_weighted_batch_norm_equals_batch_norm_on_the_subset():
    bn = _bn(4)
    x = torch.randn(3, 7, 4, 5, 5, dtype=torch.float64)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.float64)
    keep = mask.bool()
    weighted = SampleWeightedBatchNorm2d.from_layer(bn, mask)
    assert weighted.weight is bn.weight and weighted.bias is bn.bias  # shared parameters
    out = weighted(x[0])
    torch.testing.assert_close(out[keep], bn(x[0][keep]))
    assert not torch.allclose(bn(x[0])[keep], bn(x[0][keep]))  # unweighted stats differ
    # under vmap, with a per-task mask
    masks = torch.stack([mask, 1 - mask, torch.ones(7, dtype=torch.float64)])

    def weighted_forward(xb, wb):
        return SampleWeightedBatchNorm2d.from_layer(bn, wb)(xb)

    batched = torch.func.vmap(weighted_forward)(x, masks)
    for b in range(3):
        sel = masks[b].bool()
        torch.testing.assert_close(batched[b][sel], bn(x[b][sel]))


@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode",
    [(2, None, 0, False), (3, 2, 1, False), (2, None, 0, True), (3, None, 0, False)],
)
def test_max_pool_eager_cpu_path_is_torchs_function(kernel, stride, padding, ceil_mode):
    # eager on CPU the pool runs torch's kernel on a channels-last copy: the same values,
    # gradients (ties: small integers) and double backward as nn.MaxPool2d
    torch.manual_seed(0)
    pool = ChannelsLastMaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    ref_pool = torch.nn.MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
    x = torch.randint(0, 3, (2, 3, 9, 8)).double().requires_grad_()
    out, ref = pool(x), ref_pool(x)
    assert out.grad_fn.name() == "_ChannelsLastMaxPoolBackward"  # really the fast path
    assert out.is_contiguous()  # handed on in the input's layout
    g = torch.randn_like(ref, requires_grad=True)
    (grad,) = torch.autograd.grad(out, x, g, create_graph=True)
    (ref_grad,) = torch.autograd.grad(ref, x, g, create_graph=True)
    assert torch.equal(out, ref) and torch.equal(grad, ref_grad)
    h = torch.randn_like(grad)
    assert torch.equal(
        torch.autograd.grad((grad * h).sum(), g)[0], torch.autograd.grad((ref_grad * h).sum(), g)[0]
    )
    x64 = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(pool, x64)


def test_max_pool_under_vmap_is_torchs_pool():
    pool = MaxPool2d(2)
    x = torch.randn(3, 2, 4, 6, 6)
    out = torch.func.vmap(pool)(x)
    expected = F.max_pool2d(x.flatten(0, 1), 2).view(3, 2, 4, 3, 3)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("size", [8, 7])  # 7: the last row and column are outside every window
def test_max_pool_elementwise_backward_matches_torch(size):
    torch.manual_seed(0)
    pool = MaxPool2d(2)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, size // 2, size // 2, dtype=torch.float64)
    ref = F.max_pool2d(x, 2)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    fast = swap_layers(pool, max_pool=ElementwiseBackwardMaxPool2d)
    assert type(fast) is ElementwiseBackwardMaxPool2d and type(pool) is MaxPool2d
    out = fast(x)
    assert out.grad_fn.name() != ref.grad_fn.name()  # really the elementwise backward
    (grad,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool_elementwise_backward_breaks_ties_like_torch(k):
    # flat regions (Omniglot's background) tie inside windows: torch's backward picks the
    # first maximum in row-major order; giving every tie the gradient would multiply it
    torch.manual_seed(0)
    x = torch.randint(0, 2, (2, 3, 7, 7)).double().requires_grad_()
    g = torch.randn(2, 3, 7 // k, 7 // k, dtype=torch.float64)
    (ref,) = torch.autograd.grad(F.max_pool2d(x, k), x, g)
    (grad,) = torch.autograd.grad(ElementwiseBackwardMaxPool2d(k)(x), x, g)
    torch.testing.assert_close(grad, ref)


def test_max_pool_elementwise_backward_only_for_non_overlapping_windows():
    x = torch.randn(1, 2, 7, 7, requires_grad=True)
    pool = ElementwiseBackwardMaxPool2d(3, stride=2, padding=1)
    out = pool(x)
    assert out.grad_fn.name() == F.max_pool2d(x, 3, 2, 1).grad_fn.name()  # torch's pool
    torch.testing.assert_close(out, F.max_pool2d(x, 3, 2, 1))


@pytest.mark.slow
def test_max_pool_elementwise_backward_compiled():
    torch.manual_seed(0)
    pool = ElementwiseBackwardMaxPool2d(2)
    x = torch.randint(0, 3, (2, 4, 6, 6)).float().requires_grad_()  # many ties
    w = torch.randn(2, 4, 3, 3)
    (ref,) = torch.autograd.grad((F.max_pool2d(x, 2) * w).sum(), x)
    compiled = torch.compile(lambda t: (pool(t) * w).sum(), dynamic=False)
    (grad,) = torch.autograd.grad(compiled(x), x)
    torch.testing.assert_close(grad, ref)


@pytest.mark.slow
def test_compiled_fused_batch_norm_is_the_same_function():
    bn = _bn(4)
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    fused = FusedBatchNorm2d.from_layer(bn)
    plain = torch.compile(bn, dynamic=False)(x)  # the elementary version
    compiled_fused = torch.compile(fused, dynamic=False)(x)  # torch's fused kernel
    torch.testing.assert_close(plain, compiled_fused)
    torch.testing.assert_close(compiled_fused, bn(x))


def test_swap_layers_builds_a_view_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = Conv4(1, 5, 8, 28)
    before = {n: type(m) for n, m in model.named_modules()}
    view = swap_layers(model, batch_norm=FusedBatchNorm2d, max_pool=ChannelsLastMaxPool2d)
    assert {n: type(m) for n, m in model.named_modules()} == before  # not modified
    kinds = {type(m) for m in view.modules()}
    assert {FusedBatchNorm2d, ChannelsLastMaxPool2d} <= kinds
    assert not {BatchNorm2d, MaxPool2d} & kinds
    # the same parameter tensors under the same names; modules without swapped layers shared
    assert dict(view.named_parameters()).keys() == dict(model.named_parameters()).keys()
    for (_, p), (_, q) in zip(view.named_parameters(), model.named_parameters(), strict=True):
        assert p is q
    assert view.head is model.head and view.features[0] is model.features[0]
    assert view.features is not model.features
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(view(x), model(x))
    # nothing to swap: the model itself; a class already in place is kept
    assert swap_layers(model) is model
    assert swap_layers(model, batch_norm=BatchNorm2d, max_pool=MaxPool2d) is model
    assert swap_layers(view, batch_norm=FusedBatchNorm2d, max_pool=ChannelsLastMaxPool2d) is view
    # back to the safe layers from any variant
    safe = swap_layers(view, batch_norm=BatchNorm2d, max_pool=MaxPool2d)
    assert {type(m) for m in safe.modules()} >= {BatchNorm2d, MaxPool2d}
    # a factory function (here with a per-call sample weight)
    w = torch.ones(3)
    weighted = swap_layers(
        model, batch_norm=partial(SampleWeightedBatchNorm2d.from_layer, sample_weight=w)
    )
    assert all(m.sample_weight is w for m in weighted.modules() if isinstance(m, BatchNorm2d))
    torch.testing.assert_close(weighted(x), model(x))


def test_swap_layers_view_keeps_its_own_dicts():
    # torch.func.functional_call swaps tensors into the view's parameter dicts while it runs:
    # a copied container (one with a swapped layer below it) must not share the model's dict
    class Scaled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))
            self.bn = BatchNorm2d(2)

        def forward(self, x):
            seen.append((self.scale, model.scale))
            return self.bn(x) * self.scale

    seen = []
    model = Scaled()
    view = swap_layers(model, batch_norm=FusedBatchNorm2d)
    assert view is not model and type(view.bn) is FusedBatchNorm2d
    assert view.scale is model.scale
    new_scale = torch.full((), 3.0)
    params = {**dict(model.named_parameters()), "scale": new_scale}
    out = torch.func.functional_call(view, params, (torch.randn(4, 2, 3, 3),))
    ((view_scale, model_scale),) = seen
    assert view_scale is new_scale and model_scale is model.scale
    assert isinstance(model_scale, torch.nn.Parameter)
    assert out.shape == (4, 2, 3, 3)
