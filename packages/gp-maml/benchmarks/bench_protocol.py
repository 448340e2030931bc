"""Rules decided on a validation split, then tested on a disjoint protocol (Omniglot, CPU-sized).

Every variant meta-trains with ``gp_maml.train`` (so: checkpoints, exact resume) on
``images_background_small1``'s training characters (rotation-augmented; every 10th character
is the validation split, ``omniglot_split``) with 15 queries per class, and validates every
``--val-every`` iterations (the curve: ``results/<name>_val.png``). Then, from the final
checkpoint (``last.pt``):

- validation accuracy on ``--val-tasks`` episodes of the held-out small1 characters at 15 and 1
  queries per class (``--val-queries``), and the paired difference of every GP variant to the
  method's default rules: the numbers the rules are decided on;
- test accuracy on small2's three alphabets small1 lacks (``SMALL2_NEW_ALPHABETS``, 106
  characters none of which small1 holds) at 15, 5 and 1 test queries per class, the same
  episodes for every variant, so differences to the base learner are paired;
- ``--threshold-variants`` (GP-MAML), ``--thresholds``: the same with confidence-threshold
  picking (``pick_threshold``) at test time, ``--fallback-thresholds`` with class-balanced
  picking that falls back to a threshold where it picks nothing (``fallback_threshold``); the
  threshold to be chosen on the validation split.

Every evaluation is cached as JSON in ``--work-dir``, so an interrupted study continues.

    OMP_NUM_THREADS=1 python packages/gp-maml/benchmarks/bench_protocol.py --thresholds 0.4 0.6 0.8
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from matplotlib.figure import Figure

from gp_maml.datasets import SMALL2_NEW_ALPHABETS
from gp_maml.evaluate import evaluate
from gp_maml.train import RUN_ONLY, TrainConfig, train
from lab_common import cache_dir, mean_confidence_interval, shared_datasets_root, write_benchmark
from lab_common.runs import check_resume_settings

RESULTS = Path(__file__).parent / "results"
GP_ONLY = (
    "lp_loss_weight",
    "class_mass_norm",
    "self_loops",
    "relation_net",
    "separate_lp_encoder",
    "pick_threshold",
    "fallback_threshold",
)
# name -> (method, preset, TrainConfig overrides)
VARIANTS: dict[str, tuple[str, str, dict]] = {
    "maml": ("maml", "default", {}),
    "gp-maml": ("gp-maml", "default", {}),
    "gp-maml, LP weight 1": ("gp-maml", "default", {"lp_loss_weight": 1.0}),
    "gp-maml, raw scores": ("gp-maml", "default", {"class_mass_norm": False}),
    "gp-maml, zero diagonal": ("gp-maml", "default", {"self_loops": False}),
    "gp-maml, TPN relation net": ("gp-maml", "default", {"relation_net": "tpn"}),
    "gp-maml, paper preset": ("gp-maml", "paper", {}),
    "anil": ("anil", "default", {}),
    "gp-anil": ("gp-anil", "default", {}),
    "gp-anil, zero diagonal": ("gp-anil", "default", {"self_loops": False}),
    "gp-anil, LP weight 1": ("gp-anil", "default", {"lp_loss_weight": 1.0}),
    "gp-anil, separate LP encoder": ("gp-anil", "default", {"separate_lp_encoder": True}),
    "gp-anil, paper preset": ("gp-anil", "paper", {}),
    "boil": ("boil", "default", {}),
    "gp-boil": ("gp-boil", "default", {}),
    "gp-boil, zero diagonal": ("gp-boil", "default", {"self_loops": False}),
    "gp-boil, LP weight 1": ("gp-boil", "default", {"lp_loss_weight": 1.0}),
    "gp-boil, paper preset": ("gp-boil", "paper", {}),
}


def base_learner(name: str) -> str | None:
    """The base learner a GP variant is compared with (``"gp-boil, ..."`` -> ``"boil"``);
    ``None`` for a base learner's own variant."""
    method = VARIANTS[name][0]
    return method.removeprefix("gp-") if method.startswith("gp-") else None


def slug(name: str) -> str:
    return name.replace(", ", "_").replace(" ", "-")


