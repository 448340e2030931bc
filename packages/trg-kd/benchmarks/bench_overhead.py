"""Overhead of TRG: time and peak memory per training step vs KD vs CE only.

One training step = teacher forward (no_grad) + student forward + loss + backward + SGD step,
through ``lab_common.Distiller`` (CE only: the student alone). Measured for several batch sizes
and numbers of tokens sampled per image, plus the k-NN graph alone (chunked vs one block) to show
the memory of the chunked search. Target: TRG ≤ 1.5× the KD step time at the default settings.

    nice -n 10 python packages/trg-kd/benchmarks/bench_overhead.py            # ≈ 3 min, 1 thread

Results: ``benchmarks/results/overhead.{md,json}``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import lab_common.zoo  # noqa: F401  (registers cifar_* with timm)
from lab_common import measure, write_benchmark
from lab_common.distiller import Distiller
from trg_kd import KDLoss, TokenExtractor, TRGConfig, TRGLoss, knn_graph

RESULTS = Path(__file__).parent / "results"


def step_fn(method: str, batch: int, cfg: TRGConfig, teacher_name: str, student_name: str):
    """A closure running one training step of ``method`` on a fixed random CIFAR-sized batch."""
    torch.manual_seed(0)
    teacher = timm.create_model(teacher_name, num_classes=100).eval()
    student = timm.create_model(student_name, num_classes=100)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 100, (batch,))
    ext = TokenExtractor()
    if method == "CE":
        model = student
        params = list(student.parameters())
    else:
        if method == "KD":
            loss = KDLoss(1.0, cfg.kd_weight, cfg.kd_temperature)
        else:
            dims = [ext.token_shape(m, (3, 32, 32))[1] for m in (student, teacher)]
            loss = TRGLoss(*dims, cfg)
        model = Distiller(student, teacher, loss, student_features=ext, teacher_features=ext)
        params = list(model.trainable_parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    model.train()

    def step() -> None:
        if method == "CE":
            loss = F.cross_entropy(model(x), y)
        else:
            loss = sum(model(x, y)[1].values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="cifar_resnet56")
    p.add_argument("--student", default="cifar_resnet20")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--tokens", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    p.add_argument("--graph-nodes", type=int, nargs="+", default=[4096, 16384])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = TRGConfig()
    tic = time.perf_counter()
    pair = f"{args.teacher} → {args.student}"

    def run(method: str, batch: int, c: TRGConfig):
        fn = step_fn(method, batch, c, args.teacher, args.student)
        return measure(fn, warmup=2, repeats=args.repeats)

    rows = []
    for batch in args.batch_sizes:
        m = {k: run(k, batch, cfg) for k in ("CE", "KD", "TRG")}
        rows.append({
            "sweep": "batch", "batch": batch, "tokens/image": cfg.tokens_per_image,
            "graph nodes": batch * cfg.tokens_per_image,
            "CE ms": m["CE"].median_s * 1e3, "KD ms": m["KD"].median_s * 1e3,
            "TRG ms": m["TRG"].median_s * 1e3,
            "TRG / KD": m["TRG"].median_s / m["KD"].median_s,
            "KD / CE": m["KD"].median_s / m["CE"].median_s,
            "CE peak MiB": m["CE"].peak_memory_mb, "KD peak MiB": m["KD"].peak_memory_mb,
            "TRG peak MiB": m["TRG"].peak_memory_mb,
        })  # fmt: skip
        print(rows[-1], f"[{time.perf_counter() - tic:.0f}s]", flush=True)
    kd64 = run("KD", 64, cfg)
    for tokens in args.tokens:
        trg = run("TRG", 64, replace(cfg, tokens_per_image=tokens))
        rows.append({
            "sweep": "tokens", "batch": 64, "tokens/image": tokens, "graph nodes": 64 * tokens,
            "KD ms": kd64.median_s * 1e3, "TRG ms": trg.median_s * 1e3,
            "TRG / KD": trg.median_s / kd64.median_s, "KD peak MiB": kd64.peak_memory_mb,
            "TRG peak MiB": trg.peak_memory_mb,
        })  # fmt: skip
        print(rows[-1], f"[{time.perf_counter() - tic:.0f}s]", flush=True)
    graph_rows = []
    for nodes in args.graph_nodes:
        x = torch.randn(nodes, 64)
        for chunk in (nodes, cfg.chunk_size):
            g = measure(lambda x=x, c=chunk: knn_graph(x, cfg.k, chunk_size=c), warmup=0, repeats=1)
            graph_rows.append({
                "graph nodes": nodes, "chunk_size": chunk, "k": cfg.k, "time ms": g.median_s * 1e3,
                "peak MiB": g.peak_memory_mb,
                "distance block MiB (theory)": chunk * nodes * 4 / 2**20,
            })  # fmt: skip
            print(graph_rows[-1], flush=True)
    md = write_benchmark(rows, RESULTS, "overhead", title=f"Training-step overhead, {pair}")
    md_graph = write_benchmark(graph_rows, RESULTS, "overhead_graph",
                               title="k-NN graph alone: chunked vs one block")  # fmt: skip
    note = (
        f"\nDefaults: {cfg.tokens_per_image} tokens/image, k={cfg.k}, chunk_size={cfg.chunk_size};"
        f" CIFAR-100-sized random batch (3×32×32, 100 classes); median of {args.repeats} steps "
        f"after 2 warm-up steps; {args.threads} thread(s); peak = growth of process RSS "
        f"during the timed steps; wall {time.perf_counter() - tic:.0f} s\n"
    )
    (RESULTS / "overhead.md").write_text(md + note)
    print(md + note + "\n" + md_graph)


if __name__ == "__main__":
    sys.exit(main())
