import dataclasses
import json
import os
import re

import pytest
import torch
from torch import nn

from gp_maml.backbones import create_backbone
from gp_maml.datasets import SMALL2_NEW_ALPHABETS
from gp_maml.evaluate import evaluate
from gp_maml.evaluate import main as evaluate_main
from gp_maml.train import TrainConfig, load_run_split, train
from gp_maml.train import main as train_main
from lab_common import read_metrics
from lab_common.testing import run_torchrun


def _cfg(root, out, **kw):
    base = TrainConfig(
        method="maml",
        backbone="conv4-32",
        dataset="omniglot",
        data_root=str(root),
        out=str(out),
        ways=5,
        shots=1,
        queries=2,
        batch_size=2,
        iterations=4,
        first_order=True,
        val_every=2,
        val_tasks=4,
        ckpt_every=1,
        log_every=1,
        progress=False,
        threads=1,
    )
    return dataclasses.replace(base, **kw)


@pytest.mark.parametrize("method", ["maml", "gp-boil"])
def test_resume_continues_exactly(shared_omniglot, tmp_path, method):
    root = shared_omniglot / "images_background_small1.zip"
    train(_cfg(root, tmp_path / "straight", method=method, first_order=False))
    train(_cfg(root, tmp_path / "split", method=method, first_order=False, iterations=2))
    train(
        _cfg(root, tmp_path / "split", method=method, first_order=False),
        resume=True,
        allow_changed=("iterations",),
    )
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert a["iteration"] == b["iteration"] == 4
    for k, v in a["learner"].items():
        assert torch.equal(v, b["learner"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])
    assert (tmp_path / "split" / "curves.png").is_file()


