"""The project's main job (``nox -s demo``): one short run of each package, one report.

1. LaViT tiny/small/base next to PVTv2-b1/b2: parameters, MACs and CPU throughput at 224².
2. A small LaViT trained on real images, and the attention-saturation plot of its layers.
3. A CNN teacher distilled into a smaller CNN with KD, CLKD and TRG (and CE alone).
4. MAML and GP-MAML meta-trained briefly, evaluated with 95% confidence intervals.

Data: Fashion-MNIST and Omniglot from ``--data-root`` (default: the shared datasets folder);
where they are absent, scikit-learn's embedded handwritten digits (1,797 real 8x8 images)
stand in, written once as image folders, so the demo never downloads anything.
Writes ``report.md`` and PNG plots to ``--out`` and prints where.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import lavit  # registers lavit_* with timm
from lab_common import (
    load_checkpoint,
    machine_description,
    markdown_table,
    measure_interleaved,
    seed_everything,
    shared_datasets_root,
)
from lab_common.data import load_fashion_mnist_tensors
from lab_common.runs import ResumeSettingsError

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: The small LaViT trained in section 2 (32x32 inputs; VA then LA blocks in every stage).
SMALL_LAVIT = {
    "patch_size": 2,
    "depths": [2, 2, 3, 2],
    "la_depths": [1, 1, 2, 1],  # the paper's layout: VA then LA in every stage
    "embed_dims": [24, 48, 96, 128],
    "num_heads": [1, 2, 4, 4],
    # global attention with spatial-reduction keys in stages 1-2 (3x faster on a CPU than
    # square maps at this size; the presets' 7x7 windows do not fit 32x32 inputs)
    "sr_ratios": [4, 2, 1, 1],
    "window_sizes": [0, 0, 0, 0],
    "mlp_ratios": [4, 4, 4, 4],
}


#: A DeiT-style ViT of similar size for the same 32x32 inputs (64 tokens).
SMALL_VIT = {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 7, "num_heads": 3}


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- data -------------------------------------------------------------------------------


def train_or_continue(train, config, started: bool):
    """``train(config, ...)``: an interrupted demo continues its run; a run folder left by other
    settings (e.g. an older version's defaults) is replaced."""
    if started:
        try:
            return train(config, resume=True)
        except ResumeSettingsError as err:
            log(f"{config.out}: {err.args[0].split(';')[0]}; starting it afresh")
    return train(config, overwrite=True)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..255
    return images, digits.target


def _write_png(array: np.ndarray, path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).resize((size, size), Image.BICUBIC).save(path)


def digits_image_folder(root: Path) -> Path:
    """sklearn digits as an ImageNet-style folder: ``train/<digit>/`` (80%) and ``val/<digit>/``."""
    folder = root / "digits-folder"
    if (folder / "val").is_dir():
        return folder
    images, labels = _digits()
    order = np.random.default_rng(0).permutation(len(images))
    for rank, i in enumerate(order):
        split = "train" if rank < 0.8 * len(order) else "val"
        _write_png(images[i], folder / split / str(labels[i]) / f"{i}.png", 32)
    return folder


def digits_omniglot_layout(root: Path) -> tuple[Path, Path]:
    """sklearn digits in Omniglot's layout (dark strokes): digits 0-4 to meta-train, 5-9 to test."""
    train, test = root / "digits-omniglot" / "background", root / "digits-omniglot" / "evaluation"
    if test.is_dir():
        return train, test
    images, labels = _digits()
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        split = train if label < 5 else test
        _write_png(255 - img, split / "digits" / f"digit{label}" / f"{i}.png", 28)
    return train, test


def resolve_data(data_root: Path | None, out: Path) -> dict[str, object]:
    """Where each section's data comes from: the real datasets if present, else embedded digits."""
    data: dict[str, object] = {}
    fmnist = data_root is not None and (data_root / "fashion-mnist").is_dir()
    omniglot = data_root is not None and (data_root / "omniglot").is_dir()
    if fmnist:
        data["images"] = ("fashion-mnist", str(data_root), "Fashion-MNIST")
    else:
        data["images"] = (str(digits_image_folder(out / "data")), None, "sklearn digits")
    if omniglot:
        base = data_root / "omniglot"
        data["fewshot"] = (  # disjoint: small2's alphabets that small1 lacks
            base / "images_background_small1.zip",
            base / "images_background_small2.zip",
            ("Japanese_(katakana)", "Sanskrit", "Tagalog"),
            "Omniglot small1 (train, rotation-augmented) / small2's Japanese_(katakana), "
            "Sanskrit and Tagalog (test; Greek and Latin, in both subsets, left out)",
        )
    else:
        train, test = digits_omniglot_layout(out / "data")
        data["fewshot"] = (
            train,
            test,
            (),
            "sklearn digits 0-4 (train, rotation-augmented) / 5-9 (test)",
        )
    return data


def bar_chart(
    names: list[str], values: list[float], errors: list[float] | None, xlabel: str
) -> plt.Figure:
    """Horizontal bars, first name on top, the names on the y axis (long labels stay readable).

    Each bar ends in its value (``± error`` and an error bar when ``errors`` are given),
    written just past the bar or its error bar.
    """
    errs = errors or [0.0] * len(values)
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.5 * len(names)))
    rows = np.arange(len(names))
    ax.barh(rows, values, xerr=errors, capsize=4 if errors else 0, color="#4C72B0", height=0.6)
    ax.set_yticks(rows, names)
    ax.invert_yaxis()
    for row, value, err in zip(rows, values, errs, strict=True):
        text = f"{value:.1f} ± {err:.1f}" if errors else f"{value:.1f}"
        ax.annotate(
            text, (value + err, row), xytext=(6, 0), textcoords="offset points", va="center"
        )
    ax.set_xlim(0, 1.2 * max(v + e for v, e in zip(values, errs, strict=True)))
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return fig


