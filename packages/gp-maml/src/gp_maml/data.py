"""N-way K-shot episodes sampled from a class-labelled uint8 image tensor."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Episode", "EpisodeSampler", "FewShotDataset"]


@dataclass
class FewShotDataset:
    """Images of one split held in memory.

    Attributes:
        images: ``(M, C, H, W)`` uint8 images.
        labels: ``(M,)`` int64 class ids in ``[0, num_base_classes)``.
        class_names: name of every base class.
        rotations: multiples of 90 degrees that define extra classes (``(0,)`` for none;
            ``(0, 1, 2, 3)`` turns every character into four classes, as usual for Omniglot).
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    rotations: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be a (M, C, H, W) uint8 tensor, got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        if not self.rotations or any(r not in (0, 1, 2, 3) for r in self.rotations):
            raise ValueError(f"rotations must be quarter turns in 0..3, got {self.rotations}")

    @property
    def num_classes(self) -> int:
        """Classes seen by the sampler (base classes x rotations)."""
        return len(self.class_names) * len(self.rotations)

    def with_rotations(self, rotations: tuple[int, ...] = (0, 1, 2, 3)) -> FewShotDataset:
        """The same images with rotation-augmented classes."""
        return FewShotDataset(self.images, self.labels, self.class_names, tuple(rotations))


@dataclass
class Episode:
    """One task, or a batch of ``B`` tasks (leading ``B`` dimension).

    ``xs`` ``([B,] N*K, C, H, W)`` float in [0, 1], ``ys`` ``([B,] N*K)``, ``xq``
    ``([B,] N*Q, C, H, W)``, ``yq`` ``([B,] N*Q)``; labels are ``0..N-1`` in a random
    class order, support and query grouped by class.
    """

    xs: Tensor
    ys: Tensor
    xq: Tensor
    yq: Tensor

    def to(self, device: torch.device | str) -> Episode:
        return Episode(*(t.to(device) for t in (self.xs, self.ys, self.xq, self.yq)))

    def __getitem__(self, tasks: slice) -> Episode:
        """Tasks ``tasks`` of a batch (e.g. one process's share of a meta-batch)."""
        return Episode(self.xs[tasks], self.ys[tasks], self.xq[tasks], self.yq[tasks])


class EpisodeSampler:
    """Seeded sampler of ``ways``-way ``shots``-shot ``queries``-query episodes.

    Every episode draws ``ways`` distinct classes and ``shots + queries`` distinct images of
    each; the sampler's RNG state (``state_dict``) makes a resumed run draw the same episodes.

    Args:
        dataset: the split to sample from.
        ways, shots, queries: ``N``, ``K`` and ``Q`` (queries per class).
        seed: RNG seed.
    """

    def __init__(
        self, dataset: FewShotDataset, ways: int, shots: int, queries: int, seed: int = 0
    ) -> None:
        for name, value, low in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if ways > dataset.num_classes:
            raise ValueError(
                f"cannot sample {ways}-way episodes from {dataset.num_classes} classes; "
                "lower --ways or use a larger split"
            )
        counts = torch.bincount(dataset.labels, minlength=len(dataset.class_names))
        per_class = shots + queries
        if int(counts.min()) < per_class:
            worst = int(counts.argmin())
            raise ValueError(
                f"class {dataset.class_names[worst]!r} has {int(counts[worst])} images but an "
                f"episode needs shots + queries = {shots} + {queries} = {per_class} per class"
            )
        self.dataset = dataset
        self.ways, self.shots, self.queries = ways, shots, queries
        order = torch.argsort(dataset.labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        self._order, self._starts, self._counts = order, starts, counts
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def sample(self) -> Episode:
        """One episode (see ``Episode`` for shapes)."""
        ds, g = self.dataset, self.generator
        n_rot = len(ds.rotations)
        classes = torch.randperm(ds.num_classes, generator=g)[: self.ways]
        per_class = self.shots + self.queries
        base, rot = classes // n_rot, classes % n_rot
        counts = self._counts[base]
        # a random order of each class's images: sort uniform keys, padding slots last
        keys = torch.rand(self.ways, int(counts.max()), generator=g)
        keys[torch.arange(keys.shape[1]) >= counts.unsqueeze(1)] = 2.0
        idx = keys.argsort(1)[:, :per_class]
        x = ds.images[self._order[self._starts[base].unsqueeze(1) + idx]]  # (N, K+Q, C, H, W)
        for r in set(rot.tolist()) - {0}:
            sel = rot == r
            x[sel] = torch.rot90(x[sel], ds.rotations[r], dims=(3, 4))
        x = x.float().div_(255)
        labels = torch.arange(self.ways).unsqueeze(1).expand(-1, per_class)
        k = self.shots
        return Episode(
            x[:, :k].flatten(0, 1),
            labels[:, :k].flatten(),
            x[:, k:].flatten(0, 1),
            labels[:, k:].flatten(),
        )

    def sample_batch(self, batch_size: int) -> Episode:
        """``batch_size`` episodes stacked on a leading dimension."""
        eps = [self.sample() for _ in range(batch_size)]
        return Episode(
            *(torch.stack(t) for t in zip(*((e.xs, e.ys, e.xq, e.yq) for e in eps), strict=True))
        )
