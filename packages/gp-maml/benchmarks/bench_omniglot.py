"""Accuracy of the six learners on real data: Omniglot small1 -> small2's new alphabets.

Meta-train on ``images_background_small1`` (rotation-augmented classes), meta-test on the three
alphabets of ``images_background_small2`` that small1 lacks (``SMALL2_NEW_ALPHABETS``:
Japanese_(katakana), Sanskrit, Tagalog; 106 characters): a disjoint protocol. (The two subsets
share Greek and Latin, 50 byte-identical characters, so "all of small2" would test partly on
trained characters.) The same test episodes serve every learner (so GP - base differences are
paired), for 5-way 1-shot, 20-way 1-shot and 5-way 5-shot. Results are written after every
(setting, learner) to ``results/omniglot.{md,json}``.

The default budget is tiny (a few hundred meta-iterations on 2 shared CPU cores); ``--full``
runs the paper's protocol instead (Conv-4-64, 15 queries, meta-batch 4, 30k iterations, lr
1e-3 -> 1e-4 -> 1e-5, 10,000 test tasks; needs a GPU): on Omniglot the standard split of
Vinyals et al. (``load_omniglot_vinyals``: 1,200 / 423 characters x 4 rotations from
``images_background`` and ``images_evaluation``, folders or zips in ``--data-root``), or on
miniImageNet or CIFAR-FS. ``--preset paper`` uses the paper's code's rules.

    nice -n 10 python packages/gp-maml/benchmarks/bench_omniglot.py --progress-log bench.log
    python packages/gp-maml/benchmarks/bench_omniglot.py --full --data-root /data/omniglot
    python packages/gp-maml/benchmarks/bench_omniglot.py --full --dataset miniimagenet \\
        --data-root /data/miniimagenet
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gp_maml import EpisodeSampler, MetaLearner, create_backbone, create_learner
from gp_maml.datasets import (
    SMALL2_NEW_ALPHABETS,
    load_omniglot,
    load_omniglot_vinyals,
    load_split,
)
from gp_maml.train import TrainConfig
from lab_common import (
    mean_confidence_interval,
    seed_everything,
    shared_datasets_root,
    write_benchmark,
)

PAIRS = (("maml", "gp-maml"), ("anil", "gp-anil"), ("boil", "gp-boil"))
SETTINGS = {"5w1s": (5, 1), "20w1s": (20, 1), "5w5s": (5, 5)}
_OFFICIAL = ("images_background", "images_evaluation")


def meta_train(method, train_data, ways, shots, a, log) -> MetaLearner:
    """``method`` meta-trained on ``train_data`` with the settings of ``a`` (see ``parse_args``)."""
    seed_everything(a.seed)
    chans, size = train_data.images.shape[1], train_data.images.shape[2]
    model = create_backbone(a.backbone, in_chans=chans, num_classes=ways, img_size=size)
    rules = (
        {}
        if a.preset == "paper"
        else {"lp_loss_weight": a.lp_loss_weight, "class_mass_norm": a.class_mass_norm}
    )
    learner = create_learner(
        method,
        model,
        preset=a.preset,
        **rules,
        inner_lr=a.inner_lr,
        first_order=a.first_order,
        compiled=a.compiled,
    )
    opt = torch.optim.Adam(learner.parameters(), lr=a.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, a.milestones, 0.1)
    sampler = EpisodeSampler(train_data, ways, shots, a.train_queries, seed=a.seed)
    iters = a.iterations[list(SETTINGS).index(f"{ways}w{shots}s")]
    t0 = time.time()
    for it in range(iters):
        ep = sampler.sample_batch(a.meta_batch)
        opt.zero_grad(set_to_none=True)
        if a.compiled:  # compiled meta-gradients (base learners), task by task
            out = learner.forward_backward(ep.xs, ep.ys, ep.xq, ep.yq)
        else:
            out = learner(ep.xs, ep.ys, ep.xq, ep.yq)
            out.loss.backward()
        opt.step()
        sched.step()
        if (it + 1) % 25 == 0:
            log(
                f"  {method} it {it + 1}/{iters} loss {out.loss.item():.3f} "
                f"acc {out.accuracy.item():.1f} picked {out.picked.mean().item():.1f} "
                f"({time.time() - t0:.0f}s)"
            )
    return learner


def evaluation_sampler(test_data, ways, shots, a) -> EpisodeSampler:
    """The benchmark's test episodes (the same for every learner)."""
    return EpisodeSampler(test_data, ways, shots, a.test_queries, seed=a.seed + 12345)


