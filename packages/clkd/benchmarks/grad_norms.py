"""Per-term gradient norms at initialisation: KD, DKD, CLKD (both reductions) and TRG terms.

A ``cifar_resnet8`` student at initialisation, a trained CIFAR-10 teacher read from
``--teacher-checkpoint`` (what ``clkd-train`` writes: ``teacher.pt``, or a CE run's
``student.pt``), batches of 64 images of CIFAR-10's training split (augmented as the trainer
sees them; the 5,000-image validation split of seed 0 held out, as in
``studies/distill_cifar10.py``); for every weighted ``loss_*`` term the L2 norm of its
gradient w.r.t. the student logits ``(B, C)`` and w.r.t. all student parameters (the common
currency of logit and feature terms), averaged over ``--batches`` batches and ``--seeds``
student inits.

    OMP_NUM_THREADS=1 python packages/clkd/benchmarks/grad_norms.py \
        --teacher-checkpoint runs/teacher/teacher.pt
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from clkd import CLKDLoss, DKDLoss
from clkd.diagnostics import term_gradient_norms
from lab_common import load_checkpoint, seed_everything, write_benchmark
from lab_common.data import tensor_datasets
from lab_common.distill import KDLoss, create_model
from lab_common.distill.kd import KD_DEFAULTS
from lab_common.runs import ACCURACY
from trg_kd import TRGLoss

RESULTS = Path(__file__).parent / "results"
STUDENT = "cifar_resnet8"
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
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument(
        "--teacher-checkpoint",
        required=True,
        help="a trained CIFAR-10 teacher of the zoo (clkd-train's teacher.pt or a CE student.pt)",
    )
    p.add_argument(
        "--teacher", default="cifar_resnet20", help="its zoo name (default: %(default)s)"
    )
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--out-dir", default=str(RESULTS))
    a = p.parse_args()
    state = load_checkpoint(a.teacher_checkpoint)
    name = state.get("model_name", a.teacher)
    teacher = create_model(name, num_classes=10, in_chans=3)
    teacher.load_state_dict(state.get("model", state))
    teacher.eval()
    train, _, _, _ = tensor_datasets("cifar10", val_images=5000, val_seed=0)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randperm(len(train), generator=gen)[:64] for _ in range(a.batches)]
    norms: dict[tuple[str, str], dict[str, list[float]]] = {}
    for seed in a.seeds:
        seed_everything(seed)
        student = create_model(STUDENT, num_classes=10, in_chans=3).train()
        params = [q for q in student.parameters() if q.requires_grad]
        for b in batches:
            x = torch.stack([train[int(i)][0] for i in b])
            y = torch.tensor([int(train[int(i)][1]) for i in b])
            with torch.no_grad():
                t_feat = teacher.forward_features(x)
                t_logits = teacher.forward_head(t_feat)
            for loss_name, make in LOSSES.items():
                loss = make()
                feat = student.forward_features(x)
                logits = student.forward_head(feat)
                kwargs = {}
                if getattr(loss, "needs_features", False):
                    kwargs = {"student_features": feat, "teacher_features": t_feat}
                terms = loss(logits, t_logits, y, **kwargs)
                for wrt_name, wrt in (("logits", logits), ("params", params)):
                    for term, v in term_gradient_norms(terms, wrt).items():
                        norms.setdefault((loss_name, term), {}).setdefault(wrt_name, []).append(v)
    rows = [
        {
            "loss": loss_name,
            "term": term,
            "‖∂/∂ logits‖": f"{statistics.fmean(v['logits']):.4f}",
            "‖∂/∂ student params‖": f"{statistics.fmean(v['params']):.4f}",
        }
        for (loss_name, term), v in norms.items()
    ]
    acc = state.get(ACCURACY, state.get("metrics", {}).get(ACCURACY))  # teacher.pt, student.pt
    title = (
        f"gradient norm of each weighted term at initialisation: {STUDENT} student, CIFAR-10 "
        f"{name} teacher{f' ({acc:.2f} %)' if isinstance(acc, float) else ''}, batch 64, "
        f"mean over {a.batches} batches x {len(a.seeds)} inits"
    )
    print(write_benchmark(rows, a.out_dir, "grad_norms", title=title))


if __name__ == "__main__":
    main()
