import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gp_maml import adapt, weighted_cross_entropy


def _linear(bias: bool = True) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(4, 3, bias=bias).double()


def test_one_step_matches_hand_computed_sgd():
    model = _linear()
    params = dict(model.named_parameters())
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    out = adapt(model, params, {}, x, y, lr=0.3, steps=1)
    # d CE / d logits = (softmax - onehot) / N ; dW = g^T x ; db = sum g
    w, b = params["weight"].detach(), params["bias"].detach()
    g = ((x @ w.T + b).softmax(-1) - F.one_hot(y, 3).double()) / 6
    torch.testing.assert_close(out["weight"], w - 0.3 * g.T @ x)
    torch.testing.assert_close(out["bias"], b - 0.3 * g.sum(0))
    # pure: the inputs were not modified
    torch.testing.assert_close(params["weight"].detach(), w)


def test_two_steps_and_subset():
    model = _linear()
    params = dict(model.named_parameters())
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    one = adapt(model, params, {}, x, y, lr=0.1, steps=1)
    two = adapt(model, one, {}, x, y, lr=0.1, steps=1)
    torch.testing.assert_close(
        adapt(model, params, {}, x, y, lr=0.1, steps=2)["weight"], two["weight"]
    )
    only_bias = adapt(model, params, {}, x, y, adapted=["bias"], lr=0.1)
    assert only_bias["weight"] is params["weight"]
    assert not torch.equal(only_bias["bias"], params["bias"])


def test_sample_weight_mask_equals_subset():
    model = _linear()
    params = dict(model.named_parameters())
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    mask = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1.0], dtype=torch.float64)
    masked = adapt(model, params, {}, x, y, sample_weight=mask)
    keep = mask.bool()
    direct = adapt(model, params, {}, x[keep], y[keep])
    torch.testing.assert_close(masked["weight"], direct["weight"])
    assert weighted_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1])).item() == pytest.approx(
        torch.log(torch.tensor(3.0)).item()
    )


def _outer_grad(first_order: bool, xq: torch.Tensor, mode: str = "func") -> torch.Tensor:
    model = _linear(bias=False)
    params = dict(model.named_parameters())
    xs = torch.tensor([[1.0, 2.0, 0, 0], [0.5, -1.0, 0, 0], [2.0, 0.3, 0, 0]], dtype=torch.float64)
    ys = torch.tensor([0, 1, 2])
    adapted = adapt(model, params, {}, xs, ys, lr=0.5, first_order=first_order, mode=mode)
    loss = F.cross_entropy(xq @ adapted["weight"].T, torch.tensor([2, 0]))
    return torch.autograd.grad(loss, params["weight"])[0]


@pytest.mark.parametrize("mode", ["func", "autograd"])
def test_first_and_second_order_differ_and_agree_when_hessian_term_vanishes(mode):
    # linear model: the inner Hessian is (softmax cov) x (x_s x_s^T); it annihilates the outer
    # gradient when the query inputs are orthogonal to the support inputs.
    orth = torch.tensor([[0, 0, 1.0, -2.0], [0, 0, 0.4, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(_outer_grad(True, orth, mode), _outer_grad(False, orth, mode))
    overlap = torch.tensor([[1.0, 0.5, 1.0, 0], [-0.3, 1.0, 0.4, 1.0]], dtype=torch.float64)
    second = _outer_grad(False, overlap, mode)
    assert (_outer_grad(True, overlap, mode) - second).abs().max() > 1e-3
    other = "autograd" if mode == "func" else "func"
    torch.testing.assert_close(second, _outer_grad(False, overlap, other))


def test_bad_arguments():
    model = _linear()
    params = dict(model.named_parameters())
    x, y = torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="steps"):
        adapt(model, params, {}, x, y, steps=-1)
    with pytest.raises(ValueError, match="nope"):
        adapt(model, params, {}, x, y, adapted=["nope"])
    with pytest.raises(ValueError, match="mode"):
        adapt(model, params, {}, x, y, mode="vmap")


@pytest.mark.parametrize("mode", ["func", "autograd"])
def test_runs_under_no_grad_without_keeping_a_graph(mode):
    model = _linear()
    params = dict(model.named_parameters())
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        out = adapt(model, params, {}, x, y, lr=0.1, mode=mode)
    expected = adapt(model, params, {}, x, y, lr=0.1, mode=mode)
    torch.testing.assert_close(out["weight"], expected["weight"].detach())


def test_func_mode_runs_under_vmap_over_tasks():
    model = _linear()
    params = dict(model.named_parameters())
    x, y = torch.randn(3, 5, 4, dtype=torch.float64), torch.randint(0, 3, (3, 5))

    def one(xb, yb):
        return adapt(model, params, {}, xb, yb, lr=0.1, mode="func")["weight"]

    batched = torch.func.vmap(one)(x, y)
    for b in range(3):
        ref = adapt(model, params, {}, x[b], y[b], lr=0.1, mode="autograd")["weight"]
        torch.testing.assert_close(batched[b], ref)
