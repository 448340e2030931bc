"""Overhead of TRG: time and memory per training step vs KD vs CE only.

One training step = teacher forward (no_grad) + student forward + loss + backward + SGD step,
through ``lab_common.Distiller`` (CE only: the student alone). Measured for several batch sizes
and numbers of tokens sampled per image. Memory of a step = the tensors autograd saves for backward
(activation memory, counted exactly with ``saved_tensors_hooks``; process RSS is too coarse on a
CPU). The k-NN graph alone (chunked vs one block) shows the peak-RSS effect of the chunking. Target: TRG ≤ 1.5× the KD step time at the default settings.

    nice -n 10 python packages/trg-kd/benchmarks/bench_overhead.py            # ≈ 3 min, 1 thread

Results: ``benchmarks/results/overhead.{md,json}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from lab_common import measure, write_benchmark
from lab_common.distill import Distiller, KDLoss  # importing lab_common.distill registers cifar_*
from trg_kd import TokenExtractor, TRGConfig, TRGLoss, knn_graph

RESULTS = Path(__file__).parent / "results"


def step_fn(method: str, batch: int, cfg: TRGConfig, teacher_name: str, student_name: str):
    """Closures ``(step, forward)`` for one training step of ``method`` on a fixed random batch."""
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
            loss = KDLoss(ce_weight=1.0, kd_weight=cfg.kd_weight, temperature=cfg.kd_temperature)
        else:
            dims = [ext.token_shape(m, (3, 32, 32))[1] for m in (student, teacher)]
            loss = TRGLoss(*dims, cfg)
        model = Distiller(student, teacher, loss, student_features=ext, teacher_features=ext)
        params = list(model.trainable_parameters())
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    model.train()

    def forward() -> torch.Tensor:
        if method == "CE":
            return F.cross_entropy(model(x), y)
        return sum(model(x, y)[1].values())

    def step() -> None:
        loss = forward()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, forward


def saved_mib(forward) -> float:
    """MiB of distinct tensor storages autograd saves for backward in one forward pass (the
    activation memory of a training step; deterministic, unlike process RSS)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(storages.values()) / 2**20


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

    def run(configs: dict[str, tuple[str, int, TRGConfig]]) -> dict[str, dict[str, float]]:
        """Median step time of each config, timed round-robin so that load from other processes
        on this shared machine hits all of them alike; activation memory from one forward each."""
        made = {k: step_fn(m, b, c, args.teacher, args.student) for k, (m, b, c) in configs.items()}
        fns = {k: v[0] for k, v in made.items()}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for r in range(args.repeats + 2):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                if r >= 2:  # two warm-up rounds
                    times[k].append(time.perf_counter() - t0)
        return {
            k: {"ms": statistics.median(times[k]) * 1e3, "mib": saved_mib(made[k][1])} for k in fns
        }

    rows = []
    for batch in args.batch_sizes:
        m = run({k: (k, batch, cfg) for k in ("CE", "KD", "TRG")})
        rows.append(
            {
                "sweep": "batch",
                "batch": batch,
                "tokens/image": cfg.tokens_per_image,
                "graph nodes": batch * cfg.tokens_per_image,
                "CE ms": m["CE"]["ms"],
                "KD ms": m["KD"]["ms"],
                "TRG ms": m["TRG"]["ms"],
                "TRG / KD": m["TRG"]["ms"] / m["KD"]["ms"],
                "KD / CE": m["KD"]["ms"] / m["CE"]["ms"],
                "CE saved MiB": m["CE"]["mib"],
                "KD saved MiB": m["KD"]["mib"],
                "TRG saved MiB": m["TRG"]["mib"],
            }
        )
        print(rows[-1], f"[{time.perf_counter() - tic:.0f}s]", flush=True)
    m = run(
        {"KD": ("KD", 64, cfg)}
        | {f"TRG{t}": ("TRG", 64, replace(cfg, tokens_per_image=t)) for t in args.tokens}
    )
    for tokens in args.tokens:
        trg = m[f"TRG{tokens}"]
        rows.append(
            {
                "sweep": "tokens",
                "batch": 64,
                "tokens/image": tokens,
                "graph nodes": 64 * tokens,
                "KD ms": m["KD"]["ms"],
                "TRG ms": trg["ms"],
                "TRG / KD": trg["ms"] / m["KD"]["ms"],
                "KD saved MiB": m["KD"]["mib"],
                "TRG saved MiB": trg["mib"],
            }
        )
        print(rows[-1], f"[{time.perf_counter() - tic:.0f}s]", flush=True)
    graph_rows = []
    for nodes in args.graph_nodes:
        x = torch.randn(nodes, 64)
        for chunk in (nodes, cfg.chunk_size):
            g = measure(lambda x=x, c=chunk: knn_graph(x, cfg.k, chunk_size=c), warmup=0, repeats=1)
            graph_rows.append(
                {
                    "graph nodes": nodes,
                    "chunk_size": chunk,
                    "k": cfg.k,
                    "time ms": g.median_s * 1e3,
                    "peak RSS growth MiB": g.peak_memory_mb,
                    "distance block MiB (theory)": chunk * nodes * 4 / 2**20,
                }
            )
            print(graph_rows[-1], flush=True)
    md = write_benchmark(rows, RESULTS, "overhead", title=f"Training-step overhead, {pair}")
    md_graph = write_benchmark(
        graph_rows, RESULTS, "overhead_graph", title="k-NN graph alone: chunked vs one block"
    )
    note = (
        f"\nDefaults: {cfg.tokens_per_image} tokens/image, k={cfg.k}, chunk_size={cfg.chunk_size};"
        f" CIFAR-100-sized random batch (3×32×32, 100 classes); median of {args.repeats} steps "
        f"after 2 warm-up rounds, methods timed round-robin; {args.threads} thread(s); saved MiB"
        f" = tensors autograd keeps for backward (activation memory); wall {time.perf_counter() - tic:.0f} s\n"
    )
    (RESULTS / "overhead.md").write_text(md + note)
    print(md + note + "\n" + md_graph)


if __name__ == "__main__":
    sys.exit(main())