def bar_plot(
    names: list[str], values: list[float], errors: list[float] | None, xlabel: str, path: Path
) -> None:
    """:func:`bar_chart` written to ``path`` (PNG)."""
    fig = bar_chart(names, values, errors, xlabel)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- 1. models --------------------------------------------------------------------------


def section_models(args: argparse.Namespace) -> str:
    """Params, MACs (attention included) and 224² throughput; each LaViT timed interleaved
    with its PVTv2 counterpart like ``benchmarks/bench_backbone.py`` (median of the repeats)."""
    pairs = {"lavit_tiny": "pvt_v2_b1", "lavit_small": "pvt_v2_b2", "lavit_base": None}
    x = torch.randn(args.bench_batch, 3, 224, 224)
    column = f"img/s (batch {args.bench_batch})"
    rows = []
    for name, ref in pairs.items():
        names = [name] + ([ref] if ref else [])
        models = {n: timm.create_model(n, num_classes=1000).eval() for n in names}
        with torch.no_grad():
            res = measure_interleaved(
                {n: (lambda m=m: m(x)) for n, m in models.items()},
                warmup=1,
                repeats=args.bench_repeats,
            )
        speed = {n: args.bench_batch / r.median_s for n, r in res.items()}
        for n in names:
            rows.append(
                {
                    "model": n,
                    "params (M)": sum(p.numel() for p in models[n].parameters()) / 1e6,
                    "GMACs": lavit.count_macs(models[n], x[:1]) / 1e9,
                    column: speed[n],
                    "speed vs PVTv2": f"{speed[n] / speed[ref]:.2f}x ({ref})"
                    if n == name and ref
                    else "",
                }
            )
            log(f"{n}: {rows[-1]}")
    return markdown_table(rows)


# -- 2. LaViT training and attention saturation -------------------------------------------


def _train_classifier(model: str, kwargs: dict, args: argparse.Namespace, data: dict, run: Path):
    """Train with ``lavit.train`` (same recipe for every model); returns (model, metrics records)."""
    from lavit.train import TrainConfig, train

    dataset, root, _ = data["images"]
    cfg = TrainConfig(
        dataset=dataset,
        data_root=root or None,
        model=model,
        model_kwargs=kwargs,
        img_size=32,
        epochs=args.lavit_epochs,
        warmup_epochs=1,
        batch_size=64,
        lr=2e-3,
        mixup=0.0,
        cutmix=0.0,
        drop_path=0.05,
        scale=(0.6, 1.0),
        hflip=0.0,
        max_train_samples=args.train_images,
        max_val_samples=args.test_images,
        workers=0,
        out=str(run),
    )
    trained = train_or_continue(train, cfg, (run / "last.pt").is_file())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return trained, records


