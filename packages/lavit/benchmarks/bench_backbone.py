"""Backbone forward (inference) or training step: LaViT vs PVTv2 at classification and
detection sizes.

Pairs ``lavit_tiny / pvt_v2_b1`` and ``lavit_small / pvt_v2_b2``, each model built once at
224x224 and run at every size (LaViT with the same weights: windowed attention, resampled
position embeddings). For every (size, batch) the two models of a pair are timed
**interleaved** (A B, B A, A B, ... after a warm-up of each), ``forward_features`` under
``torch.inference_mode``, fp32; throughput is images/s from the median. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` per model; on CPU the growth of the peak resident set of a
fresh subprocess that builds the model and runs one forward (so one model's heap does not
hide the other's). Targets (the issue's, for this CPU): speedup >= 1.3x at 224^2, >= 1.2x at
512^2, >= 1.0x at 800x1216, memory never above PVTv2's.

Writes ``backbone_speed.md/json`` (per model) and ``backbone_ratios.md/json`` (per pair) with
``lab_common.write_benchmark``; results are rewritten after each (size, batch), so an
interrupted run keeps what it measured. ``--memory-only`` skips the timing (peak memory does
not depend on the machine's load); ``--lavit-kwargs`` builds the LaViTs with other arguments
(e.g. ``'{"mlp_chunk_size": 0}'``). ``--train`` times a training step of the backbone instead
(``forward`` to the pooled features, a scalar loss, backward, AdamW step; files
``backbone_train_*``, target 1.0x at every size: at least PVTv2's speed; no memory column).

Usage:
    nice -n 10 python benchmarks/bench_backbone.py                 # the full grid (long on CPU)
    python benchmarks/bench_backbone.py --quick                     # seconds: checks it runs
    python benchmarks/bench_backbone.py --train --sizes 224x224 512x512 --batch-sizes 8 32
    python benchmarks/bench_backbone.py --device cuda --repeats 20  # on a GPU
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import timm
import torch

import lavit  # noqa: F401  (registers lavit_* with timm)
from lab_common import measure, measure_interleaved, write_benchmark

PAIRS = [("lavit_tiny", "pvt_v2_b1"), ("lavit_small", "pvt_v2_b2")]
SIZES = [(224, 224), (512, 512), (800, 1216)]
BATCHES = [8, 32]
TARGETS = {(224, 224): 1.3, (512, 512): 1.2, (800, 1216): 1.0}


def _cpu_peak_mb(
    name: str, size: tuple[int, int], batch: int, threads: int, lavit_kwargs: dict
) -> float:
    """Peak RSS growth (MB) of one forward in a fresh process (after building the model)."""
    cmd = [sys.executable, __file__, "--_memory", name, str(size[0]), str(size[1]), str(batch)]
    cmd += ["--threads", str(threads), "--lavit-kwargs", json.dumps(lavit_kwargs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_mb"])


def _peak_mb(model: torch.nn.Module, size: tuple[int, int], batch: int) -> float:
    """Peak RSS growth over the level before one forward (``lab_common.measure``'s sampler)."""
    x = torch.randn(batch, 3, *size)
    with torch.inference_mode():
        return measure(lambda: model.forward_features(x), warmup=0, repeats=1).peak_memory_mb


def _create(name: str, lavit_kwargs: dict) -> torch.nn.Module:
    kwargs = lavit_kwargs if name.startswith("lavit") else {}
    return timm.create_model(name, num_classes=0, **kwargs).eval()


def _memory_child(name: str, h: int, w: int, batch: int, lavit_kwargs: dict) -> None:
    model = _create(name, lavit_kwargs)
    print(json.dumps({"peak_mb": _peak_mb(model, (h, w), batch)}))


def _train_step(model: torch.nn.Module, x: torch.Tensor):
    """One training step of a backbone: pooled features, a scalar loss, backward, AdamW."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = model(x).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def measure_pair(
    models: dict[str, torch.nn.Module],
    size: tuple[int, int],
    batch: int,
    repeats: int,
    warmup: int,
    device: torch.device,
    threads: int,
    memory_in_process: bool = False,
    lavit_kwargs: dict | None = None,
    memory_only: bool = False,
    train: bool = False,
) -> dict[str, dict]:
    """Interleaved timing (and peak memory) of the models of one pair at one size/batch;
    ``memory_only`` (CPU): peak memory alone, timings ``nan``; ``train``: the timing of a
    training step (:func:`_train_step`), no memory."""
    nan = float("nan")
    res = {n: dict(median_s=nan, img_s=nan, peak_mem_MB=nan) for n in models}
    if train:
        x = torch.randn(batch, 3, *size, device=device)
        steps = {n: _train_step(m.train(), x) for n, m in models.items()}
        timed = measure_interleaved(steps, warmup=warmup, repeats=repeats, device=device)
        for n, m in models.items():
            m.eval()
            res[n].update(median_s=timed[n].median_s, img_s=batch / timed[n].median_s)
        return res
    if not (memory_only and device.type != "cuda"):
        x = torch.randn(batch, 3, *size, device=device)
        with torch.inference_mode():
            timed = measure_interleaved(
                {n: (lambda m=m: m.forward_features(x)) for n, m in models.items()},
                warmup=warmup,
                repeats=repeats,
                device=device,
            )
        for n, r in timed.items():  # CUDA peak: max_memory_allocated
            res[n] = dict(
                median_s=r.median_s, img_s=batch / r.median_s, peak_mem_MB=r.peak_memory_mb
            )
    if device.type != "cuda":
        for n in models:
            res[n]["peak_mem_MB"] = (
                _peak_mb(models[n], size, batch)
                if memory_in_process
                else _cpu_peak_mb(n, size, batch, threads, lavit_kwargs or {})
            )
    return res


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="timed passes per model (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=BATCHES)
    p.add_argument("--sizes", nargs="+", default=[f"{h}x{w}" for h, w in SIZES], help="HxW")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument(
        "--quick",
        action="store_true",
        help="64x64 and 64x96, batch 2, 2 repeats, memory measured in-process (approximate)",
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    p.add_argument(
        "--name", default="backbone", help="results file stem: <name>_speed, <name>_ratios"
    )
    p.add_argument("--memory-only", action="store_true", help="CPU: peak memory only, no timing")
    p.add_argument(
        "--train",
        action="store_true",
        help="time a training step (forward, backward, AdamW) instead of inference",
    )
    p.add_argument(
        "--lavit-kwargs",
        type=json.loads,
        default={},
        help="JSON keyword arguments for the LaViTs, e.g. '{\"mlp_chunk_size\": 0}'",
    )
    p.add_argument("--_memory", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args._memory:
        name, h, w, b = args._memory
        _memory_child(name, int(h), int(w), int(b), args.lavit_kwargs)
        return
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    batches, repeats, out, stem = args.batch_sizes, args.repeats, args.out, args.name
    if args.quick:
        sizes, batches, repeats, args.warmup, stem = [(64, 64), (64, 96)], [2], 2, 1, "quick"
    if args.train:
        stem = f"{stem}_train"
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows, ratios = [], []
    models = {n: _create(n, args.lavit_kwargs).to(device) for p in PAIRS for n in p}
    for size in sizes:
        for batch in batches:
            for a, b in PAIRS:
                res = measure_pair(
                    {a: models[a], b: models[b]},
                    size,
                    batch,
                    repeats,
                    args.warmup,
                    device,
                    args.threads,
                    memory_in_process=args.quick,
                    lavit_kwargs=args.lavit_kwargs,
                    memory_only=args.memory_only,
                    train=args.train,
                )
                for n in (a, b):
                    rows.append(dict(size=f"{size[0]}x{size[1]}", batch=batch, model=n, **res[n]))
                speedup = res[a]["img_s"] / res[b]["img_s"]
                target = 1.0 if args.train else TARGETS.get(size)
                mem_ratio = res[a]["peak_mem_MB"] / max(res[b]["peak_mem_MB"], 1e-9)
                ratios.append(
                    dict(
                        pair=f"{a} / {b}",
                        size=f"{size[0]}x{size[1]}",
                        batch=batch,
                        speedup=speedup,
                        target="" if target is None else target,
                        met=""
                        if target is None or math.isnan(speedup)
                        else ("yes" if speedup >= target else "NO"),
                        mem_ratio=mem_ratio,
                        mem_ok=""
                        if math.isnan(mem_ratio)
                        else ("yes" if mem_ratio <= 1.0 else "NO"),
                    )
                )
                print(ratios[-1], flush=True)
            what = "training step (forward, backward, AdamW)" if args.train else "forward_features"
            title = (
                f"Backbone {what}, {device.type}, {args.threads} threads, "
                + ("memory only" if args.memory_only else f"median of {repeats} interleaved")
                + (f", LaViT {json.dumps(args.lavit_kwargs)}" if args.lavit_kwargs else "")
            )
            write_benchmark(rows, out, f"{stem}_speed", title=title)
            print(write_benchmark(ratios, out, f"{stem}_ratios", title="LaViT / PVTv2 ratios"))


if __name__ == "__main__":
    main()
