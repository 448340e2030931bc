import pytest
import torch

from gp_maml import Conv4, ResNet12, create_backbone, create_learner


@pytest.mark.parametrize("hidden,size,feat", [(32, 28, 32), (64, 28, 64), (64, 84, 1600)])
def test_conv4_shapes(hidden, size, feat):
    m = Conv4(3, 5, hidden, size)
    assert m.num_features == feat
    assert m(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert m.forward_features(torch.randn(2, 3, size, size)).shape == (2, feat)


def test_resnet12_shapes():
    m = ResNet12(3, 5, widths=(8, 16, 16, 32))
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5) and m.num_features == 32


def test_batch_norm_uses_batch_statistics():
    m = Conv4(1, 5, 32, 28).eval()
    x = torch.randn(4, 1, 28, 28)
    # eval mode still normalises with the batch's statistics: sample 0 depends on its batch
    other = torch.cat([x[:1], 5 * torch.randn(3, 1, 28, 28)])
    assert not torch.allclose(m(x)[0], m(other)[0])
    assert not any(
        b.track_running_stats for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)
    )


def test_running_stats_batch_norm_refused():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten()
    )
    model.add_module("head", torch.nn.LazyLinear(5))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        create_learner("maml", model)


def test_unknown_backbone():
    with pytest.raises(ValueError, match="conv4-32"):
        create_backbone("vgg", in_chans=1, num_classes=5, img_size=28)
    with pytest.raises(ValueError, match="img_size"):
        Conv4(1, 5, 32, 8)


def test_batch_norm_matches_torch():
    from gp_maml import BatchNorm2d

    ours, ref = BatchNorm2d(6), torch.nn.BatchNorm2d(6, track_running_stats=False)
    torch.nn.init.normal_(ours.weight)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 6, 4, 4)
    torch.testing.assert_close(ours(x), ref(x))


def test_sample_weighted_batch_norm_equals_batch_norm_on_the_subset():
    from gp_maml import BatchNorm2d, sample_weighted_batch_norm

    torch.manual_seed(0)
    bn = BatchNorm2d(4).double()
    torch.nn.init.normal_(bn.weight)
    x = torch.randn(3, 7, 4, 5, 5, dtype=torch.float64)
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1], dtype=torch.float64)
    keep = mask.bool()
    with sample_weighted_batch_norm(bn, mask) as layers:
        assert layers == 1
        out = bn(x[0])
    assert bn.sample_weight is None  # restored on exit
    torch.testing.assert_close(out[keep], bn(x[0][keep]))
    assert not torch.allclose(bn(x[0])[keep], bn(x[0][keep]))  # unweighted stats differ
    # under vmap, with a per-task mask
    masks = torch.stack([mask, 1 - mask, torch.ones(7, dtype=torch.float64)])

    def weighted(xb, wb):
        with sample_weighted_batch_norm(bn, wb):
            return bn(xb)

    batched = torch.func.vmap(weighted)(x, masks)
    for b in range(3):
        sel = masks[b].bool()
        torch.testing.assert_close(batched[b][sel], bn(x[b][sel]))


@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode",
    [(2, None, 0, False), (3, 2, 1, False), (2, None, 0, True), (3, None, 0, False)],
)
def test_max_pool_eager_cpu_path_is_torchs_function(kernel, stride, padding, ceil_mode):
    from gp_maml import MaxPool2d

    # eager on CPU the pool runs torch's kernel on a channels-last copy: the same values,
    # gradients (ties: small integers) and double backward as nn.MaxPool2d
    torch.manual_seed(0)
    pool = MaxPool2d(kernel, stride, padding, ceil_mode=ceil_mode)
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
    assert torch.autograd.gradgradcheck(pool, torch.randn(2, 3, 6, 6, dtype=torch.float64,
                                                          requires_grad=True))  # fmt: skip


def test_max_pool_under_vmap_is_torchs_pool():
    from gp_maml import MaxPool2d

    pool = MaxPool2d(2)
    x = torch.randn(3, 2, 4, 6, 6)
    out = torch.func.vmap(pool)(x)
    torch.testing.assert_close(out, torch.nn.functional.max_pool2d(x.flatten(0, 1), 2).view(
        3, 2, 4, 3, 3))  # fmt: skip


@pytest.mark.parametrize("size", [8, 7])  # 7: the last row and column are outside every window
def test_max_pool_elementwise_backward_matches_torch(size):
    from gp_maml import MaxPool2d, fast_compiled_layers

    torch.manual_seed(0)
    pool = MaxPool2d(2)
    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, size // 2, size // 2, dtype=torch.float64)
    ref = torch.nn.functional.max_pool2d(x, 2)
    (ref_grad,) = torch.autograd.grad(ref, x, g)
    with fast_compiled_layers(pool) as layers:
        assert layers == 1 and pool.outside_transforms
        out = pool(x)
    assert not pool.outside_transforms  # restored on exit
    assert out.grad_fn.name() != ref.grad_fn.name()  # really the elementwise backward
    (grad,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool_elementwise_backward_breaks_ties_like_torch(k):
    from gp_maml import MaxPool2d, fast_compiled_layers

    # flat regions (Omniglot's background) tie inside windows: torch's backward picks the
    # first maximum in row-major order; giving every tie the gradient would multiply it
    torch.manual_seed(0)
    x = torch.randint(0, 2, (2, 3, 7, 7)).double().requires_grad_()
    g = torch.randn(2, 3, 7 // k, 7 // k, dtype=torch.float64)
    (ref,) = torch.autograd.grad(torch.nn.functional.max_pool2d(x, k), x, g)
    pool = MaxPool2d(k)
    with fast_compiled_layers(pool):
        (grad,) = torch.autograd.grad(pool(x), x, g)
    torch.testing.assert_close(grad, ref)


def test_max_pool_elementwise_backward_compiled():
    from gp_maml import MaxPool2d, fast_compiled_layers

    torch.manual_seed(0)
    pool = MaxPool2d(2)
    x = torch.randint(0, 3, (2, 4, 6, 6)).float().requires_grad_()  # many ties
    w = torch.randn(2, 4, 3, 3)
    (ref,) = torch.autograd.grad((torch.nn.functional.max_pool2d(x, 2) * w).sum(), x)
    compiled = torch.compile(lambda t: (pool(t) * w).sum(), dynamic=False)
    with fast_compiled_layers(pool):
        (grad,) = torch.autograd.grad(compiled(x), x)
    torch.testing.assert_close(grad, ref)


def test_fast_compiled_layers_batch_norm_is_the_same_function():
    from gp_maml import BatchNorm2d, fast_compiled_layers

    torch.manual_seed(0)
    bn = BatchNorm2d(4).double()
    torch.nn.init.normal_(bn.weight)
    x = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    compiled = torch.compile(bn, dynamic=False)
    plain = compiled(x)  # traced: the elementary version (transforms are invisible to dynamo)
    with fast_compiled_layers(bn) as layers:
        assert layers == 1
        fused = compiled(x)  # torch's fused kernel (the flag is guarded: a second graph)
    torch.testing.assert_close(plain, fused)
    torch.testing.assert_close(fused, bn(x))
