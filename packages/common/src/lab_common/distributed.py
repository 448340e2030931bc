"""torch.distributed helpers for code launched with ``torchrun`` (or plainly, as one process)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "init_distributed",
    "is_main_process",
    "all_reduce_mean",
    "average_gradients",
    "barrier",
    "cleanup_distributed",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(
    backend: str | None = None, device: str | torch.device = "auto"
) -> DistContext:
    """Initialise the default process group from ``torchrun``'s environment variables.

    Without ``WORLD_SIZE`` > 1 in the environment, returns a single-process context and
    initialises nothing. ``backend`` defaults to NCCL when CUDA is used, else gloo.
    """
    from .device import resolve_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        if backend is None:
            backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def is_main_process() -> bool:
    """True on rank 0, or when not running distributed."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over all ranks (a detached copy; unchanged when not distributed)."""
    out = tensor.detach().clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= dist.get_world_size()
    return out


def average_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Replace every parameter's ``.grad`` by its mean over all ranks, as DDP does for the model
    it wraps (a no-op when not distributed); for a backward DDP cannot hook, e.g. a
    meta-learner's task-by-task one. A gradient missing on some ranks counts as zeros there;
    one missing on every rank stays missing (the optimiser skips that parameter, as alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    params = list(parameters)
    if not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(present)
    grads = []
    for p, count in zip(params, present.tolist(), strict=True):
        if count:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, mean in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        g.copy_(mean.view_as(g))


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup_distributed() -> None:
    """Destroy the process group if one was created."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