@pytest.mark.slow
def test_torchrun_shares_out_the_meta_batch_for_the_same_update(shared_omniglot, tmp_path):
    """Two processes with two tasks each make the update of one process with all four."""
    root = shared_omniglot / "images_background_small1.zip"
    sizes = {"batch_size": 4, "iterations": 3, "val_every": 3, "val_tasks": 8}
    sizes |= {"device": "cpu"}  # gloo; two ranks on one GPU would be refused by NCCL
    train(_cfg(root, tmp_path / "one", method="gp-maml", first_order=False, **sizes))
    run_torchrun(
        ["-m", "gp_maml.train", "--method", "gp-maml", "--backbone", "conv4-32",
         "--data-root", root, "--out", tmp_path / "two", "--queries", "2", "--batch-size", "4",
         "--iterations", "3", "--val-every", "3", "--val-tasks", "8", "--ckpt-every", "1",
         "--log-every", "1", "--no-progress", "--threads", "1", "--device", "cpu"],
        timeout=300,
    )  # fmt: skip
    one, two = (torch.load(tmp_path / d / "last.pt", weights_only=False) for d in ("one", "two"))
    # the same update up to the order of the sums; a conv bias before batch norm has a true
    # meta-gradient of 0 (the norm removes a per-channel constant), and Adam turns the rounding
    # noise that stands in for it into steps of about lr, in either process
    modules = list(
        create_backbone("conv4-32", in_chans=1, num_classes=5, img_size=28).named_modules()
    )
    noise = {
        f"model.{name}.bias"
        for (name, module), (_, after) in zip(modules, modules[1:], strict=False)
        if isinstance(module, nn.Conv2d) and isinstance(after, nn.BatchNorm2d)
    }
    assert len(noise) == 4
    for k, v in one["learner"].items():
        if k not in noise:
            torch.testing.assert_close(two["learner"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    a, b = (read_metrics(tmp_path / d / "metrics.jsonl") for d in ("one", "two"))
    assert [r["iteration"] for r in a] == [r["iteration"] for r in b] == [1, 2, 3, 3]
    for x, y in zip(a[:3], b[:3], strict=True):  # loss, accuracy, picks: the ranks' means
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5)
        assert (y["train_acc"], y["picked"]) == pytest.approx((x["train_acc"], x["picked"]))
    # validation: the ranks evaluate alternate batches of the same 8 tasks
    assert b[3]["val_top1"] == pytest.approx(a[3]["val_top1"], abs=1.5)
    assert len(two["rng"]) == 2  # every rank's RNG states


@pytest.mark.slow
def test_short_meta_training_beats_chance_on_small2(shared_omniglot, tmp_path):
    cfg = _cfg(
        shared_omniglot / "images_background_small1.zip",
        tmp_path / "run",
        shots=5,
        iterations=50,
        batch_size=4,
        queries=5,
        lr=3e-3,
        val_every=25,
        val_tasks=20,
        first_order=False,
    )
    train(cfg)
    test_root = shared_omniglot / "images_background_small2.zip"
    common = dict(tasks=100, batch_size=20, min_tasks=100, show_progress=False, threads=1)
    common["alphabets"] = SMALL2_NEW_ALPHABETS  # disjoint: small2's alphabets small1 lacks
    trained = evaluate(tmp_path / "run" / "best.pt", test_root, **common)
    assert trained["accuracy"] > 50.0  # chance is 20% (5-way)
    # the meta-learned initialisation beats the untrained one adapted the same way
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    fresh = dataclasses.replace(
        TrainConfig.from_dict(state["config"]), iterations=1, out=str(tmp_path / "fresh"), lr=0.0
    )
    train(fresh)
    untrained = evaluate(tmp_path / "fresh" / "last.pt", test_root, **common)
    print(trained, untrained)
    assert trained["accuracy"] > untrained["accuracy"] + 5


def test_cli_and_errors(shared_omniglot, tmp_path, capsys):
    root = shared_omniglot / "images_background_small1.zip"
    out = tmp_path / "cli"
    argv = ["--method", "anil", "--backbone", "conv4-32", "--data-root", str(root)]
    argv += ["--out", str(out), "--iterations", "2", "--batch-size", "1", "--queries", "1"]
    train_main([*argv, "--val-every", "2", "--val-tasks", "2", "--no-progress", "--threads", "1"])
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"gp-maml-train: best val_top1 [\d.]+ \(iteration \d+\), last .*best\.pt", summary
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "train_acc"} <= set(records[0]) and "val_top1" in records[-1]
    with pytest.raises(ValueError, match=">= 600 .*lower --min-tasks"):
        evaluate_main(["--checkpoint", str(out / "best.pt"), "--data-root", "x", "--tasks", "10"])
    quick = evaluate_main(
        ["--checkpoint", str(out / "best.pt"), "--data-root", str(root), "--split", "val"]
        + ["--tasks", "4", "--min-tasks", "4", "--no-progress", "--threads", "1"]
    )
    assert quick["tasks"] == 4 and 0 <= quick["accuracy"] <= 100
    with pytest.raises(ValueError, match="unknown method"):
        TrainConfig(method="protonet")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="inner_lr"):
        TrainConfig(inner_lr=-5.0)
    with pytest.raises(ValueError, match="milestones"):
        TrainConfig(milestones=[10])
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainConfig().lr = 0.1
    with pytest.raises(FileNotFoundError):
        train(_cfg(tmp_path / "missing.zip", tmp_path / "x"))


def test_validation_can_be_disabled_and_a_too_small_split_is_named(omniglot_zip, tmp_path):
    # the tiny zip has 6 characters: every 10th is held out, so the validation split is empty
    small = dict(ways=2, queries=1, iterations=2, val_tasks=2, first_order=True)
    with pytest.raises(ValueError, match=r"validation split .* 0 classes.*--val-every 0"):
        train(_cfg(omniglot_zip, tmp_path / "val", val_every=1, **small))
    result = train(_cfg(omniglot_zip, tmp_path / "noval", val_every=0, **small))
    assert result["best_val_top1"] == -1.0
    assert (tmp_path / "noval" / "last.pt").is_file()
    assert not (tmp_path / "noval" / "best.pt").exists()
    with pytest.raises(ValueError, match="val_every"):
        TrainConfig(val_every=-1)


