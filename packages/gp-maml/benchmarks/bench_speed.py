"""Meta-training speed: gp_maml's MAML vs a straightforward ``higher`` MAML, and GP-MAML's cost.

Conv-4-64, 28x28 inputs, 5-way 1-shot, 15 queries per class, one inner step (lr 0.5), at
meta-batch 4 and 32, first and second order. Each row times one meta-training step (forward,
backward, no optimizer step) on random data. The machine is shared, so the main figure is
process CPU time per task (single thread: the work done, whatever the scheduler does); wall
tasks/s is printed beside it. The
``higher`` baseline uses the same network with torch's fused batch-norm (its natural setup);
``max |grad diff|`` checks that both produce the same meta-gradient.

    nice -n 10 python packages/gp-maml/benchmarks/bench_speed.py
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import higher
import torch
import torch.nn.functional as F
from torch import nn

from gp_maml import BatchNorm2d, Conv4, create_learner
from lab_common import measure, write_benchmark


def fused_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with torch's fused batch-norm (batch statistics) instead of ours."""
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BatchNorm2d):
                new = nn.BatchNorm2d(child.num_features, track_running_stats=False)
                new.load_state_dict(child.state_dict())
                setattr(module, child_name, new)
    return model


def higher_step(model: nn.Module, batch, first_order: bool, inner_lr: float = 0.5) -> None:
    """One MAML meta-gradient with ``higher`` (per-task backward, gradients averaged)."""
    xs, ys, xq, yq = batch
    inner_opt = torch.optim.SGD(model.parameters(), lr=inner_lr)
    for b in range(xs.shape[0]):
        with higher.innerloop_ctx(
            model, inner_opt, copy_initial_weights=False, track_higher_grads=not first_order
        ) as (fmodel, diffopt):
            diffopt.step(F.cross_entropy(fmodel(xs[b]), ys[b]))
            if first_order:  # first-order MAML: outer gradient at theta' applied to theta
                loss = F.cross_entropy(fmodel(xq[b]), yq[b]) / xs.shape[0]
                grads = torch.autograd.grad(loss, fmodel.parameters())
                for p, g in zip(model.parameters(), grads):
                    p.grad = g if p.grad is None else p.grad + g
            else:
                (F.cross_entropy(fmodel(xq[b]), yq[b]) / xs.shape[0]).backward()


def make_batch(b: int, ways=5, shots=1, queries=15, size=28):
    g = torch.Generator().manual_seed(b)
    xs = torch.rand(b, ways * shots, 1, size, size, generator=g)
    xq = torch.rand(b, ways * queries, 1, size, size, generator=g)
    ys = torch.arange(ways).repeat_interleave(shots).repeat(b, 1)
    yq = torch.arange(ways).repeat_interleave(queries).repeat(b, 1)
    return xs, ys, xq, yq


def _higher_runner(model: nn.Module, batch, first_order: bool):
    def run() -> None:
        model.zero_grad(set_to_none=True)
        higher_step(model, batch, first_order)

    return run


def _learner_runner(learner: nn.Module, batch):
    def run() -> None:
        learner.zero_grad(set_to_none=True)
        learner(*batch).loss.backward()

    return run


def grads_of(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="*", default=[4, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--check-batch",
        type=int,
        default=4,
        help="compare gradients with higher at meta-batches <= this (every row is warmed up)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--orders",
        nargs="*",
        type=lambda v: v == "1st",
        default=[False, True],
        help="1st and/or 2nd",
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base = Conv4(1, 5, 64, 28)
    rows = []
    for b in a.batches:
        batch = make_batch(b)
        for first_order in a.orders:
            order = "1st" if first_order else "2nd"
            hmodel = fused_bn(base)
            run_higher = _higher_runner(hmodel, batch, first_order)
            learners = {
                name: create_learner(method, copy.deepcopy(base), task_batching=batching,
                                     first_order=first_order, compile_query=compiled)
                for name, method, batching, compiled in (
                    ("gp_maml loop", "maml", "loop", False),
                    ("gp_maml loop + compile", "maml", "loop", True),
                    ("gp_maml vmap", "maml", "vmap", False),
                    ("GP-MAML loop", "gp-maml", "loop", False),
                    ("GP-MAML loop + compile", "gp-maml", "loop", True),
                )
            }  # fmt: skip
            runs = {"higher": run_higher}
            runs.update(
                {name: _learner_runner(learner, batch) for name, learner in learners.items()}
            )
            diffs: dict[str, object] = {}
            picked = learners["GP-MAML loop"](*batch).picked.mean().item()
            if b <= a.check_batch:  # untimed warm-up run that also checks the numerics
                run_higher()
                ref = grads_of(hmodel)
                diffs["higher"] = 0.0
                for name, learner in learners.items():
                    runs[name]()
                    if not name.startswith("GP"):
                        diffs[name] = max(
                            (x - y).abs().max().item() for x, y in zip(grads_of(learner.model), ref)
                        )
            else:  # untimed warm-up (and torch.compile's compilation)
                for run in runs.values():
                    run()
            cpu: dict[str, float] = {}
            timings = {}
            for name, run in runs.items():
                t0 = time.process_time()
                timings[name] = measure(run, warmup=0, repeats=a.repeats)
                cpu[name] = (time.process_time() - t0) / a.repeats
                print(name, b, order, f"cpu {cpu[name]:.2f}s", flush=True)
            for name in runs:
                same_mode = "gp_maml loop + compile" if "compile" in name else "gp_maml loop"
                rows.append({
                    "meta-batch": b,
                    "order": order,
                    "implementation": name,
                    "CPU ms/task": round(1000 * cpu[name] / b, 1),
                    "speed-up vs higher (CPU)": round(cpu["higher"] / cpu[name], 2),
                    "cost vs gp_maml MAML (same mode)": round(cpu[name] / cpu[same_mode], 2),
                    "wall tasks/s": round(b / timings[name].median_s, 2),
                    "peak MB": round(timings[name].peak_memory_mb, 1),
                    "max abs grad diff vs higher": diffs.get(name, "-"),
                    "GP picked queries/task": round(picked, 1) if name.startswith("GP") else "-",
                })  # fmt: skip
                print(rows[-1], flush=True)
    md = write_benchmark(
        rows, a.out, "speed", title="Meta-training speed (Conv-4-64, 5-way 1-shot, 15 queries)"
    )
    print(md)
    return md


if __name__ == "__main__":
    main()
