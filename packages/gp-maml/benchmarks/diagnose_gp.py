"""What a GP learner's pseudo-labels do at test time, for a few learner settings.

Meta-trains each ``--variants`` entry on Omniglot small1 (rotation-augmented) with
``bench_omniglot.meta_train``, then on small2 test tasks reports, per task and averaged:

* ``theta' %``: query accuracy after the support step only (what the base learner predicts);
* ``GP %``: query accuracy of the learner (re-trained on the picks, or theta' without picks);
* ``LP raw %`` / ``LP CMN %``: accuracy of ``argmax F`` and of its class-mass-normalised form;
* ``picked/task`` and ``pick acc %``: pseudo-labelled queries and how many are right.

A variant is ``method[:lp=<weight>][:raw]`` (``raw``: pick from the raw scores), e.g.

    python packages/gp-maml/benchmarks/diagnose_gp.py --setting 20w1s \\
        --variants gp-maml:lp=1:raw gp-maml:lp=1 gp-maml:lp=0.1 gp-maml gp-maml:lp=0
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_omniglot import SETTINGS, evaluation_sampler, meta_train
from bench_omniglot import parse_args as bench_args
from torch.func import functional_call

from gp_maml import EpisodeSampler, class_mass_normalize, pick_pseudo_labels
from gp_maml.datasets import load_omniglot
from lab_common import shared_datasets_root, write_benchmark


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"gp-boil:lp=0.1:raw"`` -> ``("gp-boil", {"lp_loss_weight": 0.1, ...})``."""
    method, *opts = spec.split(":")
    kwargs: dict = {}
    for opt in opts:
        if opt == "raw":
            kwargs["class_mass_norm"] = False
        elif opt.startswith("lp="):
            kwargs["lp_loss_weight"] = float(opt[3:])
        else:
            raise ValueError(f"unknown option {opt!r} in variant {spec!r} (use lp=<w> or raw)")
    return method, kwargs


@torch.no_grad()
def _lp_scores(learner, params, xs, ys, xq, ways):
    z = learner.embed(params, torch.cat([xs, xq]), mode="autograd")
    f = learner.propagate(z, ys, learner.relation_net(z), ways)
    return f[len(ys) :]


def diagnose(learner, sampler: EpisodeSampler, tasks: int, ways: int) -> dict[str, float]:
    """Averages of the quantities in the module docstring over ``tasks`` test episodes."""
    learner.eval()
    params = dict(learner.model.named_parameters())
    rel = dict(learner.relation_net.named_parameters())
    sums = dict.fromkeys(("theta", "gp", "lp_raw", "lp_cmn", "picked", "right"), 0.0)
    for _ in range(tasks):
        ep = sampler.sample_batch(1)
        xs, ys, xq, yq = ep.xs[0], ep.ys[0], ep.xq[0], ep.yq[0]
        adapted = learner.adapt(params, xs, ys, mode="autograd")
        with torch.no_grad():
            theta_logits = functional_call(learner.model, adapted, (xq,))
            sums["theta"] += (theta_logits.argmax(-1) == yq).float().mean()
            _, logits, _ = learner.task_loss(params, rel, xs, ys, xq, yq, ways, mode="autograd")
        sums["gp"] += (logits.argmax(-1) == yq).float().mean()
        scores = _lp_scores(learner, adapted, xs, ys, xq, ways)
        normed = class_mass_normalize(scores)
        sums["lp_raw"] += (scores.argmax(-1) == yq).float().mean()
        sums["lp_cmn"] += (normed.argmax(-1) == yq).float().mean()
        mask, labels = pick_pseudo_labels(normed if learner.class_mass_norm else scores, ways)
        sums["picked"] += mask.sum()
        sums["right"] += (mask * (labels == yq)).sum()
    n = float(tasks)
    return {
        "theta' %": round(100 * float(sums["theta"]) / n, 2),
        "GP %": round(100 * float(sums["gp"]) / n, 2),
        "LP raw %": round(100 * float(sums["lp_raw"]) / n, 2),
        "LP CMN %": round(100 * float(sums["lp_cmn"]) / n, 2),
        "picked/task": round(float(sums["picked"]) / n, 2),
        "pick acc %": round(100 * float(sums["right"]) / max(float(sums["picked"]), 1.0), 2),
    }


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", default="5w1s", choices=list(SETTINGS))
    p.add_argument("--variants", nargs="+", default=["gp-maml:lp=1:raw", "gp-maml"])
    p.add_argument("--iterations", type=int, default=None, help="default: as bench_omniglot")
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--meta-batch", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default=None, help="results file name")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    ways, shots = SETTINGS[a.setting]
    train_args = bench_args(
        [
            "--seed",
            str(a.seed),
            "--lr",
            str(a.lr),
            "--meta-batch",
            str(a.meta_batch),
            "--train-queries",
            str(a.queries),
            "--test-queries",
            str(a.queries),
        ]
    )
    if a.iterations:
        train_args.iterations[list(SETTINGS).index(a.setting)] = a.iterations
    iterations = train_args.iterations[list(SETTINGS).index(a.setting)]
    root = shared_datasets_root() / "omniglot"
    train_data = load_omniglot(root / "images_background_small1.zip").with_rotations()
    test_data = load_omniglot(root / "images_background_small2.zip")
    rows = []
    for spec in a.variants:
        method, kwargs = parse_variant(spec)
        if not method.startswith("gp-"):
            raise ValueError(f"{spec!r}: diagnose a GP method (gp-maml, gp-anil, gp-boil)")
        t0 = time.time()
        variant_args = argparse.Namespace(**{**vars(train_args), **kwargs})
        learner = meta_train(method, train_data, ways, shots, variant_args, log=lambda _: None)
        test = evaluation_sampler(test_data, ways, shots, variant_args)
        row = {"setting": a.setting, "variant": spec, "iterations": iterations}
        row.update(diagnose(learner, test, a.tasks, ways))
        row["s"] = round(time.time() - t0)
        rows.append(row)
        print(row, flush=True)
    title = f"GP diagnosis ({a.setting}, {a.tasks} test tasks, {a.queries} queries)"
    md = write_benchmark(rows, a.out, a.name or f"diagnose_{a.setting}", title=title)
    print(md)
    return md


if __name__ == "__main__":
    main()