@pytest.mark.slow
def test_compiled_training_matches_eager(shared_omniglot, tmp_path):
    # --compile: compiled support/query gradients and Hessian-vector products, same training
    root = shared_omniglot / "images_background_small1.zip"
    states = []
    for compiled in (False, True):
        out = tmp_path / f"compiled_{compiled}"
        train(_cfg(root, out, first_order=False, iterations=3, val_every=0, compiled=compiled))
        states.append(torch.load(out / "last.pt", weights_only=False)["learner"])
    assert states[1].keys() == states[0].keys()
    # the conv biases feed a batch-norm: their gradient is zero up to float noise, which Adam
    # turns into +-lr steps of either sign: they may differ by 2 * lr per iteration
    conv_biases = {f"model.features.{i}.bias" for i in (0, 4, 8, 12)}
    for k, v in states[0].items():
        if k in conv_biases:
            torch.testing.assert_close(states[1][k], v, rtol=0, atol=3 * 2 * 1e-3)
        else:
            torch.testing.assert_close(states[1][k], v, rtol=1e-4, atol=1e-5)


def test_parser_builds_the_config_with_the_trainer_dialect():
    from gp_maml.train import _parser
    from lab_common.cli import config_from_args

    args = _parser().parse_args(["--data-root", "x.zip"])
    assert config_from_args(TrainConfig, args) == TrainConfig(data_root="x.zip")
    argv = ["--data-root", "x.zip", "--batch-size", "8", "--iterations", "3", "--out", "o"]
    argv += ["--seed", "2", "--device", "cpu", "--no-progress", "--milestones", "5", "6"]
    cfg = config_from_args(TrainConfig, _parser().parse_args(argv))
    assert (cfg.batch_size, cfg.iterations, cfg.out, cfg.seed) == (8, 3, "o", 2)
    assert (cfg.device, cfg.progress, cfg.milestones) == ("cpu", False, (5, 6))
    picked = _parser().parse_args(["--data-root", "x.zip", "--pick-threshold", "0.7"])
    assert config_from_args(TrainConfig, picked).pick_threshold == 0.7
    fallback = _parser().parse_args(["--data-root", "x.zip", "--fallback-threshold", "0.3"])
    assert config_from_args(TrainConfig, fallback).fallback_threshold == 0.3
    with pytest.raises(ValueError, match="use one of them, not both"):
        TrainConfig(data_root="x.zip", pick_threshold=0.5, fallback_threshold=0.3)
    rules = ["--no-self-loops", "--relation-net", "tpn", "--separate-lp-encoder"]
    cfg = config_from_args(TrainConfig, _parser().parse_args(["--data-root", "x.zip", *rules]))
    assert (cfg.self_loops, cfg.relation_net, cfg.separate_lp_encoder) == (False, "tpn", True)
    with pytest.raises(ValueError, match=r"pick_threshold must be in \(0, 1\]"):
        TrainConfig(data_root="x.zip", pick_threshold=1.5)
    # numbers are range-checked by the parser
    bad_numbers = (["--inner-lr", "-5"], ["--lr", "-1"], ["--batch-size", "0"], ["--gamma", "0"])
    for bad in (*bad_numbers, ["--val-every", "-1"], ["--iterations", "0"]):
        with pytest.raises(SystemExit) as err:
            _parser().parse_args(["--data-root", "x.zip", *bad])
        assert err.value.code == 2


def test_validation_rotations_fill_20_way_tasks(shared_omniglot, tmp_path):
    root = str(shared_omniglot / "images_background_small1.zip")
    plain = TrainConfig(data_root=root, ways=20, backbone="conv4-32")
    assert load_run_split(plain, "val").num_classes == 13  # every 10th of 136 characters
    rotated = dataclasses.replace(plain, val_rotations=True)
    assert load_run_split(rotated, "val").num_classes == 52  # their four rotations
    assert load_run_split(rotated, "test").num_classes == 136  # only train / val rotate
    with pytest.raises(ValueError, match="has 13 classes, fewer than ways=20.*--val-rotations"):
        train(dataclasses.replace(plain, out=str(tmp_path / "run")))
    with pytest.raises(ValueError, match="val_rotations applies to omniglot only"):
        TrainConfig(dataset="cifar-fs", val_rotations=True)
    from gp_maml.train import _parser
    from lab_common.cli import config_from_args

    args = _parser().parse_args(["--data-root", root, "--val-rotations"])
    assert config_from_args(TrainConfig, args).val_rotations


def test_config_from_a_0_1_checkpoint_dict():
    old = {**dataclasses.asdict(TrainConfig()), "milestones": [100, 200]}
    old["meta_batch"] = old.pop("batch_size") + 3
    del old["self_loops"]  # 0.1 had no such field: its graph's diagonal was zeroed
    cfg = TrainConfig.from_dict(old)
    assert cfg.batch_size == 7 and cfg.milestones == (100, 200)
    assert not cfg.self_loops and TrainConfig().self_loops


