"""The shared distillation engine: exact resume, CE-only path, DDP ranks identical, errors."""

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from lab_common import seed_everything
from lab_common.checkpoint import load_checkpoint
from lab_common.distill import DistillConfig, TensorImageDataset, run_distillation
from lab_common.testing import run_torchrun


class KD(nn.Module):
    def forward(self, s, t, target):
        kd = F.kl_div(F.log_softmax(s / 4, -1), F.softmax(t / 4, -1), reduction="batchmean")
        return {"loss_ce": 0.1 * F.cross_entropy(s, target), "loss_kd": 16 * kd}


def kd_factory(num_classes):
    return KD()


def ce_only(num_classes):
    return None


def synthetic(n_train=32, n_test=16, size=12, classes=4):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = torch.randint(0, 256, (n_train + n_test, 1, size, size), generator=g, dtype=torch.uint8)
    x[:, :, : size // 2] = (y * 60).to(torch.uint8).view(-1, 1, 1, 1)  # a learnable cue
    mean, std = (0.5,), (0.3,)
    train = TensorImageDataset(x[:n_train], y[:n_train], mean, std, augment=True, padding=2)
    test = TensorImageDataset(x[n_train:], y[n_train:], mean, std)
    return train, test, classes, 1


def config(out, **overrides) -> DistillConfig:
    base = {
        "teacher": "cifar_resnet8",
        "student": "cifar_wrn_16_1",
        "epochs": 3,
        "teacher_epochs": 2,
        "batch_size": 16,
        "workers": 0,
        "progress": False,
        "device": "cpu",
        "lr": 0.05,
        "out": out,
    }
    return DistillConfig(**{**base, **overrides})


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_interrupted_runs_resume_exactly(tmp_path):
    data = synthetic()
    full = run_distillation(config(tmp_path / "a"), kd_factory, datasets=data)
    assert full.metrics["completed"] and full.metrics["epoch"] == 2
    # Interrupt inside teacher training, then inside student training (1 epoch per call).
    part = run_distillation(config(tmp_path / "b", stop_after=1), kd_factory, datasets=data)
    assert part.student is None and not part.metrics["completed"]
    part = run_distillation(
        config(tmp_path / "b", stop_after=1, resume=True), kd_factory, datasets=data
    )
    assert not part.metrics["completed"] and part.metrics["epoch"] == 0
    part = run_distillation(config(tmp_path / "b", resume=True), kd_factory, datasets=data)
    assert part.metrics["completed"]
    _assert_same(_weights(tmp_path / "a/teacher.pt"), _weights(tmp_path / "b/teacher.pt"))
    _assert_same(_weights(tmp_path / "a/student.pt"), _weights(tmp_path / "b/student.pt"))
    lines = [
        [json.loads(r) for r in (tmp_path / d / "student_metrics.jsonl").read_text().splitlines()]
        for d in "ab"
    ]
    assert [r["epoch"] for r in lines[1]] == [0, 1, 2]
    for ra, rb in zip(*lines, strict=True):
        assert ra["loss_kd"] == rb["loss_kd"] and ra["test_acc"] == rb["test_acc"]
    assert (tmp_path / "b/student_curves.png").stat().st_size > 0
    # the teacher really was frozen during distillation and is the cached one
    _assert_same(full.teacher.state_dict(), _weights(tmp_path / "a/teacher.pt"))
    # every checkpoint records the run's settings
    saved = load_checkpoint(tmp_path / "a/student_last.pt")["config"]
    assert saved == dataclasses.asdict(config(tmp_path / "a"))
    assert saved["out"] == str(tmp_path / "a")


def test_ce_only_student_has_no_teacher_and_existing_run_needs_resume(tmp_path):
    data = synthetic()
    result = run_distillation(config(tmp_path, epochs=1), ce_only, datasets=data)
    assert result.teacher is None and not (tmp_path / "teacher.pt").exists()
    rec = json.loads((tmp_path / "result.json").read_text())
    assert set(rec) >= {"loss_ce", "test_acc", "train_acc", "lr"}
    with pytest.raises(ValueError, match="--resume"):
        run_distillation(config(tmp_path, epochs=1), ce_only, datasets=data)


def test_bad_model_mismatched_teacher_and_too_large_batch(tmp_path):
    data = synthetic()
    with pytest.raises(ValueError, match="unknown model"):
        run_distillation(config(tmp_path / "x", student="nope_net"), kd_factory, datasets=data)
    torch.save({"model": nn.Linear(2, 2).state_dict()}, tmp_path / "t.pt")
    with pytest.raises(ValueError, match="does not fit"):
        run_distillation(
            config(tmp_path / "y", teacher_checkpoint=tmp_path / "t.pt"), kd_factory, datasets=data
        )
    with pytest.raises(ValueError, match="32 per process < --batch-size 64"):
        run_distillation(config(tmp_path / "z", batch_size=64), ce_only, datasets=data)
    with pytest.raises(TypeError, match="DistillConfig"):
        run_distillation({"epochs": 1}, ce_only, datasets=data)


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {test_dir!r})
from test_engine import config, kd_factory, synthetic
from lab_common.distill import run_distillation

out = {out!r}
cfg = config(out, epochs=2, teacher_checkpoint=out + "/t.pt")
result = run_distillation(cfg, kd_factory, datasets=synthetic())
torch.save(result.student.state_dict(), f"{{out}}/rank{{os.environ['RANK']}}.pt")
"""


@pytest.mark.slow
def test_torchrun_two_processes_keep_ranks_identical(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(DDP_SCRIPT.format(test_dir=str(Path(__file__).parent), out=str(tmp_path)))
    )
    run_torchrun([script], timeout=240)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    _assert_same(r0, r1)
    # the ranks trained: their weights left the seeded initialisation the engine starts from
    seed_everything(0)
    init = timm.create_model("cifar_wrn_16_1", num_classes=4, in_chans=1).state_dict()
    moved = [k for k in init if init[k].is_floating_point() and not torch.equal(init[k], r0[k])]
    assert "stem.conv.weight" in moved
    saved = _weights(tmp_path / "student.pt")
    _assert_same(saved, r0)
