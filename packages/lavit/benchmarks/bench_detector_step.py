"""One detector training step: RetinaNet (or Mask R-CNN) on LaViT vs on PVTv2, side by side.

The same torchvision detector, FPN and optimizer (:func:`lavit.detection.dense_optimizer`) on
``lavit_tiny`` and ``pvt_v2_b1`` (``--pairs`` for others); one step = forward with targets,
backward, AdamW step, on a fixed batch of random images with two boxes each (a speed
measurement: the data do not matter). The models are timed **interleaved**
(``lab_common.measure_interleaved``: A B, B A, ...), median of ``--repeats``; peak memory is
the in-process growth during a step (CUDA: ``max_memory_allocated``).

    OMP_NUM_THREADS=2 python packages/lavit/benchmarks/bench_detector_step.py --size 512 512
"""

import argparse
from pathlib import Path

import torch

from lab_common import measure_interleaved, write_benchmark
from lavit.detection import dense_optimizer, maskrcnn_fpn, retinanet_fpn

DETECTORS = {"retinanet": retinanet_fpn, "maskrcnn": maskrcnn_fpn}


def step_fn(detector: str, backbone: str, size: tuple[int, int], batch: int, device):
    """A closure running one training step of ``detector`` on ``backbone``."""
    torch.manual_seed(0)
    h, w = size
    model = DETECTORS[detector](backbone, num_classes=91, min_size=min(h, w), max_size=max(h, w))
    model.to(device).train()
    optimizer, scheduler = dense_optimizer(model, 1e-4, 0.05, steps=10**6)
    gen = torch.Generator().manual_seed(1)
    images = [torch.rand(3, h, w, generator=gen).to(device) for _ in range(batch)]
    box = torch.tensor([[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.9 * h]])
    targets = [dict(boxes=box.to(device), labels=torch.tensor([1, 2], device=device))] * batch
    if detector == "maskrcnn":
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, box.int().tolist(), strict=True):
            m[y0:y1, x0:x1] = 1
        targets = [t | {"masks": masks.to(device)} for t in targets]

    def step() -> None:
        loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    return step, sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detector", choices=tuple(DETECTORS), default="retinanet")
    p.add_argument("--pairs", nargs="+", default=["lavit_tiny:pvt_v2_b1"], help="A:B")
    p.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, size = torch.device(args.device), tuple(args.size)
    rows = []
    for pair in args.pairs:
        a, b = pair.split(":")
        fns, params = {}, {}
        for name in (a, b):
            fns[name], params[name] = step_fn(args.detector, name, size, args.batch, device)
        res = measure_interleaved(fns, warmup=args.warmup, repeats=args.repeats, device=device)
        for name in (a, b):
            rows.append(
                dict(
                    detector=args.detector,
                    backbone=name,
                    size=f"{size[0]}x{size[1]}",
                    batch=args.batch,
                    params_M=params[name] / 1e6,
                    median_s_per_step=res[name].median_s,
                    speedup_vs_pair="" if name == b else res[b].median_s / res[a].median_s,
                    peak_mem_MB=res[name].peak_memory_mb,
                )
            )
            print(rows[-1], flush=True)
    title = (
        f"{args.detector} training step (forward + backward + AdamW), {device.type}, "
        f"{args.threads} threads, median of {args.repeats} interleaved"
    )
    print(write_benchmark(rows, args.out, f"detector_step_{args.detector}", title=title))


if __name__ == "__main__":
    main()
