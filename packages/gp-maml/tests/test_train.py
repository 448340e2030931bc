import dataclasses
import json

import pytest
import torch

from gp_maml.evaluate import evaluate
from gp_maml.evaluate import main as evaluate_main
from gp_maml.train import TrainConfig, train
from gp_maml.train import main as train_main


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
    train(_cfg(root, tmp_path / "split", method=method, first_order=False), resume=True)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert a["iteration"] == b["iteration"] == 4
    for k, v in a["learner"].items():
        assert torch.equal(v, b["learner"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg"], b["optimizer"]["state"][k]["exp_avg"])
    assert (tmp_path / "split" / "curves.png").is_file()


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
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["best_val"] >= 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "train_acc"} <= set(records[0]) and "val_acc" in records[-1]
    with pytest.raises(ValueError, match=">= 600"):
        evaluate_main(["--checkpoint", str(out / "best.pt"), "--tasks", "10"])
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
    assert result["best_val"] == -1.0
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
    # the 0.1 name of --batch-size still works, with a FutureWarning
    with pytest.warns(FutureWarning, match="--meta-batch.*--batch-size"):
        old = _parser().parse_args(["--data-root", "x.zip", "--meta-batch", "8"])
    assert config_from_args(TrainConfig, old).batch_size == 8
    # numbers are range-checked by the parser
    for bad in (["--inner-lr", "-5"], ["--batch-size", "0"], ["--val-every", "-1"]):
        with pytest.raises(SystemExit) as err:
            _parser().parse_args(["--data-root", "x.zip", *bad])
        assert err.value.code == 2


def test_config_from_a_0_1_checkpoint_dict():
    old = {**dataclasses.asdict(TrainConfig()), "milestones": [100, 200]}
    old["meta_batch"] = old.pop("batch_size") + 3
    cfg = TrainConfig.from_dict(old)
    assert cfg.batch_size == 7 and cfg.milestones == (100, 200)