def _tiny(root, out, **kw):
    small = dict(ways=2, queries=1, batch_size=1, iterations=2, val_every=0, first_order=True)
    return _cfg(root, out, **{**small, **kw})


def test_a_run_killed_before_its_first_checkpoint_can_be_overwritten(omniglot_zip, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # all a run killed before iteration 1 leaves
    cfg = _tiny(omniglot_zip, out)
    with pytest.raises(FileExistsError, match="not empty"):
        train(cfg)
    train(cfg, overwrite=True)
    assert (out / "last.pt").is_file()


def test_run_folder_rules_and_checkpoint_fallback(omniglot_zip, tmp_path):
    out = tmp_path / "run"
    cfg = _tiny(omniglot_zip, out)
    train(cfg)
    assert torch.load(out / "last.prev.pt", weights_only=False)["iteration"] == 1
    with pytest.raises(FileExistsError, match="not empty; pass --resume"):
        train(cfg)  # a fresh run never overwrites a previous one silently
    # a resume with changed settings is refused, naming both values, unless allowed
    with pytest.raises(
        ValueError, match=r"iterations: 2 -> 3; lr: 0.001 -> 0.5.*--allow-changed iterations lr"
    ):
        train(dataclasses.replace(cfg, lr=0.5, iterations=3), resume=True)
    longer = dataclasses.replace(cfg, iterations=3, device="cpu", progress=True, threads=1)
    with pytest.raises(ValueError, match="iterations: 2 -> 3"):
        train(longer, resume=True)  # device/progress/threads are run-only: not named
    # the newest checkpoint corrupted at rest, and a record written after it by a killed run
    os.truncate(out / "last.pt", 20000)
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"iteration": 3, "loss": 9.9}) + "\n")
    with pytest.warns(UserWarning, match="previous generation"):
        train(longer, resume=True, allow_changed=["iterations"])
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2, 3] and log[-1]["loss"] != 9.9
    # resumed from iteration 1 of last.prev.pt, exactly: same weights as an uninterrupted run
    train(dataclasses.replace(cfg, iterations=3, out=str(tmp_path / "straight")))
    a = torch.load(out / "last.pt", weights_only=False)["learner"]
    b = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["learner"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    train(cfg, overwrite=True)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]


def test_evaluation_refuses_the_training_classes(omniglot_zip, tmp_path):
    train(_tiny(omniglot_zip, tmp_path / "run", alphabets=("alpha0",), iterations=1))
    ckpt = tmp_path / "run" / "last.pt"
    names = [f"alpha0/character0{i}" for i in (1, 2, 3)]
    assert torch.load(ckpt, weights_only=False)["train_classes"] == names
    few = dict(tasks=4, min_tasks=1, batch_size=2, show_progress=False)
    with pytest.raises(ValueError, match=r"3 of the 6 test classes .* trained on.*--allow-train"):
        evaluate(ckpt, omniglot_zip, **few)
    held_out = evaluate(ckpt, omniglot_zip, alphabets=("alpha1",), **few)
    assert held_out["tasks"] == 4 and held_out["alphabets"] == ["alpha1"]
    assert held_out["queries"] == 1  # the training queries by default
    assert evaluate(ckpt, omniglot_zip, alphabets=("alpha1",), queries=3, **few)["queries"] == 3
    assert evaluate(ckpt, omniglot_zip, allow_train_classes=True, **few)["tasks"] == 4
    with pytest.raises(SystemExit):  # no fallback to the training root
        evaluate_main(["--checkpoint", str(ckpt)])
    # evaluate reads a truncated last.pt from its previous generation, with a warning
    train(_tiny(omniglot_zip, tmp_path / "run", alphabets=("alpha0",)), overwrite=True)
    os.truncate(ckpt, 20000)
    with pytest.warns(UserWarning, match="previous generation"):
        assert evaluate(ckpt, omniglot_zip, alphabets=("alpha1",), **few)["iteration"] == 1