def train_variant(name: str, a: argparse.Namespace, work: Path) -> Path:
    """Meta-train ``name`` (resuming a previous run of the same settings); its ``last.pt``.

    A finished run is reused only with the same settings (the trainer's resume check), so a
    ``--work-dir`` never mixes runs of other settings."""
    method, preset, overrides = VARIANTS[name]
    run = work / slug(name)
    cfg = TrainConfig(
        method=method,
        preset=preset,
        backbone=a.backbone,
        data_root=str(a.train_root),
        out=str(run),
        ways=a.ways,
        shots=a.shots,
        queries=15,
        batch_size=a.batch_size,
        iterations=a.iterations,
        val_every=a.val_every,
        val_tasks=200,
        val_rotations=a.val_rotations,
        seed=a.seed,
        threads=a.threads,
        progress=False,
        **overrides,
    )
    done = run / "done"
    if done.exists():
        stored = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
        inert = () if method.startswith("gp-") else GP_ONLY  # no effect on a base learner
        check_resume_settings(asdict(stored), asdict(cfg), always_allowed=(*RUN_ONLY, *inert))
    else:
        resume = (run / "last.pt").is_file()
        train(cfg, resume=resume, overwrite=not resume)
        done.write_text("")
    return run / "last.pt"


def cached_eval(key: str, work: Path, **kwargs) -> dict:
    """``gp_maml.evaluate.evaluate(**kwargs)``, cached in ``work/evals/<key>.json`` (a cached
    result of another task count, query count or picking rule is recomputed)."""
    path = work / "evals" / f"{key}.json"
    if path.exists():
        cached = json.loads(path.read_text())
        rule = ("tasks", "queries", "pick_threshold", "fallback_threshold")
        if all(cached.get(k) == kwargs.get(k) for k in rule):
            return cached
    path.parent.mkdir(exist_ok=True)
    result = evaluate(**kwargs, show_progress=False)
    path.write_text(json.dumps(result))
    return result


