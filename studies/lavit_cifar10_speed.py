"""Throughput and MACs of the LaViT study's models (a benchmark: run it on an idle machine).

Every row of ``lavit_cifar10.py`` built as its trainer builds it (untrained weights: speed does
not depend on them), timed side by side (``lab_common.measure_interleaved``: rounds alternate
the order, median per row) at 32², batch 128, fp32, inference (``no_grad``) and a training step
(forward, backward, AdamW step); MACs with attention counted (``lavit.flops.count_macs``).
Writes ``docs/results/lavit_cifar10_speed.{md,json}``; ``lavit_cifar10.py``'s report reads the
JSON for its accuracy / throughput plot.

    OMP_NUM_THREADS=2 python studies/lavit_cifar10_speed.py
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import timm
import torch
import torch.nn.functional as F
from harness import RESULTS, machine
from lavit_cifar10 import MODELS

import lavit  # noqa: F401  (registers the lavit_* models)
from lab_common import markdown_table, measure_interleaved
from lavit.flops import count_macs

SPEED = RESULTS / "lavit_cifar10_speed.json"


def build(kwargs: dict[str, Any]) -> torch.nn.Module:
    """A row's model as ``lavit.train`` builds it for CIFAR-10 (10 classes, 3 channels)."""
    extra = {"img_size": 32} if kwargs["model"].startswith("lavit") else {}
    return timm.create_model(
        kwargs["model"], num_classes=10, in_chans=3, **extra, **kwargs["model_kwargs"]
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch_size,))
    models = {name: build(kwargs) for name, kwargs in MODELS.items()}
    optimizers = {name: torch.optim.AdamW(m.parameters()) for name, m in models.items()}

    def infer(name: str):
        def call() -> None:
            with torch.no_grad():
                models[name].eval()(x)

        return call

    def step(name: str):
        def call() -> None:
            model = models[name].train()
            if MODELS[name]["dp_loss_weight"] > 0:
                logits, aux = model(x, return_aux=True)
                loss = F.cross_entropy(logits, y) + 0.1 * aux["loss_dp"]
            else:
                loss = F.cross_entropy(model(x), y)
            optimizers[name].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[name].step()

        return call

    inference = measure_interleaved({n: infer(n) for n in models}, repeats=args.repeats)
    training = measure_interleaved({n: step(n) for n in models}, repeats=args.repeats)
    rows = []
    for name, model in models.items():
        rows.append(
            {
                "model": name,
                "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
                "MMACs": count_macs(model.eval(), x[:1]) / 1e6,
                "infer_img_s": args.batch_size / inference[name].median_s,
                "train_img_s": args.batch_size / training[name].median_s,
            }
        )
    base = next(r for r in rows if r["model"] == "LaViT")
    for r in rows:
        r["infer_vs_LaViT"] = r["infer_img_s"] / base["infer_img_s"]
        r["train_vs_LaViT"] = r["train_img_s"] / base["train_img_s"]
    payload = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "rows": rows,
    }
    SPEED.parent.mkdir(parents=True, exist_ok=True)
    SPEED.write_text(json.dumps(payload, indent=1) + "\n")
    table = markdown_table(rows)
    SPEED.with_suffix(".md").write_text(
        f"# Speed of the LaViT study's models\n\n{__doc__.split(chr(10) * 2)[1]}\n\n{table}\n\n"
        f"Machine: {payload['machine']}, {payload['threads']} threads\n"
    )
    print(table)


if __name__ == "__main__":
    main()
