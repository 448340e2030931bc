"""Meta-training speed: gp_maml's MAML vs a straightforward ``higher`` MAML, and GP-MAML's cost.

Conv-4-64, 28x28 inputs, 5-way 1-shot, 15 queries per class, one inner step (lr 0.5), at
meta-batch 4 and 32, first and second order. Each row times one warmed-up meta-training step
(forward, backward, no optimizer step) on random data, the rows interleaved ``--repeats``
times; the main figure is the median process CPU time per task (one thread), wall tasks/s is
beside it. The ``higher`` baseline runs the same network built from torch's layers
(``nn.BatchNorm2d``, ``nn.MaxPool2d``: its natural setup). ``max abs grad err`` is each
meta-gradient's distance to a float64 one (the eager learner in double, same weights).
``peak MB`` (RSS growth during one step) is measured in a child process where freed memory
goes back to the OS at once (see ``memory_peaks``).

GP-MAML's cost is set against the sum of its measured parts (target: within 1.1x): the MAML
task (``gp_maml loop``), the label-propagation pass (``GP part: label propagation``: embed
support + queries, relation net, propagation, picking and the propagation loss, forward and
backward, per task) and the re-training step (``GP part: re-training``: a MAML task whose
support is the support plus as many queries as GP-MAML picked on average). The
``GP-MAML / sum of parts`` column holds the ratio on the ``GP-MAML loop`` row.

    python packages/gp-maml/benchmarks/bench_speed.py --batches 32 4 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gp_maml import Conv4, MetaLearner, create_learner, pick_pseudo_labels
from gp_maml.reference import higher_maml_step, random_task_batch, torch_layers
from lab_common import measure, write_benchmark


def _higher_runner(model: nn.Module, batch, first_order: bool):
    def run() -> None:
        model.zero_grad(set_to_none=True)
        higher_maml_step(model, batch, first_order)

    return run


def _learner_runner(learner: nn.Module, batch, per_task: bool):
    def run() -> None:
        learner.zero_grad(set_to_none=True)
        if per_task:
            learner.forward_backward(*batch)
        else:
            learner(*batch).loss.backward()

    return run


def _propagation_runner(learner: MetaLearner, batch):
    """GP-MAML's label-propagation pass alone, task by task (forward and backward)."""
    xs, ys, xq, yq = batch
    ways = int(ys.max()) + 1

    def run() -> None:
        learner.zero_grad(set_to_none=True)
        params = dict(learner.model.named_parameters())
        for b in range(xs.shape[0]):
            z = learner.embed(params, torch.cat([xs[b], xq[b]]), mode="autograd")
            sigma = learner.relation_net(z)
            scores = learner.propagate(z, ys[b], sigma, ways)
            pick_pseudo_labels(scores[xs.shape[1] :], ways)
            loss = learner.lp_loss_weight * F.cross_entropy(scores, torch.cat([ys[b], yq[b]]))
            (loss / xs.shape[0]).backward()

    return run


def grads_of(module: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in module.parameters()]


IMPLEMENTATIONS = (  # name, method, task batching, compiled, backward per task
    ("gp_maml loop", "maml", "loop", False, True),
    ("gp_maml loop + compile", "maml", "loop", True, True),
    ("gp_maml loop, one backward", "maml", "loop", False, False),
    ("gp_maml vmap", "maml", "vmap", False, False),
    ("GP-MAML loop", "gp-maml", "loop", False, True),
    ("GP-MAML loop + compile", "gp-maml", "loop", True, True),
)


def build_runs(base: nn.Module, b: int, first_order: bool):
    """``(runs, learners, higher_model, batch)``: one zero-argument step function per row."""
    batch = random_task_batch(b)
    hmodel = torch_layers(base)
    learners = {
        name: create_learner(
            method,
            copy.deepcopy(base),
            task_batching=batching,
            first_order=first_order,
            compiled=compiled,
        )
        for name, method, batching, compiled, _ in IMPLEMENTATIONS
    }
    runs = {"higher": _higher_runner(hmodel, batch, first_order)}
    for name, *_, per_task in IMPLEMENTATIONS:
        runs[name] = _learner_runner(learners[name], batch, per_task)
    # GP-MAML's parts: the MAML task is "gp_maml loop"; the propagation pass and re-training
    gp = learners["GP-MAML loop"]
    runs["GP part: label propagation"] = _propagation_runner(gp, batch)
    with torch.no_grad():
        picked = round(gp(*batch).picked.mean().item())
    xs, ys, xq, yq = batch
    per_class = picked // 5  # GP-MAML's picks are class-balanced: k per class of 5
    take = torch.cat([torch.arange(c * 15, c * 15 + per_class) for c in range(5)])
    retrain_batch = (torch.cat([xs, xq[:, take]], 1), torch.cat([ys, yq[:, take]], 1), xq, yq)
    retrain = create_learner("maml", copy.deepcopy(base), first_order=first_order)
    runs["GP part: re-training"] = _learner_runner(retrain, retrain_batch, True)
    return runs, learners, hmodel, batch