def val_curves(names: list[str], work: Path, out: Path, tag: str, title: str) -> None:
    """Validation accuracy over meta-training of every variant (PNG)."""
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    for name in names:
        path = work / slug(name) / "metrics.jsonl"
        recs = [json.loads(line) for line in path.read_text().splitlines() if "val_acc" in line]
        ax.plot([r["step"] for r in recs], [r["val_acc"] for r in recs], marker=".", label=name)
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel("validation accuracy (%), 200 tasks")
    ax.set_title(f"{title}: small1's held-out characters, 15 queries", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{tag}_val.png", dpi=110)


def run_study(
    a: argparse.Namespace, work: Path, test_root: Path, t0: float
) -> tuple[list[dict], dict]:
    """Every variant of ``a`` trained (seed ``a.seed``) and evaluated in ``work``: the table's
    rows and the per-task accuracies, keyed ``(label, test queries)`` and ``(label, "val<q>")``."""
    val_kw = dict(data_root=a.train_root, split="val", tasks=a.val_tasks, threads=a.threads)
    test_kw = dict(
        data_root=test_root, alphabets=SMALL2_NEW_ALPHABETS, tasks=a.test_tasks, threads=a.threads
    )
    rows, per_task = [], {}
    for name in a.variants:
        ckpt = train_variant(name, a, work)
        print(f"[{time.time() - t0:.0f}s] {name}: trained", flush=True)
        # (label, pick_threshold, fallback_threshold): the trained rule, then test-time rules
        rules: list[tuple[str, float | None, float | None]] = [(name, None, None)]
        if name in a.threshold_variants:
            rules += [(f"{name}, threshold {t:g}", t, None) for t in a.thresholds]
            rules += [(f"{name}, fallback {t:g}", None, t) for t in a.fallback_thresholds]
        for label, threshold, fallback in rules:
            pick = dict(pick_threshold=threshold, fallback_threshold=fallback)
            key = slug(label)
            row = {"variant": label}
            for q in a.val_queries:
                val = cached_eval(
                    f"{key}_val{q}", work, checkpoint=ckpt, queries=q, **pick, **val_kw
                )
                row[f"val @{q} (%)"] = f"{val['accuracy']:.2f} ± {val['ci95']:.2f}"
                accs = torch.tensor(val["per_task_accuracy"])
                per_task[(label, f"val{q}")] = accs
                default = VARIANTS[name][0]  # the method's default rules: the variant so named
                if label != default and (default, f"val{q}") in per_task:
                    d, h = mean_confidence_interval(accs - per_task[(default, f"val{q}")])
                    row[f"val Δ vs default @{q}"] = f"{d:+.2f} ± {h:.2f}"
            for q in a.test_queries:
                res = cached_eval(
                    f"{key}_test{q}",
                    work,
                    checkpoint=ckpt,
                    queries=q,
                    **pick,
                    **test_kw,
                )
                accs = torch.tensor(res["per_task_accuracy"])
                per_task[(label, q)] = accs
                row[f"test @{q} (%)"] = f"{res['accuracy']:.2f} ± {res['ci95']:.2f}"
                base = base_learner(name)
                if base is not None and (base, q) in per_task:
                    d, h = mean_confidence_interval(accs - per_task[(base, q)])
                    row[f"Δ vs base @{q}"] = f"{d:+.2f} ± {h:.2f}"
                if base is not None:
                    row[f"no pick @{q} (%)"] = round(100 * res["fallback_rate"], 1)
            rows.append(row)
            print(f"[{time.time() - t0:.0f}s] {row}", flush=True)
    return rows, per_task


def seed_summary(names: list[str], per_seed: list[dict], queries: list[int]) -> list[dict]:
    """Per variant, the mean over seeds (± the 95 % t-interval, one value per seed) of test
    accuracy and of the paired Δ to the base learner (each seed's mean over the test tasks)."""
    rows = []
    for name in names:
        base = base_learner(name)
        row = {"variant": name}
        for q in queries:
            m, h = mean_confidence_interval([float(p[(name, q)].mean()) for p in per_seed])
            row[f"test @{q} (%)"] = f"{m:.2f} ± {h:.2f}"
            if base is not None and all((base, q) in p for p in per_seed):
                d = [float((p[(name, q)] - p[(base, q)]).mean()) for p in per_seed]
                m, h = mean_confidence_interval(d)
                row[f"Δ vs base @{q}"] = (
                    f"{m:+.2f} ± {h:.2f} ({' / '.join(f'{x:+.2f}' for x in d)})"
                )
        rows.append(row)
    return rows


def study_title(a: argparse.Namespace, seeds: str) -> str:
    """The results table's title: the protocol of ``a``, its training ``seeds`` in words."""
    return (
        f"{a.ways}-way {a.shots}-shot, {a.backbone}, {a.iterations} meta-iterations x "
        f"{a.batch_size} tasks, 15 training queries, Adam 1e-3, {seeds}; validation: "
        f"small1's held-out characters{' and their rotations' if a.val_rotations else ''} "
        f"({a.val_tasks} tasks); test: small2's "
        f"{', '.join(SMALL2_NEW_ALPHABETS)} ({a.test_tasks} tasks, the same for every row); "
        f"mean ± 95 % CI; Δ paired: 'vs base' GP − its base learner on the test tasks, 'vs "
        f"default' a variant − its method's default rules on the validation tasks; "
        f"{a.threads} thread(s)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--backbone", default="conv4-32")
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--val-every", type=int, default=50)
    p.add_argument("--val-tasks", type=int, default=600)
    p.add_argument("--test-tasks", type=int, default=1000)
    p.add_argument("--test-queries", type=int, nargs="+", default=[15, 5, 1])
    p.add_argument("--val-queries", type=int, nargs="+", default=[15, 1])
    p.add_argument(
        "--val-rotations",
        action="store_true",
        help="the held-out characters' rotations are validation classes too (52 instead of 13: "
        "needed for 20-way)",
    )
    p.add_argument("--thresholds", type=float, nargs="*", default=[])
    p.add_argument("--fallback-thresholds", type=float, nargs="*", default=[])
    p.add_argument("--threshold-variants", nargs="+", default=["gp-maml"], choices=list(VARIANTS))
    p.add_argument(
        "--seeds",
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        help="training seeds (the tasks stay the same for every seed); seed 0 trains in the work "
        "dir, seed s in <work-dir>_seed<s>; with several, <name>_seeds is the summary",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", type=Path, default=None, help="default: the shared Omniglot")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--name", default="", help="results file stem (default: protocol_<ways>w<shots>s_...)"
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    root = a.data_root or shared_datasets_root() / "omniglot"
    a.train_root, test_root = (
        root / "images_background_small1.zip",
        root / "images_background_small2.zip",
    )
    tag = f"protocol_{a.ways}w{a.shots}s_{a.backbone}_{a.iterations}it"
    base_work = a.work_dir or cache_dir() / "gp-maml-protocol" / tag
    t0 = time.time()
    studies = []  # (work dir, table rows, per-task accuracies) per seed
    for seed in a.seeds:
        a.seed = seed
        work = base_work if seed == 0 else base_work.with_name(f"{base_work.name}_seed{seed}")
        work.mkdir(parents=True, exist_ok=True)
        studies.append((work, *run_study(a, work, test_root, t0)))
    work, rows, _ = studies[0]  # the table and curves: the first seed's
    stem = a.name or tag
    print(write_benchmark(rows, a.out, stem, title=study_title(a, f"seed {a.seeds[0]}")))
    val_curves(a.variants, work, a.out, stem, f"{a.ways}-way {a.shots}-shot, {a.backbone}")
    if len(a.seeds) > 1:
        summary = seed_summary(a.variants, [per_task for *_, per_task in studies], a.test_queries)
        seeds = f"seeds {', '.join(map(str, a.seeds))}"
        title = (
            f"{study_title(a, seeds)}; mean over the seeds ± 95 % t-interval (n = "
            f"{len(a.seeds)}), Δ: each seed's paired mean over the test tasks, listed in brackets"
        )
        print(write_benchmark(summary, a.out, f"{stem}_seeds", title=title))


if __name__ == "__main__":
    main()
