"""clkd.train end to end: Distiller, typed config and options, resume, torchrun DDP, console script."""

import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import timm
import torch

from clkd import CLKDLoss, DKDLoss
from clkd.train import KD_DEFAULTS, TrainConfig, main, make_loss, parse_config, train
from lab_common.checkpoint import load_checkpoint
from lab_common.cli import run_console
from lab_common.distill import DistillConfig, Distiller, KDLoss, TensorImageDataset
from lab_common.testing import run_torchrun

BASE = {
    "teacher": "cifar_resnet8",
    "student": "cifar_wrn_16_1",
    "batch_size": 16,
    "workers": 0,
    "progress": False,
    "device": "cpu",
    "lr": 0.05,
}
REAL = (
    "--dataset fashion-mnist --train-subset 48 --test-subset 16 --teacher cifar_resnet8 "
    "--student cifar_wrn_16_1 --batch-size 16 --workers 0 --no-progress --device cpu --lr 0.05"
).split()


def synthetic(n_train=48, n_test=16, size=12, classes=4):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = torch.randint(0, 256, (n_train + n_test, 1, size, size), generator=g, dtype=torch.uint8)
    x[:, :, : size // 2] = (y * 60).to(torch.uint8).view(-1, 1, 1, 1)  # a learnable cue
    train_ds = TensorImageDataset(x[:n_train], y[:n_train], (0.5,), (0.3,), augment=True, padding=2)
    test_ds = TensorImageDataset(x[n_train:], y[n_train:], (0.5,), (0.3,))
    return train_ds, test_ds, classes, 1


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_distiller_with_clkd_keeps_teacher_frozen_and_in_eval():
    torch.manual_seed(0)
    teacher = timm.create_model("cifar_resnet8", num_classes=10, in_chans=1)
    student = timm.create_model("cifar_wrn_16_1", num_classes=10, in_chans=1)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = Distiller(student, teacher, CLKDLoss()).train()
    opt = torch.optim.SGD(distiller.trainable_parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(3):
        logits, losses = distiller(x, y)
        assert set(losses) == {"loss_ce", "loss_ins", "loss_cla", "loss_cc"}
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert not distiller.teacher.training and distiller.student.training
    assert all(p.grad is None for p in teacher.parameters())
    _same(frozen, teacher.state_dict())  # weights and BN statistics untouched


def test_options_map_to_configs_and_method_defaults():
    cfg = parse_config(["--method", "dkd", "--dkd-beta", "2", "--temperature", "3"])
    assert isinstance(cfg, TrainConfig) and (cfg.method, cfg.dkd_beta) == ("dkd", 2)
    loss = make_loss(cfg, 10)
    assert isinstance(loss, DKDLoss) and loss.config.beta == 2 and loss.config.temperature == 3
    assert loss.config.alpha == 1.0 and loss.config.ce_weight == 1.0  # method defaults kept
    batch = make_loss(parse_config(["--clkd-correlation-axis", "batch"]), 10)
    assert batch.config.correlation_axis == "batch"
    clkd = make_loss(parse_config(["--clkd-variant", "softmax", "--class-weight", "2"]), 10)
    assert clkd.config.variant == "softmax" and clkd.config.class_weight == 2
    assert make_loss(parse_config(["--method", "ce"]), 10) is None
    # --method kd is the project's one KD baseline: CE 1, KD 1, T 4 (as trg-kd-train --method kd)
    kd = make_loss(TrainConfig(method="kd"), 10)
    assert isinstance(kd, KDLoss)
    assert (
        (kd.ce_weight, kd.kd_weight, kd.temperature)
        == (1.0, 1.0, 4.0)
        == tuple(KD_DEFAULTS.values())
    )
    kd = make_loss(TrainConfig(method="kd", ce_weight=0.1, kd_weight=2.0, temperature=3.0), 10)
    assert (kd.ce_weight, kd.kd_weight, kd.temperature) == (0.1, 2.0, 3.0)
    # CLKD: CE 1 and the batchmean reduction by default; the re-implementations' reading by options
    clkd = make_loss(TrainConfig(method="clkd"), 10)
    assert (clkd.config.ce_weight, clkd.config.reduction) == (1.0, "batchmean")
    old = ["--clkd-reduction", "mean", "--ce-weight", "0.1", "--logit-weight", "0.5"]
    clkd = make_loss(parse_config(old), 10)
    assert (clkd.config.ce_weight, clkd.config.reduction, clkd.config.logit_weight) == (
        0.1,
        "mean",
        0.5,
    )
    # DKD's β follows the teacher -> student pair unless given
    pair = {"teacher": "cifar_resnet56", "student": "cifar_resnet20"}
    assert make_loss(TrainConfig(method="dkd", **pair), 10).config.beta == 2.0
    assert make_loss(TrainConfig(method="dkd"), 10).config.beta == 8.0  # resnet32x4 -> 8x4
    assert make_loss(TrainConfig(method="dkd", dkd_beta=5.0, **pair), 10).config.beta == 5.0


def test_shared_option_names_and_errors(capsys):
    cfg = parse_config(["--out", "r", "--epochs", "3", "--no-progress", "--workers", "0"])
    assert (cfg.out, cfg.epochs, cfg.progress, cfg.workers) == ("r", 3, False, 0)
    for bad in (["--epochs", "0"], ["--epochs", "-1"], ["--method", "fitnet"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_config(bad)
        assert exit_info.value.code == 2
    assert "--epochs: expected a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown method 'fitnet'"):
        TrainConfig(method="fitnet")
    with pytest.raises(TypeError, match="TrainConfig"):
        train(DistillConfig())


def test_resume_continues_exactly_and_refuses_changed_settings(tmp_path):
    data = synthetic()
    a, b = tmp_path / "a", tmp_path / "b"
    full = train(TrainConfig(**BASE, epochs=2, teacher_epochs=1, out=a), datasets=data)
    assert full.metrics["completed"]
    common = {**BASE, "epochs": 2, "teacher_checkpoint": a / "teacher.pt", "out": b}
    part = train(TrainConfig(**common, stop_after=1), datasets=data)
    assert not part.metrics["completed"] and part.metrics["epoch"] == 1
    # the probe: --method kd --lr 0.5 --epochs 3 --resume after a clkd run
    changed = TrainConfig(**{**common, "lr": 0.5, "epochs": 3}, method="kd")
    with pytest.raises(
        ValueError,
        match=r"epochs: 2 -> 3; lr: 0.05 -> 0.5; method: 'clkd' -> 'kd'.*"
        r"--allow-changed epochs lr method",
    ):
        train(changed, resume=True, datasets=data)
    assert load_checkpoint(b / "student_last.pt")["epoch"] == 1  # nothing was trained
    with pytest.raises(FileExistsError, match="not empty"):
        train(TrainConfig(**common), datasets=data)
    train(TrainConfig(**common), resume=True, datasets=data)
    _same(load_checkpoint(a / "student.pt")["model"], load_checkpoint(b / "student.pt")["model"])
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert ra["loss_cc"] == rb["loss_cc"] and ra["val_top1"] == rb["val_top1"]
    saved = load_checkpoint(b / "student_last.pt")["config"]
    assert saved["method"] == "clkd" and "resume" not in saved and saved["out"] == str(b)
    assert load_checkpoint(b / "student_last.prev.pt")["epoch"] == 1  # the generation before


def test_main_passes_the_run_start_options_to_train(monkeypatch):
    calls = []
    result = SimpleNamespace(summary=lambda prog: f"{prog}: summary")
    monkeypatch.setattr("clkd.train.train", lambda c, **kw: calls.append((c, kw)) or result)
    main(["--out", "r", "--resume", "--allow-changed", "lr", "epochs"])
    main(["--out", "r", "--overwrite"])
    assert [kw for _, kw in calls] == [
        {"resume": True, "overwrite": False, "allow_changed": ["lr", "epochs"]},
        {"resume": False, "overwrite": True, "allow_changed": ()},
    ]
    assert calls[0][0] == TrainConfig(out="r")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lr", "-1"], "--lr: expected a number > 0, got -1"),
        (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["--epochs", "-1"], "--epochs: expected a positive integer, got -1"),
        (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
        (["--batch-size", "-4"], "--batch-size: expected a positive integer, got -4"),
        (["--ce-weight", "-1"], "--ce-weight: expected a number >= 0, got -1"),
        (["--class-weight", "-0.5"], "--class-weight: expected a number >= 0, got -0.5"),
        (["--kd-weight", "-2"], "--kd-weight: expected a number >= 0, got -2"),
        (["--dkd-beta", "-8"], "--dkd-beta: expected a number >= 0, got -8"),
        (["--temperature", "0"], "--temperature: expected a number > 0, got 0"),
        (["--temperature", "-4"], "--temperature: expected a number > 0, got -4"),
        (["--dkd-warmup", "-1"], "--dkd-warmup: expected an integer >= 0, got -1"),
    ],
)
def test_bad_numbers_are_one_line_errors_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"clkd-train: error: argument {message}"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("ce_weight", -1.0, r"ce_weight \(--ce-weight\) must be >= 0, got -1.0"),
        ("correlation_weight", -0.1, r"correlation_weight \(--correlation-weight\) must be >= 0"),
        ("dkd_warmup", -1, r"dkd_warmup \(--dkd-warmup\) must be >= 0"),
        ("temperature", 0.0, r"temperature \(--temperature\) must be > 0, got 0.0"),
        ("clkd_variant", "l1", "clkd_variant must be one of"),
        ("lr", -1.0, "lr must be > 0, got -1.0"),
        ("epochs", 0, "epochs must be >= 1, got 0"),
    ],
)
def test_config_rejects_bad_numbers_before_any_work(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_console_entry_reports_a_user_error_in_one_line(tmp_path, capsys):
    argv = ["--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "run"), "--device", "cpu"]
    assert run_console(main, argv) == 2  # what cli() returns as the process's exit status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: unknown dataset" in err
    assert run_console(main, [*argv, "--student", "resnet_9000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: unknown model 'resnet_9000' (--student)" in err
    assert "timm.list_models()" in err and "list_zoo_models()" in err


@pytest.mark.slow
def test_console_script_trains_on_real_data_and_exits_zero(tmp_path):
    argv = [
        *REAL,
        "--epochs",
        "1",
        "--teacher-epochs",
        "1",
        "--method",
        "kd",
        "--out",
        str(tmp_path),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "clkd.train", *argv], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "result.json").read_text())["completed"] is True
    help_text = subprocess.run(
        [sys.executable, "-m", "clkd.train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--clkd-variant" in help_text and "--out OUT" in help_text
    assert "--out-dir" not in help_text  # the deprecated alias is hidden


DDP_SCRIPT = """
import os, sys, torch
from clkd.train import main
result = main(sys.argv[1:])
torch.save(result.student.state_dict(), os.path.join({out!r}, f"rank{{os.environ['RANK']}}.pt"))
"""


@pytest.mark.slow
def test_torchrun_two_processes_gloo_ranks_identical(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=str(tmp_path))))
    # 48 images over 2 processes, --batch-size 16 per process: one step per epoch
    run_torchrun(
        [script, *REAL, "--epochs", "2", "--teacher-epochs", "1", "--out", tmp_path / "run"]
    )
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    _same(r0, r1)
    _same(load_checkpoint(tmp_path / "run/student.pt")["model"], r0)
    records = (tmp_path / "run/student_metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [1, 2]
    assert (tmp_path / "run/student_curves.png").is_file()


def test_long_tailed_training_set_reports_the_shot_splits(tmp_path):
    cfg = TrainConfig(
        **{**BASE, "epochs": 1, "teacher_epochs": 1},
        method="clkd",
        imbalance_ratio=4,
        lt_n_max=8,
        many_shot=6,
        few_shot=3,
        out=str(tmp_path),
    )
    result = train(cfg, datasets=synthetic())
    assert result.metrics["train_counts"] == [8, 5, 3, 2]  # 8 * 4^(-i/3)
    assert result.metrics["shot_splits"] == {"many": [0], "medium": [1, 2], "few": [3]}
    saved = json.loads((tmp_path / "result.json").read_text())
    assert {"val_top1_all", "val_top1_many", "val_top1_few"} <= set(saved)
