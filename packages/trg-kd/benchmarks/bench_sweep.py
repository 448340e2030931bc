"""Small one-at-a-time sweep of TRG's α, β, γ, k and tokens per image on Fashion-MNIST.

Uses the balanced setting and the CNN → small-CNN pair of ``bench_fashion_mnist.py``; every
configuration changes one value of the base configuration. Chooses the package defaults
(README, "Design choices").

    nice -n 10 python packages/trg-kd/benchmarks/bench_sweep.py      # ≈ 6 min on 1 CPU thread

Results: ``benchmarks/results/sweep.{md,json}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_fashion_mnist import RESULTS, distill, load_data, make_model, predict, train  # noqa: E402

from lab_common import seed_everything, write_benchmark  # noqa: E402
from trg_kd import TRGConfig  # noqa: E402

BASE = {
    "inner_weight": 50.0,
    "local_weight": 50.0,
    "global_weight": 0.1,
    "k": 8,
    "tokens_per_image": 16,
}
VARIANTS = [
    {},
    {"inner_weight": 5.0},
    {"inner_weight": 500.0},
    {"local_weight": 5.0},
    {"local_weight": 500.0},
    {"global_weight": 0.01},
    {"global_weight": 1.0},
    {"k": 4},
    {"k": 16},
    {"tokens_per_image": 4},
    {"tokens_per_image": 49},
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--train-per-class", type=int, default=150)
    p.add_argument("--test-per-class", type=int, default=300)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--teacher-epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tic = time.perf_counter()
    data = load_data(args.train_per_class, args.test_per_class, False, 0)
    seed_everything(100)
    teacher = train(
        make_model("teacher_cnn"), data[0], data[1], epochs=args.teacher_epochs, seed=100
    )
    t_acc = (predict(teacher, data[2]) == data[3]).float().mean().item() * 100
    rows = []
    kd = [
        distill("kd", TRGConfig(), teacher, "student_cnn", data, epochs=args.epochs, seed=s)["all"]
        for s in args.seeds
    ]
    rows.append(
        {
            "config": "KD (reference)",
            "top-1": f"{statistics.mean(kd):.2f}",
            "seeds": " ".join(f"{a:.2f}" for a in kd),
        }
    )
    for change in VARIANTS:
        cfg = replace(TRGConfig(), **{**BASE, **change})
        accs = [
            distill("trg", cfg, teacher, "student_cnn", data, epochs=args.epochs, seed=s)["all"]
            for s in args.seeds
        ]
        label = ", ".join(f"{k}={v:g}" for k, v in change.items()) or "base"
        rows.append(
            {
                "config": label,
                "top-1": f"{statistics.mean(accs):.2f}",
                "seeds": " ".join(f"{a:.2f}" for a in accs),
            }
        )
        print(rows[-1], f"[{time.perf_counter() - tic:.0f}s]", flush=True)
    base = ", ".join(f"{k}={v:g}" for k, v in BASE.items())
    md = write_benchmark(rows, RESULTS, "sweep", title=f"TRG sweep around {base}")
    note = (
        f"\nTeacher CNN {t_acc:.2f}%; student CNN; {args.train_per_class}/class train, "
        f"{args.epochs} epochs, seeds {args.seeds}; wall {time.perf_counter() - tic:.0f} s\n"
    )
    (RESULTS / "sweep.md").write_text(md + note)
    print(md + note)


if __name__ == "__main__":
    sys.exit(main())