def run_one(method, train_data, test_data, ways, shots, a, log) -> torch.Tensor:
    """Meta-train ``method`` and return per-task test accuracies (percent), shape ``(tasks,)``."""
    t0 = time.time()
    learner = meta_train(method, train_data, ways, shots, a, log)
    iters = a.iterations[list(SETTINGS).index(f"{ways}w{shots}s")]
    learner.eval()
    test = evaluation_sampler(test_data, ways, shots, a)
    accs = []
    for _ in range(0, a.test_tasks, a.eval_batch):
        ep = test.sample_batch(a.eval_batch)
        with torch.no_grad():
            out = learner(ep.xs, ep.ys, ep.xq, ep.yq)
        accs.append((out.logits.argmax(-1) == ep.yq).float().mean(1) * 100)
    log(f"  {method} trained {iters} it + tested in {time.time() - t0:.0f}s")
    return torch.cat(accs)[: a.test_tasks]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's settings (``--full``: the paper's protocol)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="the paper's protocol (GPU, hours)")
    p.add_argument(
        "--dataset", default="omniglot", choices=["omniglot", "miniimagenet", "cifar-fs"]
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="Omniglot: folder with the small subsets (default: the shared datasets), with "
        "--full the one with images_background and images_evaluation; other datasets: root",
    )
    p.add_argument("--preset", default="default", choices=["default", "paper"])
    p.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--methods", nargs="*", default=[m for pair in PAIRS for m in pair])
    p.add_argument("--backbone", default="conv4-32")
    p.add_argument(
        "--iterations",
        type=int,
        nargs=3,
        default=[100, 60, 60],
        help="meta-iterations for 5w1s, 20w1s, 5w5s",
    )
    p.add_argument("--meta-batch", type=int, default=2)
    p.add_argument("--train-queries", type=int, default=5)
    p.add_argument("--test-queries", type=int, default=5)
    p.add_argument("--test-tasks", type=int, default=1000)
    p.add_argument("--eval-batch", type=int, default=25)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--milestones", type=int, nargs="*", default=[10000, 20000])
    p.add_argument("--inner-lr", type=float, default=0.5)
    p.add_argument("--first-order", action="store_true")
    p.add_argument(
        "--compile",
        dest="compiled",
        action="store_true",
        help="MetaLearner(compiled=True): compiled meta-gradients",
    )
    p.add_argument("--lp-loss-weight", type=float, default=TrainConfig.lp_loss_weight)
    p.add_argument("--no-class-mass-norm", dest="class_mass_norm", action="store_false")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress-log", default=None)
    p.add_argument("--name", default=None, help="results file name (default: the dataset)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args(argv)
    if a.full:
        a.backbone, a.meta_batch, a.train_queries, a.test_queries = "conv4-64", 4, 15, 15
        a.iterations, a.lr, a.test_tasks, a.eval_batch = [30000] * 3, 1e-3, 10000, 20
        if a.dataset != "omniglot":
            a.settings = ["5w1s", "5w5s"]
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    log_file = open(a.progress_log, "a") if a.progress_log else None  # noqa: SIM115

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        if log_file:
            log_file.write(line + "\n")
            log_file.flush()

    if a.dataset == "omniglot" and a.full:
        if not a.data_root:
            raise ValueError("--full on Omniglot needs --data-root with the full release")
        root = Path(a.data_root)
        pick = {n: root / n if (root / n).exists() else root / f"{n}.zip" for n in _OFFICIAL}
        train_data, test_data = load_omniglot_vinyals(*pick.values())
    elif a.dataset == "omniglot":
        root = Path(a.data_root) if a.data_root else shared_datasets_root() / "omniglot"
        train_data = load_omniglot(root / "images_background_small1.zip").with_rotations()
        test_data = load_omniglot(
            root / "images_background_small2.zip", alphabets=SMALL2_NEW_ALPHABETS
        )
    else:
        if not a.data_root:
            raise ValueError(f"--dataset {a.dataset} needs --data-root")
        train_data = load_split(a.dataset, a.data_root, "train")
        test_data = load_split(a.dataset, a.data_root, "test")
    rows, per_task = [], {}
    for setting in a.settings:
        ways, shots = SETTINGS[setting]
        for method in a.methods:
            log(f"{setting} {method}")
            accs = run_one(method, train_data, test_data, ways, shots, a, log)
            per_task[(setting, method)] = accs
            mean, ci = mean_confidence_interval(accs)
            row = {
                "setting": setting,
                "learner": method,
                "accuracy %": round(mean, 2),
                "95% CI": round(ci, 2),
                "tasks": len(accs),
            }
            base = method.removeprefix("gp-")
            if method.startswith("gp-") and (setting, base) in per_task:
                d_mean, d_ci = mean_confidence_interval(accs - per_task[(setting, base)])
                row["GP - base (paired)"] = f"{d_mean:+.2f} ± {d_ci:.2f}"
            rows.append(row)
            log(f"  -> {row}")
            config = {k: v for k, v in vars(a).items() if k not in ("progress_log", "out")}
            write_benchmark(
                rows, a.out, a.name or a.dataset, title=f"Few-shot accuracy ({json.dumps(config)})"
            )


if __name__ == "__main__":
    main()
