"""GP-MAML and GP-ANIL against their base learners at 300 and 3,000 meta-iterations.

The disjoint Omniglot protocol: meta-train on ``images_background_small1`` (rotation-augmented
training characters; every 10th character is the validation split), validate on those held-out
characters, meta-test on the three alphabets of ``images_background_small2`` that small1 lacks.
Conv-4-32, meta-batch 4, 15 training queries, Adam 1e-3 with ×0.1 drops at one and two thirds
of the budget (the trainer's 10,000 / 20,000 of 30,000, scaled), one inner step. Every run is
``gp_maml.train``; every number comes from ``gp_maml.evaluate`` on its final checkpoint: 600
validation tasks at 15 and 1 queries per class, 1,000 test tasks (the same tasks for every row,
so differences are paired per task) at 15, 5 and 1 queries per class.

The picking rule (class-balanced, the default, against ``fallback_threshold`` 0.3) is compared
on the validation split with one query per class, where a user meets it, for GP-MAML at 20-way
with two backbone widths and two meta-batch sizes at both budgets.

    python studies/fewshot_budget.py --jobs 2
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import (
    RESULTS,
    Evaluation,
    Row,
    Run,
    Shared,
    Store,
    machine,
    mean_ci,
    study_main,
)

STUDY = "fewshot_budget"
SMALL1 = "omniglot/images_background_small1.zip"
SMALL2 = "omniglot/images_background_small2.zip"
BUDGETS = (300, 3000)
TEST_QUERIES = (15, 5, 1)
VAL_TASKS, TEST_TASKS = 600, 1000
FALLBACK = 0.3


def meta_test(
    folder: Path,
    *,
    split: str,
    queries: int,
    tasks: int,
    fallback_threshold: float | None = None,
) -> dict[str, Any]:
    """``gp_maml.evaluate`` of the run's ``last.pt``: validation on small1's held-out characters,
    test on small2's new alphabets; accuracy, CI, per-task accuracies and how often no query
    was picked."""
    from gp_maml.datasets import SMALL2_NEW_ALPHABETS
    from gp_maml.evaluate import evaluate
    from lab_common import shared_datasets_root

    test = split == "test"
    result = evaluate(
        folder / "last.pt",
        shared_datasets_root() / (SMALL2 if test else SMALL1),
        split=split,
        alphabets=SMALL2_NEW_ALPHABETS if test else (),
        tasks=tasks,
        queries=queries,
        fallback_threshold=fallback_threshold,
        seed=0,
        show_progress=False,
    )
    keys = ("accuracy", "ci95", "per_task_accuracy", "fallback_rate", "tasks", "queries")
    return {k: result[k] for k in keys if k in result}


def run(method: str, ways: int, iterations: int, seed: int, **extra: Any) -> Run:
    """One meta-training run of the protocol (learning-rate drops scaled to the budget)."""
    kwargs = {
        "method": method,
        "backbone": "conv4-32",
        "data_root": Shared(SMALL1),
        "ways": ways,
        "shots": 1,
        "queries": 15,
        "batch_size": 4,
        "iterations": iterations,
        "milestones": (iterations // 3, 2 * iterations // 3),
        "val_every": iterations // 10,
        "val_tasks": 200,
        "val_rotations": ways == 20,
        **extra,
    }
    return Run("gp-maml", kwargs, seed, keep=("last.pt",))


def test_eval(r: Run, queries: int) -> Evaluation:
    return Evaluation(
        r, "fewshot_budget:meta_test", {"split": "test", "queries": queries, "tasks": TEST_TASKS}
    )


def val_eval(r: Run, queries: int, fallback: float | None = None) -> Evaluation:
    kwargs = {"split": "val", "queries": queries, "tasks": VAL_TASKS}
    if fallback is not None:
        kwargs["fallback_threshold"] = fallback
    return Evaluation(r, "fewshot_budget:meta_test", kwargs)


#: (ways, base learner, seeds): the budget grid of part A.
PAIRS = [(5, "maml", (0, 1, 2)), (5, "anil", (0, 1, 2)), (20, "maml", (0, 1))]
#: (backbone, meta-batch): the settings of the picking-rule comparison (20-way GP-MAML).
PICKING = [("conv4-32", 4), ("conv4-64", 4), ("conv4-32", 2)]


def _accuracy(record: dict[str, Any]) -> float:
    return record["result"]["accuracy"]


def rows() -> list[Row]:
    """Every evaluation the study reads, cheapest budget first."""
    out = []
    for iterations in BUDGETS:
        for ways, base, seed_list in PAIRS:
            for method in (base, f"gp-{base}"):
                runs = [run(method, ways, iterations, s) for s in seed_list]
                tag = f"{ways}w1s {method} {iterations}it"
                for q in TEST_QUERIES:
                    out.append(
                        Row(f"{tag} test@{q}", [test_eval(r, q) for r in runs], metric=_accuracy)
                    )
                for q in (15, 1):
                    out.append(
                        Row(f"{tag} val@{q}", [val_eval(r, q) for r in runs], metric=_accuracy)
                    )
        for backbone, batch in PICKING:
            r = run("gp-maml", 20, iterations, 0, backbone=backbone, batch_size=batch)
            tag = f"20w1s gp-maml {backbone} b{batch} {iterations}it"
            out.append(Row(f"{tag} val@1 balanced", [val_eval(r, 1)], metric=_accuracy))
            out.append(Row(f"{tag} val@1 fallback", [val_eval(r, 1, FALLBACK)], metric=_accuracy))
    return out


ROWS = rows()


def _paired(store: Store, gp: Sequence[Evaluation], base: Sequence[Evaluation]) -> dict | None:
    """GP − base per seed (mean over the paired tasks), and their mean ± t-interval."""
    import torch

    from lab_common import mean_confidence_interval

    pairs = [
        (g, b) for g, b in zip(gp, base, strict=True) if store.finished(g) and store.finished(b)
    ]
    if not pairs:
        return None
    per_seed, task_ci = [], []
    for g, b in pairs:
        diff = torch.tensor(store.record(g)["result"]["per_task_accuracy"]) - torch.tensor(
            store.record(b)["result"]["per_task_accuracy"]
        )
        m, h = mean_confidence_interval(diff)
        per_seed.append(m)
        task_ci.append(h)
    mean, half = mean_confidence_interval(per_seed)
    return {
        "seeds": len(pairs),
        "mean": mean,
        "ci95": half,
        "per_seed": per_seed,
        "task_ci95": task_ci,
    }


def report(store: Store, command: str) -> None:
    import json
    from datetime import date

    from lab_common import mean_confidence_interval

    by_name = {row.name: row for row in ROWS}
    table, plot_points = [], {}
    for ways, base, _ in PAIRS:
        for iterations in BUDGETS:
            tag = f"{ways}w1s {{}} {iterations}it"
            entry: dict[str, Any] = {
                "setting": f"{ways}-way 1-shot",
                "base": base,
                "iterations": iterations,
            }
            for q in TEST_QUERIES:
                b = by_name[f"{tag.format(base)} test@{q}"].runs
                g = by_name[f"{tag.format('gp-' + base)} test@{q}"].runs
                for name, evals in ((base, b), (f"gp-{base}", g)):
                    accs = [_accuracy(store.record(e)) for e in evals if store.finished(e)]
                    if accs:
                        m, h = mean_confidence_interval(accs)
                        entry[f"{name} @{q}"] = {"mean": m, "ci95": h, "seeds": len(accs)}
                paired = _paired(store, g, b)
                if paired:
                    entry[f"delta @{q}"] = paired
                    plot_points.setdefault((ways, base, q), []).append((iterations, paired))
            table.append(entry)
    picking = []
    for iterations in BUDGETS:
        for backbone, batch in PICKING:
            tag = f"20w1s gp-maml {backbone} b{batch} {iterations}it val@1"
            bal, fb = by_name[f"{tag} balanced"].runs[0], by_name[f"{tag} fallback"].runs[0]
            if store.finished(bal) and store.finished(fb):
                p = _paired(store, [fb], [bal])
                picking.append(
                    {
                        "backbone": backbone,
                        "meta_batch": batch,
                        "iterations": iterations,
                        "balanced": _accuracy(store.record(bal)),
                        "fallback": _accuracy(store.record(fb)),
                        "fallback_minus_balanced": p["mean"],
                        "task_ci95": p["task_ci95"][0],
                    }
                )
    curves = _plot(plot_points)
    verdict = picking_verdict(picking, settings=len(BUDGETS) * len(PICKING))
    payload = {
        "study": STUDY,
        "machine": machine(),
        "command": command,
        "date": date.today().isoformat(),
        "protocol": {
            "train": "omniglot small1 (rotations), validation: its every 10th character",
            "test": "omniglot small2 Japanese_(katakana), Sanskrit, Tagalog",
            "backbone": "conv4-32",
            "meta_batch": 4,
            "train_queries": 15,
            "iterations": list(BUDGETS),
            "milestones": "iterations/3, 2*iterations/3",
            "val_tasks": VAL_TASKS,
            "test_tasks": TEST_TASKS,
        },
        "rows": table,
        "picking": picking,
        "picking_verdict": verdict,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{STUDY}.json").write_text(json.dumps(payload, indent=1) + "\n")
    lines = [
        "# GP learners at 300 and 3,000 meta-iterations (Omniglot, disjoint protocol)",
        "",
        __doc__.split("\n\n")[1].strip(),
        "",
        f"Command: `{command}`  ",
        f"Machine: {payload['machine']}  ",
        f"Date: {payload['date']}",
        "",
        "Test accuracy (%), mean ± 95 % CI over training seeds; Δ = GP − base learner, per seed "
        "the mean over the 1,000 paired test tasks, then mean ± t-interval over seeds (with one "
        "seed: no CI over seeds, the 95 % CI over its paired tasks instead, which says nothing "
        "about another training seed).",
        "",
        "| setting | iterations | test queries | base | GP | Δ GP − base (seeds) |",
        "|---|---|---|---|---|---|",
    ]
    for e in table:
        for q in TEST_QUERIES:
            base, gp = e.get(f"{e['base']} @{q}"), e.get(f"gp-{e['base']} @{q}")
            d = e.get(f"delta @{q}")
            lines.append(
                f"| {e['setting']}, {e['base']} | {e['iterations']} | {q} | {_accuracy_cell(base)} "
                f"| {_accuracy_cell(gp)} | {_delta_cell(d)} |"
            )
    lines += [
        "",
        "Picking rule, 20-way 1-shot GP-MAML, validation, one query per class (600 tasks, seed 0):",
        "",
        "| backbone | meta-batch | iterations | balanced (%) | fallback 0.3 (%) "
        "| fallback − balanced ± 95 % CI over the paired tasks |",
        "|---|---|---|---|---|---|",
        *(
            f"| {p['backbone']} | {p['meta_batch']} | {p['iterations']} | {p['balanced']:.2f} | "
            f"{p['fallback']:.2f} | {p['fallback_minus_balanced']:+.2f} ± {p['task_ci95']:.2f} |"
            for p in picking
        ),
        "",
        f"Verdict: {verdict}",
        "",
    ]
    if curves:
        lines += [f"![gain against budget]({curves.name})", ""]
    (RESULTS / f"{STUDY}.md").write_text("\n".join(lines))


def picking_verdict(picking: Sequence[dict[str, Any]], settings: int) -> str:
    """What the picking-rule rows allow the README to say: a rule is recommended only where it
    wins (its paired CI above 0) in every one of the ``settings`` tried."""
    if len(picking) < settings:
        return f"open: {len(picking)} of {settings} settings measured"
    diffs = [(p["fallback_minus_balanced"], p["task_ci95"]) for p in picking]
    wins = sum(d - h > 0 for d, h in diffs)
    losses = sum(d + h < 0 for d, h in diffs)
    if wins == len(diffs):
        return f"the fallback rule wins in all {settings} settings: recommend it"
    if losses == len(diffs):
        return f"the class-balanced rule wins in all {settings} settings: keep it, no fallback"
    return (
        f"mixed: the fallback rule wins in {wins}, loses in {losses} and ties in "
        f"{settings - wins - losses} of {settings} settings; no rule is recommended"
    )


def _accuracy_cell(value: dict[str, Any] | None) -> str:
    return mean_ci(value["mean"], value["ci95"], value["seeds"]) if value else "not run yet"


def _delta_cell(paired: dict[str, Any] | None) -> str:
    if not paired:
        return ""
    if paired["seeds"] == 1:  # the CI over its paired tasks, named as such
        return f"{paired['mean']:+.2f} (1 seed; ± {paired['task_ci95'][0]:.2f} over tasks)"
    return f"{mean_ci(paired['mean'], paired['ci95'], paired['seeds'], '+')} ({paired['seeds']})"


def _error_bar(paired: dict[str, Any]) -> float:
    """The CI over seeds; with one seed, the CI over its paired tasks."""
    return paired["ci95"] if paired["seeds"] > 1 else paired["task_ci95"][0]


def _plot(points: dict) -> Path | None:
    from matplotlib.figure import Figure

    if not points:
        return None
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for (ways, base, q), pts in sorted(points.items()):
        pts = sorted(pts, key=lambda p: p[0])
        ax.errorbar(
            [p[0] for p in pts],
            [p[1]["mean"] for p in pts],
            yerr=[_error_bar(p[1]) for p in pts],
            marker="o",
            capsize=3,
            label=f"{ways}-way GP-{base.upper()} − {base.upper()}, {q} test queries",
        )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks(list(BUDGETS), [str(b) for b in BUDGETS])
    ax.set_xlabel("meta-iterations")
    ax.set_ylabel("test accuracy gain (points)")
    ax.set_title("95 % CI over seeds (over paired tasks where one seed)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS / f"{STUDY}_gain.png"
    fig.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    raise SystemExit(study_main(STUDY, ROWS, report, description=__doc__))
