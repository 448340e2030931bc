"""clkd.train end to end on a Fashion-MNIST subset: Distiller, resume, torchrun DDP, CLI."""

import json
import subprocess
import sys
import textwrap

import pytest
import timm
import torch

import lab_common.zoo  # noqa: F401
from clkd import CLKDLoss, DKDLoss
from clkd.train import build_arg_parser, main, make_loss, run
from lab_common.checkpoint import load_checkpoint
from lab_common.distiller import Distiller
from lab_common.testing import run_torchrun

BASE = ["--dataset", "fashion-mnist", "--train-subset", "48", "--test-subset", "16",
        "--teacher", "cifar_resnet8", "--student", "cifar_wrn_16_1", "--batch-size", "16",
        "--workers", "0", "--no-progress", "--device", "cpu", "--lr", "0.05"]  # fmt: skip


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


def test_make_loss_maps_options_to_configs():
    args = build_arg_parser().parse_args(
        ["--method", "dkd", "--dkd-beta", "2", "--temperature", "3"]
    )
    loss = make_loss(args, 10)
    assert isinstance(loss, DKDLoss) and loss.config.beta == 2 and loss.config.temperature == 3
    assert loss.config.alpha == 1.0 and loss.config.ce_weight == 1.0  # method defaults kept
    args = build_arg_parser().parse_args(["--clkd-variant", "softmax", "--class-weight", "2"])
    clkd = make_loss(args, 10)
    assert clkd.config.variant == "softmax" and clkd.config.class_weight == 2
    assert make_loss(build_arg_parser().parse_args(["--method", "ce"]), 10) is None


def test_resume_continues_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    full = run([*BASE, "--epochs", "2", "--teacher-epochs", "1", "--out-dir", str(a)])
    assert full.metrics["completed"]
    teacher = ["--teacher-checkpoint", str(a / "teacher.pt")]
    common = [*BASE, "--epochs", "2", *teacher, "--out-dir", str(b)]
    part = run([*common, "--stop-after", "1"])
    assert not part.metrics["completed"] and part.metrics["epoch"] == 0
    run([*common, "--resume"])
    _same(load_checkpoint(a / "student.pt")["model"], load_checkpoint(b / "student.pt")["model"])
    ra, rb = (json.loads((d / "result.json").read_text()) for d in (a, b))
    assert ra["loss_cc"] == rb["loss_cc"] and ra["test_acc"] == rb["test_acc"]


DDP_SCRIPT = """
import os, sys, torch
from clkd.train import run
result = run(sys.argv[1:])
torch.save(result.student.state_dict(), os.path.join({out!r}, f"rank{{os.environ['RANK']}}.pt"))
"""


def test_torchrun_two_processes_gloo_ranks_identical(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(out=str(tmp_path))))
    run_torchrun([script, *BASE, "--epochs", "2", "--teacher-epochs", "1",
                  "--out-dir", tmp_path / "run"])  # fmt: skip
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    _same(r0, r1)
    _same(load_checkpoint(tmp_path / "run/student.pt")["model"], r0)
    records = (tmp_path / "run/student_metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in records] == [0, 1]
    assert (tmp_path / "run/student_curves.png").is_file()


def test_cli_help_and_bad_method():
    proc = subprocess.run(
        [sys.executable, "-m", "clkd.train", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0 and "--clkd-variant" in proc.stdout
    with pytest.raises(SystemExit):
        main(["--method", "fitnet"])
