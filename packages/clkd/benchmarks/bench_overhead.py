"""Time per training step of a student with CLKD vs KD vs DKD vs TRG vs cross-entropy only.

One step = teacher forward (no_grad; not for CE) + student forward + loss + backward + SGD
step, for the same teacher/student/batch. Methods are measured round-robin over several rounds
(median of all timed steps per method) so that load changes on a shared machine hit every
method alike. A second table times the loss alone (forward + backward on fixed logits).

    nice -n 10 python packages/clkd/benchmarks/bench_overhead.py            # defaults below
    python packages/clkd/benchmarks/bench_overhead.py --device cuda --batch-size 64 \\
        --teacher cifar_resnet32x4 --student cifar_resnet8x4                  # the paper pair
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from clkd import CLKDLoss, DKDLoss
from clkd.train import KD_DEFAULTS
from lab_common import measure, resolve_device, seed_everything, write_benchmark
from lab_common.distill import Distiller, KDLoss  # importing lab_common.distill registers cifar_*
from trg_kd import TRGLoss

RESULTS = Path(__file__).parent / "results"
LOSSES = {
    "ce": None,
    "kd": lambda: KDLoss(**KD_DEFAULTS),
    "dkd": DKDLoss,
    "clkd-mse": lambda: CLKDLoss(variant="mse"),
    "clkd-softmax": lambda: CLKDLoss(variant="softmax"),
    # TRG at its defaults, side by side (last stages 64 wide for the thin CIFAR ResNets)
    "trg": lambda: TRGLoss(64, 64),
}
#: the step-only rows (their loss needs the feature maps, so there is no logits-only timing)
FEATURE_LOSSES = ("trg",)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="cifar_resnet20")
    p.add_argument("--student", default="cifar_resnet8")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per method per round")
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", default=str(RESULTS))
    args = p.parse_args()
    device = resolve_device(args.device)
    seed_everything(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    teacher = timm.create_model(args.teacher, num_classes=args.num_classes).to(device)

    steps = {}
    for name, factory in LOSSES.items():
        student = timm.create_model(args.student, num_classes=args.num_classes).to(device)
        if factory is None:
            model, params = student.train(), list(student.parameters())
        else:
            model = Distiller(student, teacher, factory()).train()
            params = list(model.trainable_parameters())
        # lr 0: identical work per step, but the repeated batch cannot drive the untrained
        # models to NaN (the timing is all this script measures)
        opt = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=5e-4)

        def step(model=model, opt=opt, ce=factory is None) -> None:
            if ce:
                loss = F.cross_entropy(model(x), y)
            else:
                loss = sum(model(x, y)[1].values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step

    logits_s = torch.randn(args.batch_size, args.num_classes, device=device, requires_grad=True)
    logits_t = torch.randn(args.batch_size, args.num_classes, device=device)
    loss_only = {"ce": lambda: F.cross_entropy(logits_s, y).backward()}
    for name, factory in list(LOSSES.items())[1:]:
        if name in FEATURE_LOSSES:
            continue
        loss_fn = factory()
        loss_only[name] = lambda f=loss_fn: sum(f(logits_s, logits_t, y).values()).backward()

    medians: dict[str, dict[str, list[float]]] = {"step": {}, "loss": {}}
    minima: dict[str, dict[str, list[float]]] = {"step": {}, "loss": {}}
    for _ in range(args.rounds):
        for kind, fns in (("step", steps), ("loss", loss_only)):
            for name, fn in fns.items():
                reps = args.repeats if kind == "step" else 20 * args.repeats
                m = measure(fn, warmup=1, repeats=reps, device=device)
                medians[kind].setdefault(name, []).append(m.median_s)
                minima[kind].setdefault(name, []).append(m.min_s)

    setup = (
        f"{args.teacher} -> {args.student}, batch {args.batch_size}, "
        f"{args.num_classes} classes, {args.image_size}px, {device.type}"
    )
    low = {kind: {k: min(v) for k, v in minima[kind].items()} for kind in minima}
    for kind, label in (("step", "training step"), ("loss", "loss forward+backward")):
        rows = [
            {
                "method": k,
                "median (ms)": 1e3 * statistics.median(medians[kind][k]),
                "min (ms)": 1e3 * v,
                "min × KD": v / low[kind]["kd"],
                "min × CE": v / low[kind]["ce"],
            }
            for k, v in low[kind].items()
        ]
        md = write_benchmark(rows, args.out_dir, f"overhead_{kind}", title=f"{label}: {setup}")
        print(md)
    # The KD and CLKD steps differ only in the loss, so their step-time difference is the
    # loss-time difference: a ratio that stays readable when the step timing is noisy.
    extra = {
        k: 1e3 * (low["loss"][k] - low["loss"]["kd"]) for k in ("dkd", "clkd-mse", "clkd-softmax")
    }
    rows = [
        {
            "method": k,
            "loss time − KD loss time (ms)": d,
            "step ratio vs KD implied by the fastest KD step": 1 + d / (1e3 * low["step"]["kd"]),
        }
        for k, d in extra.items()
    ]
    print(write_benchmark(rows, args.out_dir, "overhead_implied", title=f"implied: {setup}"))


if __name__ == "__main__":
    main()
