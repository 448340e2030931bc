"""What gp_maml's learners are checked and timed against: a plain ``higher`` MAML step.

``higher`` (Grefenstette et al., 2019) is the usual way to write MAML in PyTorch: a stateful
module patched into a functional one for the inner loop. It is an optional dependency
(``gp-maml[bench]``), imported only by :func:`higher_maml_step`. Used by
``benchmarks/bench_speed.py`` and the GPU check (``tools/gpu_check.py``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .layers import BatchNorm2d, MaxPool2d

__all__ = ["higher_maml_step", "random_task_batch", "torch_layers"]

#: A meta-batch: support images ``(B, N*K, C, H, W)``, support labels ``(B, N*K)``, query
#: images ``(B, N*Q, C, H, W)``, query labels ``(B, N*Q)``.
TaskBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def torch_layers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with torch's batch-norm (batch statistics) and max-pool layers.

    gp_maml's ``BatchNorm2d`` / ``MaxPool2d`` become ``nn.BatchNorm2d(track_running_stats=
    False)`` / ``nn.MaxPool2d`` with the same weights and settings: the network a ``higher``
    MAML would be written with. ``model`` is not modified.
    """
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BatchNorm2d):
                new = nn.BatchNorm2d(child.num_features, track_running_stats=False)
                new.load_state_dict(child.state_dict())
                setattr(module, child_name, new)
            elif isinstance(child, MaxPool2d):
                new = nn.MaxPool2d(
                    child.kernel_size,
                    child.stride,
                    child.padding,
                    child.dilation,
                    ceil_mode=child.ceil_mode,
                )
                setattr(module, child_name, new)
    return model


def higher_maml_step(
    model: nn.Module, batch: TaskBatch, first_order: bool, inner_lr: float = 0.5
) -> None:
    """One MAML meta-gradient with ``higher``: one SGD inner step, backward per task.

    Accumulates the gradient of the mean query loss over the ``B`` tasks of ``batch`` (see
    ``TaskBatch``) into ``model``'s ``.grad`` (first order: the outer gradient at the adapted
    weights, applied to the initial ones). Raises ``ModuleNotFoundError`` without ``higher``.
    """
    try:
        import higher
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "higher_maml_step needs higher: pip install 'gp-maml[bench]'", name="higher"
        ) from err
    xs, ys, xq, yq = batch
    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
    for b in range(xs.shape[0]):
        with higher.innerloop_ctx(
            model, inner_opt, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (fmodel, diffopt):
            diffopt.step(F.cross_entropy(fmodel(xs[b]), ys[b]))
            loss = F.cross_entropy(fmodel(xq[b]), yq[b]) / xs.shape[0]
            if first_order:
                grads = torch.autograd.grad(loss, fmodel.parameters())
                for p, g in zip(model.parameters(), grads, strict=True):
                    p.grad = g if p.grad is None else p.grad + g
            else:
                loss.backward()


def random_task_batch(
    tasks: int, ways: int = 5, shots: int = 1, queries: int = 15, size: int = 28
) -> TaskBatch:
    """``tasks`` random ``ways``-way ``shots``-shot tasks of 1-channel ``size``² images.

    Uniform pixels in [0, 1), labels sorted by class; drawn from a generator seeded with
    ``tasks`` (the same batch every call). Shapes as ``TaskBatch``.
    """
    g = torch.Generator().manual_seed(tasks)
    xs = torch.rand(tasks, ways * shots, 1, size, size, generator=g)
    xq = torch.rand(tasks, ways * queries, 1, size, size, generator=g)
    ys = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    yq = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    return xs, ys, xq, yq
