"""Per-term gradient norms at initialisation: KD, DKD, CLKD (both reductions) and TRG terms.

A ``cifar_resnet8`` student at initialisation, the study's CIFAR-10 ``cifar_resnet20`` teacher
(``bench_cifar10.py`` trains and caches it; run that with ``--teacher-only`` first), batches of
64 training-split images; for every weighted ``loss_*`` term the L2 norm of its gradient
w.r.t. the student logits ``(B, C)`` and w.r.t. all student parameters (the common currency of
logit and feature terms), averaged over ``--batches`` batches and ``--seeds`` student inits.

    OMP_NUM_THREADS=1 python packages/clkd/benchmarks/grad_norms.py
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from bench_cifar10 import STUDENT, TEACHER, load_split

from clkd import CLKDLoss, DKDLoss
from clkd.diagnostics import term_gradient_norms
from lab_common import cache_dir, seed_everything, write_benchmark
from lab_common.distill import KDLoss, create_model
from lab_common.distill.kd import KD_DEFAULTS
from trg_kd import TRGLoss

RESULTS = Path(__file__).parent / "results"
LOSSES = {
    "KD (CE 1, KD 1, T 4)": lambda: KDLoss(**KD_DEFAULTS),
    "KD mdistiller (CE 0.1, KD 0.9)": lambda: KDLoss(ce_weight=0.1, kd_weight=0.9, temperature=4),
    "DKD (CE 1, α 1, β 2)": lambda: DKDLoss(beta=2.0, warmup_epochs=0),
    "DKD (CE 1, α 1, β 8)": lambda: DKDLoss(beta=8.0, warmup_epochs=0),
    "CLKD 0.1 (CE 0.1, mean, μ 0.5, ν 0.4)": lambda: CLKDLoss(
        ce_weight=0.1, reduction="mean", logit_weight=0.5, correlation_weight=0.4
    ),
    "CLKD 0.2 defaults": lambda: CLKDLoss(),
    "TRG (γ 0.1: the 0.1 default)": lambda: TRGLoss(64, 64, global_weight=0.1),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out-dir", default=str(RESULTS))
    a = p.parse_args()
    work = cache_dir() / "kd02-study" / "cifar10"
    teacher = create_model(TEACHER, num_classes=10, in_chans=3)
    teacher.load_state_dict(torch.load(work / "teacher.pt")["model"])
    teacher.eval()
    data = load_split("cifar10", 0.1)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(len(data["y_train"]), generator=gen)[:64] for _ in range(a.batches)]
    norms: dict[tuple[str, str], dict[str, list[float]]] = {}
    for seed in a.seeds:
        seed_everything(seed)
        student = create_model(STUDENT, num_classes=10, in_chans=3).train()
        params = [q for q in student.parameters() if q.requires_grad]
        for b in batches:
            x, y = data["x_train"][b], data["y_train"][b]
            with torch.no_grad():
                t_feat = teacher.forward_features(x)
                t_logits = teacher.forward_head(t_feat)
            for name, make in LOSSES.items():
                loss = make()
                feat = student.forward_features(x)
                logits = student.forward_head(feat)
                kwargs = {}
                if getattr(loss, "needs_features", False):
                    kwargs = {"student_features": feat, "teacher_features": t_feat}
                terms = loss(logits, t_logits, y, **kwargs)
                for wrt_name, wrt in (("logits", logits), ("params", params)):
                    for term, v in term_gradient_norms(terms, wrt).items():
                        norms.setdefault((name, term), {}).setdefault(wrt_name, []).append(v)
    rows = [
        {
            "loss": name,
            "term": term,
            "‖∂/∂ logits‖": f"{statistics.fmean(v['logits']):.4f}",
            "‖∂/∂ student params‖": f"{statistics.fmean(v['params']):.4f}",
        }
        for (name, term), v in norms.items()
    ]
    title = (
        f"gradient norm of each weighted term at initialisation: {STUDENT} student, CIFAR-10 "
        f"{TEACHER} teacher, batch 64, mean over {a.batches} batches x {len(a.seeds)} inits"
    )
    print(write_benchmark(rows, a.out_dir, "grad_norms", title=title))


if __name__ == "__main__":
    main()