def section_lavit(args: argparse.Namespace, data: dict, out: Path) -> tuple[str, list[str]]:
    from lavit.analysis import capture_attention, consecutive_similarity, plot_attention_maps

    label = data["images"][2]
    models = {
        "LaViT (small config)": ("lavit_tiny", SMALL_LAVIT),
        "DeiT-style ViT": ("vit_tiny_patch16_224", SMALL_VIT),
    }
    images = _eval_images(data, 8)
    rows, similarity = [], {}
    for name, (model_name, kwargs) in models.items():
        run = out / "lavit" / model_name
        log(f"training {name} on {label} ({args.lavit_epochs} epochs)")
        model, records = _train_classifier(model_name, kwargs, args, data, run)
        maps = capture_attention(model, images)
        similarity[name] = consecutive_similarity(maps)
        plot_attention_maps(maps, run / "attention_maps.png", title=f"{name} attention (trained)")
        rows.append(
            {
                "model": name,
                "data": label,
                "train images": args.train_images,
                "epochs": args.lavit_epochs,
                "params (M)": sum(p.numel() for p in model.parameters()) / 1e6,
                "test top-1 (%)": records[-1]["val_top1"],
                "train time (s)": sum(r.get("epoch_time_s", 0.0) for r in records),
            }
        )
    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for (name, sims), marker in zip(similarity.items(), "os", strict=True):
        ax.plot([s["cosine"] for s in sims], marker=marker, label=name)
    ax.set_xlabel("consecutive attention-layer pair (within a stage)")
    ax.set_ylabel("cosine similarity of attention maps")
    ax.set_title("Attention saturation after training")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "attention_saturation.png", dpi=110)
    plt.close(fig)
    pngs = [
        "attention_saturation.png",
        "lavit/lavit_tiny/curves.png",
        "lavit/lavit_tiny/attention_maps.png",
    ]
    return markdown_table(rows), pngs


def _eval_images(data: dict, n: int) -> torch.Tensor:
    """``n`` test images as the LaViT sees them: ``(n, 3, 32, 32)``, ImageNet-normalised."""
    dataset, root, _ = data["images"]
    if dataset == "fashion-mnist":
        x, _ = load_fashion_mnist_tensors(root, train=False)
        x = F.pad(x[:n].float().div(255), (2, 2, 2, 2)).unsqueeze(1).expand(-1, 3, -1, -1)
    else:
        files = sorted(Path(dataset, "val").rglob("*.png"))[:n]
        x = torch.stack([torch.from_numpy(np.array(Image.open(f).convert("RGB"))) for f in files])
        x = x.permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


# -- 3. distillation -------------------------------------------------------------------


def section_distillation(args: argparse.Namespace, data: dict, out: Path) -> tuple[str, list[str]]:
    from clkd.train import TrainConfig as CLKDConfig
    from clkd.train import train as clkd_train
    from trg_kd.train import TrainConfig as TRGConfig
    from trg_kd.train import train as trg_train

    dataset, root, label = data["images"]
    teacher_ckpt = out / "distill" / "teacher.pt"
    common = {
        "dataset": dataset,
        "data_root": root,
        "teacher": args.teacher,
        "student": args.student,
        "teacher_checkpoint": teacher_ckpt,
        "teacher_epochs": args.teacher_epochs,
        "epochs": args.student_epochs,
        "batch_size": 64,
        "train_subset": args.train_images,
        "test_subset": args.test_images,
        "workers": 0,
        "seed": 0,
    }
    # every row at the trainers' defaults, all with CE weight 1 (the project's one KD weighting)
    runs = {
        "CE only (CE 1)": (clkd_train, CLKDConfig, "ce"),
        "KD (CE 1 + KD 1, T 4)": (clkd_train, CLKDConfig, "kd"),
        "CLKD (CE 1, batchmean)": (clkd_train, CLKDConfig, "clkd"),
        "TRG (CE 1 + KD 1, γ 0)": (trg_train, TRGConfig, "trg"),
    }
    rows = []
    for name, (train, config_cls, method) in runs.items():
        run_dir = out / "distill" / name.split(" (")[0].lower().replace(" ", "-")
        log(f"distillation: {name} ({args.teacher} -> {args.student} on {label})")
        start = time.time()
        started = any((run_dir / f"{phase}_last.pt").is_file() for phase in ("teacher", "student"))
        config = config_cls(**common, method=method, out=run_dir)
        result = train_or_continue(train, config, started)
        rows.append(
            {
                "method": name,
                "student test top-1 (%)": result.metrics["val_top1"],
                "time (s)": time.time() - start,
            }
        )
    names = [r["method"] for r in rows]
    accuracies = [r["student test top-1 (%)"] for r in rows]
    bar_plot(names, accuracies, None, "student test top-1 (%)", out / "distillation.png")
    teacher_acc = load_checkpoint(teacher_ckpt)["val_top1"]
    header = (
        f"Teacher {args.teacher} (test top-1 {teacher_acc:.2f}%), student {args.student}, "
        f"{label}, {args.train_images} training images"
    )
    return header + "\n\n" + markdown_table(rows), ["distillation.png"]


