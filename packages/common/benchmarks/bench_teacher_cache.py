"""Student epoch time with the teacher cache (``--teacher-cache K``) against a live teacher.

The trainers' own engine (``clkd.train`` for KD, ``trg_kd.train`` for TRG, which also reads
the teacher's feature maps), CIFAR-10 training images from the shared archive, a
``cifar_resnet20`` teacher and a ``cifar_resnet8`` student. Each arm trains ``--epochs``
epochs, one epoch per call in turn (``stop_after=1`` then ``resume``), so load changes hit the
arms alike; the table gives the median epoch time (training plus a 500-image validation pass),
the ratio live / cached, the cache's build time and its size on disk. Target: ≥ 1.7× faster.

    OMP_NUM_THREADS=1 python packages/common/benchmarks/bench_teacher_cache.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

import clkd.train
import trg_kd.train
from lab_common import write_benchmark
from lab_common.distill import TeacherCache, create_model

RESULTS = Path(__file__).parent / "results"
#: ``--layouts``: the ``channels_last`` setting of each.
LAYOUTS = {"default": False, "channels-last": True}
TRAINERS = {
    "kd": (clkd.train.TrainConfig, clkd.train.train),
    "trg": (trg_kd.train.TrainConfig, trg_kd.train.train),
}


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train-images", type=int, default=6400)
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=["kd", "trg"], choices=sorted(TRAINERS))
    p.add_argument("--layouts", nargs="+", default=["default"], choices=sorted(LAYOUTS))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        teacher_path = work / "teacher.pt"  # timing does not depend on the weights
        teacher = create_model("cifar_resnet20", 10, 3)
        torch.save({"model": teacher.state_dict(), "model_name": "cifar_resnet20"}, teacher_path)
        for method in args.methods:
            config_cls, train = TRAINERS[method]
            arms = list(itertools.product(args.layouts, (0, args.views)))
            times: dict[tuple[str, int], list[float]] = {arm: [] for arm in arms}
            build_s = 0.0
            for epoch in range(args.epochs):
                for layout, views in arms:
                    out = work / f"{method}-{layout}-{views}"
                    cfg = config_cls(
                        dataset="cifar10",
                        val_images=500,
                        train_subset=args.train_images,
                        teacher="cifar_resnet20",
                        teacher_checkpoint=str(teacher_path),
                        student="cifar_resnet8",
                        method=method,
                        epochs=args.epochs,
                        batch_size=64,
                        workers=0,
                        teacher_cache=views,
                        channels_last=LAYOUTS[layout],
                        stop_after=1,
                        progress=False,
                        out=str(out),
                    )
                    tic = time.perf_counter()
                    train(cfg, resume=epoch > 0)
                    lines = (out / "student_metrics.jsonl").read_text().splitlines()
                    times[layout, views].append(json.loads(lines[-1])["epoch_time"])
                    if views and not build_s:  # the first cached call also builds the cache
                        build_s = time.perf_counter() - tic - times[layout, views][0]
            folder = TeacherCache.folder_for(teacher_path, args.views)
            size = _folder_bytes(folder)
            median = {arm: statistics.median(t) for arm, t in times.items()}
            base = args.layouts[0]
            for layout in args.layouts:
                live, cached = median[layout, 0], median[layout, args.views]
                row = {
                    "method": method,
                    "layout": layout,
                    "train images": args.train_images,
                    "live epoch (s)": live,
                    f"cached epoch (s), K={args.views}": cached,
                    "speed-up": live / cached,
                    "cache build (s)": build_s,
                    "cache on disk (MB)": size / 1e6,
                    "disk for 45,000 images (MB)": size / args.train_images * 45000 / 1e6,
                }
                if len(args.layouts) > 1:
                    row[f"live vs {base}"] = median[base, 0] / live
                    row[f"cached vs {base}"] = median[base, args.views] / cached
                rows.append(row)
            shutil.rmtree(folder)  # the next method's cache (with features) is another one
    print(
        write_benchmark(
            rows,
            RESULTS,
            "teacher_cache" if args.layouts == ["default"] else "teacher_cache_layouts",
            title="Teacher cache: student epoch time",
        )
    )


if __name__ == "__main__":
    main()
