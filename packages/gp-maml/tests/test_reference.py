"""gp_maml.reference: the ``higher`` MAML baseline of the speed benchmark and the GPU check."""

import sys

import pytest
import torch

from gp_maml import Conv4, create_learner
from gp_maml.reference import higher_maml_step, random_task_batch, torch_layers
from lab_common.testing import require_optional


def test_random_task_batch_shapes_labels_and_repeatability():
    xs, ys, xq, yq = random_task_batch(2, ways=3, shots=2, queries=4, size=8)
    assert xs.shape == (2, 6, 1, 8, 8) and xq.shape == (2, 12, 1, 8, 8)
    assert ys.tolist() == [[0, 0, 1, 1, 2, 2]] * 2 and yq.shape == (2, 12)
    assert torch.equal(xs, random_task_batch(2, ways=3, shots=2, queries=4, size=8)[0])


def test_torch_layers_computes_the_same_function_with_torch_modules():
    torch.manual_seed(0)
    model = Conv4(1, 5, 8, 28)
    ref = torch_layers(model)
    kinds = {type(m) for m in ref.modules()}
    assert {torch.nn.BatchNorm2d, torch.nn.MaxPool2d} <= kinds
    assert ref is not model and not {type(m) for m in model.modules()} & {torch.nn.BatchNorm2d}
    x = torch.rand(4, 1, 28, 28)
    torch.testing.assert_close(ref(x), model(x))


@pytest.mark.parametrize("first_order", [False, True])
def test_higher_step_matches_the_learner(first_order):
    require_optional("higher")
    torch.manual_seed(0)
    base = Conv4(1, 5, 8, 28)
    batch = random_task_batch(2)
    learner = create_learner("maml", base, first_order=first_order, task_batching="loop")
    learner.forward_backward(*batch)
    ref = torch_layers(base)
    ref.zero_grad(set_to_none=True)
    higher_maml_step(ref, batch, first_order)
    for ours, theirs in zip(learner.model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5)


def test_higher_step_names_the_missing_dependency(monkeypatch):
    monkeypatch.setitem(sys.modules, "higher", None)  # import higher -> ModuleNotFoundError
    with pytest.raises(ModuleNotFoundError, match=r"gp-maml\[bench\]"):
        higher_maml_step(torch_layers(Conv4(1, 5, 8, 28)), random_task_batch(1), False)