def test_evaluation_reports_gp_picks_at_one_query_per_class(omniglot_zip, tmp_path):
    cfg = _tiny(omniglot_zip, tmp_path / "gp", method="gp-maml", alphabets=("alpha0",))
    train(cfg)
    few = dict(tasks=6, min_tasks=1, batch_size=3, show_progress=False, alphabets=("alpha1",))
    res = evaluate(tmp_path / "gp" / "last.pt", omniglot_zip, queries=1, **few)
    assert res["queries"] == 1 and 0.0 <= res["picked_mean"] <= 2  # 2 ways x 1 query
    # class-balanced picking picks k per class: 0 or 2 of the 2 queries, never 1
    assert res["fallback_rate"] == pytest.approx(1 - res["picked_mean"] / 2)
    # per-task accuracies of the same seeded episodes: paired comparisons across rules
    assert len(res["per_task_accuracy"]) == 6
    assert sum(res["per_task_accuracy"]) / 6 == pytest.approx(res["accuracy"], abs=1e-3)
    # a threshold of 1/C at test time picks every query of every task
    low = evaluate(tmp_path / "gp" / "last.pt", omniglot_zip, queries=1, pick_threshold=0.5, **few)
    assert low["pick_threshold"] == 0.5 and low["picked_mean"] == 2 and low["fallback_rate"] == 0
    assert res["pick_threshold"] is None  # the checkpoint's (class-balanced) rule
    # the fallback keeps the balanced pick where it picks and picks every query elsewhere
    both = evaluate(
        tmp_path / "gp" / "last.pt", omniglot_zip, queries=1, fallback_threshold=0.5, **few
    )
    assert both["fallback_threshold"] == 0.5 and both["pick_threshold"] is None
    assert both["picked_mean"] == 2 and both["fallback_rate"] == 0
    assert res["fallback_threshold"] is None