def float64_grads(learner: MetaLearner, batch, first_order: bool) -> list[torch.Tensor]:
    """Meta-gradient of an eager float64 copy of ``learner`` (reference of the error column)."""
    ref = create_learner(
        learner.method, copy.deepcopy(learner.model), first_order=first_order, task_batching="loop"
    ).double()
    ref.load_state_dict(learner.state_dict())
    ref.forward_backward(*(t.double() if t.is_floating_point() else t for t in batch))
    return [p.grad for p in ref.model.parameters()]


def _return_freed_memory_to_os() -> None:
    """Fix glibc's mmap threshold at 128 KiB (it otherwise rises after large frees)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS growth as it comes
        pass


def memory_peaks(a: argparse.Namespace) -> dict[str, float]:
    """Peak RSS growth (MiB) of one warmed-up step per row, keyed ``"b|order|name"``.

    Runs in its own process with a fixed glibc mmap threshold (``_return_freed_memory_to_os``):
    every block of 128 KiB or more is a fresh mapping, returned at free, so the RSS follows the
    live tensors; that slows the steps (page faults), so timing happens in the parent.
    """
    _return_freed_memory_to_os()
    torch.manual_seed(0)
    base = Conv4(1, 5, 64, 28)
    peaks = {}
    for b in a.batches:
        for first_order in a.orders:
            order = "1st" if first_order else "2nd"
            runs, *_ = build_runs(base, b, first_order)
            for name, run in runs.items():
                run()
                peak = measure(run, warmup=0, repeats=1).peak_memory_mb
                peaks[f"{b}|{order}|{name}"] = round(peak, 1)
    return peaks


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="*", default=[4, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--check-batch",
        type=int,
        default=4,
        help="compare gradients with float64 ones at meta-batches <= this",
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
    p.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.memory_only:  # the child process behind the "peak MB" column
        print(json.dumps(memory_peaks(a)))
        return ""
    torch.manual_seed(0)
    base = Conv4(1, 5, 64, 28)
    rows = []
    for b in a.batches:
        for first_order in a.orders:
            order = "1st" if first_order else "2nd"
            runs, learners, hmodel, batch = build_runs(base, b, first_order)
            errors: dict[str, object] = {}
            picked = learners["GP-MAML loop"](*batch).picked.mean().item()
            for run in runs.values():  # untimed warm-up (and torch.compile's compilation)
                run()
            if b <= a.check_batch:
                models = {"higher": hmodel} | {n: ln.model for n, ln in learners.items()}
                refs = {n: float64_grads(ln, batch, first_order) for n, ln in learners.items()}
                refs["higher"] = refs["gp_maml loop"]  # same initial weights
                for name, model in models.items():
                    runs[name]()  # its own gradients: the GP parts' runs share GP-MAML's model
                    errors[name] = max(
                        (x.double() - y).abs().max().item()
                        for x, y in zip(grads_of(model), refs[name], strict=True)
                    )
            cpu_runs: dict[str, list[float]] = {name: [] for name in runs}
            wall_runs: dict[str, list[float]] = {name: [] for name in runs}
            for rep in range(a.repeats):  # rows interleaved, so slow drifts hit all of them
                for name, run in runs.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    run()
                    cpu_runs[name].append(time.process_time() - c0)
                    wall_runs[name].append(time.perf_counter() - w0)
                    print(b, order, rep, name, f"cpu {cpu_runs[name][-1]:.2f}s", flush=True)
            cpu = {name: statistics.median(v) for name, v in cpu_runs.items()}
            wall = {name: statistics.median(v) for name, v in wall_runs.items()}
            parts = ("gp_maml loop", "GP part: label propagation", "GP part: re-training")
            parts_ratio = cpu["GP-MAML loop"] / sum(cpu[n] for n in parts)
            for name in runs:
                same_mode = "gp_maml loop + compile" if "compile" in name else "gp_maml loop"
                rows.append(
                    {
                        "meta-batch": b,
                        "order": order,
                        "implementation": name,
                        "CPU ms/task": round(1000 * cpu[name] / b, 1),
                        "speed-up vs higher (CPU)": round(cpu["higher"] / cpu[name], 2),
                        "cost vs gp_maml MAML (same mode)": round(cpu[name] / cpu[same_mode], 2),
                        "wall tasks/s": round(b / wall[name], 2),
                        "peak MB": "-",
                        "max abs grad err (float64 ref)": errors.get(name, "-"),
                        "GP picked queries/task": round(picked, 1)
                        if name.startswith("GP")
                        else "-",
                        "GP-MAML / sum of parts": round(parts_ratio, 2)
                        if name == "GP-MAML loop"
                        else "-",
                    }
                )
                print(rows[-1], flush=True)
    orders = ["1st" if o else "2nd" for o in a.orders]
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--memory-only",
            "--threads",
            str(a.threads),
            "--batches",
            *map(str, a.batches),
            "--orders",
            *orders,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    peaks = json.loads(child.stdout.strip().splitlines()[-1])
    for row in rows:
        row["peak MB"] = peaks[f"{row['meta-batch']}|{row['order']}|{row['implementation']}"]
    md = write_benchmark(
        rows, a.out, "speed", title="Meta-training speed (Conv-4-64, 5-way 1-shot, 15 queries)"
    )
    print(md)
    return md


if __name__ == "__main__":
    main()