# -- 4. few-shot -----------------------------------------------------------------------


def section_fewshot(args: argparse.Namespace, data: dict, out: Path) -> tuple[str, list[str]]:
    from gp_maml.evaluate import evaluate
    from gp_maml.train import TrainConfig, train

    train_root, test_root, test_alphabets, label = data["fewshot"]
    rows, pngs = [], []
    for method in ("maml", "gp-maml"):
        run = out / "fewshot" / method
        log(f"meta-training {method} on {label} ({args.meta_iterations} iterations)")
        cfg = TrainConfig(
            method=method,
            backbone="conv4-32",
            dataset="omniglot",
            data_root=str(train_root),
            out=str(run),
            ways=5,
            shots=1,
            queries=5,
            batch_size=4,
            iterations=args.meta_iterations,
            val_every=0,
            inner_lr=0.4,
            milestones=(10 * args.meta_iterations,),
        )
        start = time.time()
        train_or_continue(train, cfg, (run / "last.pt").is_file())
        result = evaluate(
            run / "last.pt", test_root, alphabets=test_alphabets, tasks=args.test_tasks
        )
        (run / "test.json").write_text(json.dumps(result, indent=2))
        rows.append(
            {
                "method": method,
                "5-way 1-shot test acc (%)": f"{result['accuracy']:.2f} ± {result['ci95']:.2f}",
                "accuracy": result["accuracy"],
                "ci95": result["ci95"],
                "test tasks": args.test_tasks,
                "time (s)": time.time() - start,
            }
        )
        pngs.append(f"fewshot/{method}/curves.png")
    bar_plot(
        [r["method"] for r in rows],
        [r.pop("accuracy") for r in rows],
        [r.pop("ci95") for r in rows],
        "5-way 1-shot test accuracy (%), 95% CI",
        out / "fewshot.png",
    )
    pngs.insert(0, "fewshot.png")
    return f"{label}; Conv-4-32; 95% confidence intervals\n\n" + markdown_table(rows), pngs


# -- main ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-root", type=Path, default=None, help="default: the shared datasets folder"
    )
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--lavit-epochs", type=int, default=3)
    p.add_argument("--teacher", default="cifar_resnet20")
    p.add_argument("--student", default="cifar_resnet8")
    p.add_argument("--teacher-epochs", type=int, default=5, help="≥ 5 points above CE alone")
    p.add_argument("--student-epochs", type=int, default=3)
    p.add_argument("--meta-iterations", type=int, default=200)
    p.add_argument("--test-tasks", type=int, default=600)
    p.add_argument("--bench-batch", type=int, default=32)
    p.add_argument("--bench-repeats", type=int, default=5)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    start = time.time()
    seed_everything(0)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_root = args.data_root
    if data_root is None:
        try:
            data_root = shared_datasets_root()
        except FileNotFoundError:
            log("no shared datasets folder: using scikit-learn's embedded digits")
    data = resolve_data(data_root, out)
    sections = [("1. LaViT vs PVTv2 at 224² (CPU, no data)", section_models(args), [])]
    log(sections[0][1])
    for title, fn in (
        ("2. A small LaViT and a DeiT-style ViT trained on real images", section_lavit),
        ("3. Distillation: CE vs KD vs CLKD vs TRG", section_distillation),
        ("4. Few-shot: MAML vs GP-MAML", section_fewshot),
    ):
        table, pngs = fn(args, data, out)
        sections.append((title, table, pngs))
        print(f"\n## {title}\n\n{table}\n", flush=True)
    lines = ["# Demo report", "", f"Machine: {machine_description()}", ""]
    lines += [f"Total time: {time.time() - start:.0f} s; command: `{' '.join(sys.argv)}`", ""]
    for title, table, pngs in sections:
        lines += [f"## {title}", "", table, ""]
        lines += [f"![{p}]({p})" for p in pngs] + [""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    log(f"done in {time.time() - start:.0f} s; report: {report}")
    return report


if __name__ == "__main__":
    main()
