"""LaViT against all-VA, LaViT with PVTv2's depthwise-conv MLP and PVTv2 on CIFAR-10.

Protocol: the 50,000 training images of ``../shared/datasets/cifar10``; a class-balanced
validation split of 5,000 (seed 0, the distillation study's) is every number's evaluation
split, the other 45,000 train. Every row is ``lavit.train`` with the same recipe: 32² inputs
in memory, random crop (padding 4) + horizontal flip (``augment="crop-flip"``), AdamW lr 2e-3,
weight decay 0.05, cosine schedule with 3 warm-up epochs, label smoothing 0.1, no mixup, no
drop path, batch 128, 30 epochs; the DP loss at weight 0.1 where the model is a LaViT. The
models share three stages (token grids 8/4/2, widths 32/64/128, heads 1/2/4, MLP ratio 4,
depth 2 per stage) and differ only in what the study compares: LaViT (one VA then one LA
block in every stage, square maps, the first LA block on the softmax attention), all-VA (no
LA block), each with the plain or the depthwise-conv MLP, and timm's PVTv2 (full-resolution
keys). Seeds 0-2 for every row, and 3-4 for LaViT and LaViT + dwconv MLP, the two rows that
decide the presets' MLP. The attention-saturation analysis (consecutive-map cosine per
stage) runs on the seed-0 models. Runs started or resumed from 2026-12-07 on compute LaViT's attention
downsampling between stages as one matrix product instead of a convolution (lavit 0.3: the same
function, float rounding differs; a faster training step).

    python studies/lavit_cifar10.py --jobs 2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import (
    RESULTS,
    Evaluation,
    Row,
    Store,
    plot_curves,
    seeds,
    study_main,
    summarise,
    write_report,
)

STUDY = "lavit_cifar10"
SEEDS = (0, 1, 2)
#: The rows that decide the presets' MLP get seeds 3 and 4: after three seeds the paired
#: difference (+1.64, +1.12, +3.40) had a 95 % CI that straddled 0.
DECIDING_SEEDS = (0, 1, 2, 3, 4)
STAGES = {
    "depths": (2, 2, 2),
    "embed_dims": (32, 64, 128),
    "num_heads": (1, 2, 4),
    "mlp_ratios": (4, 4, 4),
}
LAVIT = {
    **STAGES,
    "la_depths": (1, 1, 1),
    "sr_ratios": (1, 1, 1),
    "window_sizes": (0, 0, 0),
    "la_input": "softmax",
}
RECIPE = {
    "dataset": "cifar10",
    "val_images": 5000,
    "val_seed": 0,
    "augment": "crop-flip",
    "img_size": 32,
    "epochs": 30,
    "batch_size": 128,
    "lr": 2e-3,
    "min_lr": 1e-5,
    "warmup_lr": 1e-5,
    "warmup_epochs": 3,
    "weight_decay": 0.05,
    "smoothing": 0.1,
    "mixup": 0.0,
    "cutmix": 0.0,
    "drop_path": 0.0,
    "workers": 0,
}


def model_run(model: str, model_kwargs: dict[str, Any], dp_loss_weight: float) -> dict[str, Any]:
    return {
        **RECIPE,
        "model": model,
        "model_kwargs": model_kwargs,
        "dp_loss_weight": dp_loss_weight,
    }


#: row name -> trainer kwargs
MODELS = {
    "LaViT": model_run("lavit_tiny", LAVIT, 0.1),
    "all-VA": model_run("lavit_tiny", {**LAVIT, "la_depths": (0, 0, 0)}, 0.0),
    "LaViT + dwconv MLP": model_run("lavit_tiny", {**LAVIT, "mlp_dwconv": True}, 0.1),
    "PVTv2-style": model_run("pvt_v2_b0", {**STAGES, "sr_ratios": (1, 1, 1)}, 0.0),
    "all-VA + dwconv MLP": model_run(
        "lavit_tiny", {**LAVIT, "la_depths": (0, 0, 0), "mlp_dwconv": True}, 0.0
    ),
    "LaViT, no DP loss": model_run("lavit_tiny", LAVIT, 0.0),
}
#: The presets' MLP (plain or depthwise-conv) is decided on these two rows.
MLP_DECISION = ("LaViT", "LaViT + dwconv MLP")


def saturation(folder: Path) -> dict[str, Any]:
    """Consecutive-layer attention cosine of a trained model on 64 validation images."""
    import json

    import timm
    import torch

    import lavit  # noqa: F401  (registers the lavit_* models)
    from lab_common.data import tensor_datasets
    from lavit.analysis import capture_attention, consecutive_similarity

    cfg = json.loads((folder / "config.json").read_text())
    model = timm.create_model(
        cfg["model"],
        num_classes=10,
        in_chans=3,
        **({"img_size": 32} if cfg["model"].startswith("lavit") else {}),
        **cfg["model_kwargs"],
    )
    model.load_state_dict(torch.load(folder / "model.pth", map_location="cpu", weights_only=False))
    _, val, _, _ = tensor_datasets(
        "cifar10", val_images=cfg["val_images"], val_seed=cfg["val_seed"]
    )
    x = torch.stack([val[i][0] for i in range(64)])
    return {"layers": consecutive_similarity(capture_attention(model.eval(), x))}


ROWS = [
    Row(name, seeds("lavit", kwargs, DECIDING_SEEDS if name in MLP_DECISION else SEEDS))
    for name, kwargs in MODELS.items()
]
SATURATION = [Evaluation(row.runs[0], "lavit_cifar10:saturation") for row in ROWS[:4]]


def _frontier(rows: list[dict[str, Any]]) -> Path | None:
    """Validation accuracy against inference throughput (``lavit_cifar10_speed.py``'s JSON)."""
    import json

    from matplotlib.figure import Figure

    speed_path = RESULTS / "lavit_cifar10_speed.json"
    if not speed_path.is_file():
        return None
    speed = {r["model"]: r for r in json.loads(speed_path.read_text())["rows"]}
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for row in rows:
        if "mean" not in row or row["name"] not in speed:
            continue
        x = speed[row["name"]]["infer_img_s"]
        ax.errorbar(x, row["mean"], yerr=row["ci95"], fmt="o", capsize=3)
        ax.annotate(
            row["name"], (x, row["mean"]), textcoords="offset points", xytext=(6, 4), fontsize=8
        )
    ax.set_xlabel("inference throughput (img/s, 32², batch 128, CPU)")
    ax.set_ylabel("validation accuracy (%), mean ± 95 % CI")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = RESULTS / f"{STUDY}_frontier.png"
    fig.savefig(path, dpi=110)
    return path


def _saturation_section(saturation: dict[str, list[dict[str, Any]]]) -> str:
    """A table and a bar plot of each model's consecutive-map cosine per stage."""
    from matplotlib.figure import Figure

    from lab_common import markdown_table

    if not saturation:
        return ""
    stages = max(len(layers) for layers in saturation.values())
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    width = 0.8 / len(saturation)
    for i, (name, layers) in enumerate(saturation.items()):
        xs = [s + (i - (len(saturation) - 1) / 2) * width for s in range(len(layers))]
        ax.bar(xs, [layer["cosine"] for layer in layers], width, label=name)
    ax.set_xticks(range(stages), [f"stage {s + 1}" for s in range(stages)])
    ax.set_ylabel("cosine of consecutive attention maps")
    ax.set_ylim(0, 1.2)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.legend(fontsize=7, ncol=len(saturation), loc="upper center")
    fig.tight_layout()
    path = RESULTS / f"{STUDY}_saturation.png"
    fig.savefig(path, dpi=110)
    table = markdown_table(
        [
            {
                "model": name,
                **{f"stage {s + 1}": f"{x['cosine']:.3f}" for s, x in enumerate(layers)},
            }
            for name, layers in saturation.items()
        ]
    )
    return "\n".join(
        [
            "## Attention saturation of the trained seed-0 models",
            "",
            "Cosine similarity of the two consecutive attention maps of each stage (LaViT: the "
            "VA map and the LA map computed from it; the others: two VA maps), mean over 64 "
            "validation images and the heads (`lavit.analysis`).",
            "",
            table,
            "",
            f"![saturation]({path.name})",
        ]
    )


def report(store: Store, command: str) -> None:
    rows = summarise(ROWS, store, baseline="LaViT")
    frontier = _frontier(rows)
    curves = plot_curves(ROWS, store, RESULTS / f"{STUDY}_curves.png", "epoch")
    sat = {ev.run.key: store.record(ev)["result"] for ev in SATURATION if store.finished(ev)}
    names = {row.runs[0].key: row.name for row in ROWS}
    saturation = {names[k]: v["layers"] for k, v in sat.items()}
    frontier_section = (
        "## Accuracy against speed\n\nValidation accuracy against inference throughput at 32², "
        "batch 128, one idle CPU run of all rows interleaved "
        f"([lavit_cifar10_speed.md]({STUDY}_speed.md)).\n\n![frontier]({frontier.name})"
        if frontier
        else ""
    )
    write_report(
        STUDY,
        title="LaViT on CIFAR-10 (45,000 training images, 5,000 validation)",
        protocol={
            "train_images": 45000,
            "val_images": 5000,
            "epochs": RECIPE["epochs"],
            "img_size": 32,
            "batch_size": RECIPE["batch_size"],
        },
        rows=rows,
        baseline="LaViT",
        command=command,
        text=__doc__.split("\n\n")[1],
        curves=curves,
        extra={"saturation": saturation, "frontier_png": frontier.name if frontier else None},
        sections=[frontier_section, _saturation_section(saturation)],
    )


if __name__ == "__main__":
    raise SystemExit(
        study_main(STUDY, [*ROWS, Row("saturation", SATURATION)], report, description=__doc__)
    )