def test_evaluate_checks_out_before_evaluating(tmp_path):
    # the checkpoint does not even exist: --out is refused first, in a second
    argv = ["--checkpoint", str(tmp_path / "none.pt"), "--data-root", str(tmp_path)]
    with pytest.raises(FileNotFoundError, match="--out .*no_such_dir.* does not exist"):
        evaluate_main([*argv, "--out", str(tmp_path / "no_such_dir" / "r.json")])
    with pytest.raises(ValueError, match="is a folder"):
        evaluate_main([*argv, "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="none.pt"):  # a writable --out: the checkpoint's turn
        evaluate_main([*argv, "--out", str(tmp_path / "r.json")])
    assert not list(tmp_path.iterdir())  # the probe file is gone


def test_alphabets_option_reaches_the_loader(omniglot_zip, tmp_path):
    from gp_maml.train import _parser
    from lab_common.cli import config_from_args

    args = _parser().parse_args(["--data-root", "x", "--alphabets", "alpha1", "alpha0"])
    assert config_from_args(TrainConfig, args).alphabets == ("alpha1", "alpha0")
    with pytest.raises(ValueError, match="omniglot only"):
        TrainConfig(dataset="cifar-fs", alphabets=("Greek",))
    with pytest.raises(ValueError, match=r"\['Greek'\] are not in .*alpha0, alpha1"):
        train(_tiny(omniglot_zip, tmp_path / "r", alphabets=("Greek",)))


def _finite(path) -> bool:
    state = torch.load(path, weights_only=False)["learner"]
    return all(v.isfinite().all() for v in state.values())


def test_a_non_finite_loss_stops_the_run_and_keeps_both_finite_generations(omniglot_zip, tmp_path):
    out = tmp_path / "run"
    cfg = _tiny(omniglot_zip, out)
    train(cfg)
    blown = dataclasses.replace(cfg, lr=1e30, iterations=12)
    with pytest.raises(FloatingPointError, match=r"iteration \d+: non-finite .*lower --lr"):
        train(blown, resume=True, allow_changed=["lr", "iterations"])
    assert _finite(out / "last.pt") and _finite(out / "last.prev.pt")
    assert torch.load(out / "last.pt", weights_only=False)["iteration"] >= 2
    with pytest.raises(FloatingPointError, match="iteration 1: .*before its first checkpoint"):
        train(dataclasses.replace(blown, inner_lr=1e30, out=str(tmp_path / "fresh")))
    # a checkpoint with non-finite weights (written by an older version) is refused
    state = torch.load(out / "last.pt", weights_only=False)
    next(iter(state["learner"].values())).fill_(float("nan"))
    torch.save(state, tmp_path / "diverged.pt")
    few = dict(tasks=2, min_tasks=1, batch_size=1, show_progress=False)
    with pytest.raises(ValueError, match=r"diverged.pt holds non-finite weights"):
        evaluate(tmp_path / "diverged.pt", omniglot_zip, allow_train_classes=True, **few)


def test_a_setting_changed_on_resume_applies_from_the_resume_on(omniglot_zip, tmp_path):
    out = tmp_path / "run"
    cfg = _tiny(omniglot_zip, out, milestones=(3,), log_every=1)
    train(cfg)
    faster = dataclasses.replace(cfg, lr=1e-2, iterations=4)
    train(faster, resume=True, allow_changed=["lr", "iterations"])
    train(dataclasses.replace(faster, out=str(tmp_path / "straight")))

    def lrs(folder):
        log = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [r["lr"] for r in log]

    assert lrs(out)[:2] == [1e-3, 1e-3]
    assert lrs(out)[2:] == lrs(tmp_path / "straight")[2:] == [pytest.approx(1e-3)] * 2
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["config"]["lr"] == json.loads((out / "config.json").read_text())["lr"] == 1e-2
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == 1e-2
    # nothing left to train: the record stays the checkpoint's
    train(dataclasses.replace(faster, lr=0.5), resume=True, allow_changed=["lr"])
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-2
    with pytest.raises(ValueError, match=r"at iteration 4, past --iterations 3"):
        train(dataclasses.replace(faster, iterations=3), resume=True, allow_changed=["iterations"])
    with pytest.raises(ValueError, match=r"--allow-changed seed: .*cannot change on resume"):
        train(dataclasses.replace(faster, seed=1), resume=True, allow_changed=["seed"])


def test_overwrite_deletes_the_runs_files_only(omniglot_zip, tmp_path):
    out = tmp_path / "proj"
    train(_tiny(omniglot_zip, out))
    (out / "best.pt").write_bytes(b"a stale generation of an earlier run")
    (out / "notes.txt").write_text("mine")
    (out / "other_run").mkdir()
    (out / "other_run" / "config.json").write_text("{}")
    train(_tiny(omniglot_zip, out, iterations=1), overwrite=True)
    written = {"config.json", "curves.png", "last.pt", "metrics.jsonl"}  # no best.pt, .prev
    assert {p.name for p in out.iterdir()} == written | {"notes.txt", "other_run"}
    assert (out / "other_run" / "config.json").is_file()


def test_picking_thresholds_are_refused_for_base_learners(omniglot_zip, tmp_path):
    for name in ("pick_threshold", "fallback_threshold"):
        with pytest.raises(ValueError, match=f"{name} applies to GP methods only, not 'anil'"):
            TrainConfig(method="anil", **{name: 0.5})
    stored = {**dataclasses.asdict(TrainConfig(method="boil")), "pick_threshold": 0.5}
    assert TrainConfig.from_dict(stored).pick_threshold is None  # inert for a base learner: dropped
    train(_tiny(omniglot_zip, tmp_path / "run", alphabets=("alpha0",), iterations=1))
    few = dict(tasks=2, min_tasks=1, batch_size=1, show_progress=False, alphabets=("alpha1",))
    with pytest.raises(ValueError, match=r"--fallback-threshold applies to GP learners only"):
        evaluate(tmp_path / "run" / "last.pt", omniglot_zip, fallback_threshold=0.5, **few)


def test_moment_restart_clears_adam_every_n_iterations(shared_omniglot, tmp_path):
    root = shared_omniglot / "images_background_small1.zip"
    train(_cfg(root, tmp_path / "r", iterations=3, moment_restart=3, val_every=0))
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=False)
    assert state["optimizer"]["state"] == {}  # restarted after iteration 3, as a new Adam
    train(_cfg(root, tmp_path / "k", iterations=3, val_every=0))
    kept = torch.load(tmp_path / "k" / "last.pt", weights_only=False)["optimizer"]["state"]
    assert kept and all(s["step"].item() == 3 for s in kept.values())
    with pytest.raises(ValueError, match="moment_restart must be >= 0"):
        TrainConfig(moment_restart=-1)
