"""The shared distillation engine: exact resume, CE-only path, DDP ranks identical, errors."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lab_common.checkpoint import load_checkpoint
from lab_common.distill_training import (
    TensorImageDataset,
    build_datasets,
    build_parser,
    default_milestones,
    run_distillation,
)
from lab_common.testing import run_torchrun


class KD(nn.Module):
    def forward(self, s, t, target):
        kd = F.kl_div(F.log_softmax(s / 4, -1), F.softmax(t / 4, -1), reduction="batchmean")
        return {"loss_ce": 0.1 * F.cross_entropy(s, target), "loss_kd": 16 * kd}


def kd_factory(args, num_classes):
    return KD()


def synthetic(n_train=32, n_test=16, size=12, classes=4):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = torch.randint(0, 256, (n_train + n_test, 1, size, size), generator=g, dtype=torch.uint8)
    x[:, :, : size // 2] = (y * 60).to(torch.uint8).view(-1, 1, 1, 1)  # a learnable cue
    mean, std = (0.5,), (0.3,)
    train = TensorImageDataset(x[:n_train], y[:n_train], mean, std, augment=True, padding=2)
    test = TensorImageDataset(x[n_train:], y[n_train:], mean, std)
    return train, test, classes, 1


def parse(out_dir, *extra):
    return build_parser().parse_args(
        ["--teacher", "cifar_resnet8", "--student", "cifar_wrn_16_1", "--epochs", "3",
         "--teacher-epochs", "2", "--batch-size", "16", "--workers", "0", "--no-progress",
         "--device", "cpu", "--lr", "0.05", "--out-dir", str(out_dir), *extra]
    )  # fmt: skip


def _weights(path):
    return load_checkpoint(path)["model"]


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_default_milestones_scale_the_protocol():
    assert default_milestones(240) == [150, 180, 210]
    assert default_milestones(24) == [15, 18, 21]
    assert default_milestones(2) == [1, 2]


def test_interrupted_runs_resume_exactly(tmp_path):
    data = synthetic()
    full = run_distillation(parse(tmp_path / "a"), kd_factory, datasets=data)
    assert full.metrics["completed"] and full.metrics["epoch"] == 2
    # Interrupt inside teacher training, then inside student training (1 epoch per call).
    part = run_distillation(parse(tmp_path / "b", "--stop-after", "1"), kd_factory, datasets=data)
    assert part.student is None and not part.metrics["completed"]
    part = run_distillation(
        parse(tmp_path / "b", "--stop-after", "1", "--resume"), kd_factory, datasets=data
    )
    assert not part.metrics["completed"] and part.metrics["epoch"] == 0
    part = run_distillation(parse(tmp_path / "b", "--resume"), kd_factory, datasets=data)
    assert part.metrics["completed"]
    _assert_same(_weights(tmp_path / "a/teacher.pt"), _weights(tmp_path / "b/teacher.pt"))
    _assert_same(_weights(tmp_path / "a/student.pt"), _weights(tmp_path / "b/student.pt"))
    lines = [
        [json.loads(r) for r in (tmp_path / d / "student_metrics.jsonl").read_text().splitlines()]
        for d in "ab"
    ]
    assert [r["epoch"] for r in lines[1]] == [0, 1, 2]
    for ra, rb in zip(*lines):
        assert ra["loss_kd"] == rb["loss_kd"] and ra["test_acc"] == rb["test_acc"]
    assert (tmp_path / "b/student_curves.png").stat().st_size > 0
    # the teacher really was frozen during distillation and is the cached one
    _assert_same(full.teacher.state_dict(), _weights(tmp_path / "a/teacher.pt"))


def test_ce_only_student_has_no_teacher_and_existing_run_needs_resume(tmp_path):
    data = synthetic()
    result = run_distillation(parse(tmp_path, "--epochs", "1"), lambda a, k: None, datasets=data)
    assert result.teacher is None and not (tmp_path / "teacher.pt").exists()
    rec = json.loads((tmp_path / "result.json").read_text())
    assert set(rec) >= {"loss_ce", "test_acc", "train_acc", "lr"}
    with pytest.raises(ValueError, match="--resume"):
        run_distillation(parse(tmp_path, "--epochs", "1"), lambda a, k: None, datasets=data)


def test_bad_model_and_mismatched_teacher_checkpoint(tmp_path):
    data = synthetic()
    with pytest.raises(ValueError, match="unknown model"):
        run_distillation(parse(tmp_path / "x", "--student", "nope_net"), kd_factory, datasets=data)
    torch.save({"model": nn.Linear(2, 2).state_dict()}, tmp_path / "t.pt")
    with pytest.raises(ValueError, match="does not fit"):
        run_distillation(
            parse(tmp_path / "y", "--teacher-checkpoint", str(tmp_path / "t.pt")),
            kd_factory,
            datasets=data,
        )


def test_tensor_dataset_augments_and_validates():
    x = torch.arange(2 * 16, dtype=torch.uint8).view(2, 1, 4, 4)
    ds = TensorImageDataset(x, torch.tensor([0, 1]), (0.0,), (1 / 255,), augment=True, padding=1)
    img, label = ds[1]
    assert img.shape == (1, 4, 4) and label.item() == 1
    plain = TensorImageDataset(x, torch.tensor([0, 1]), (0.0,), (1 / 255,))
    torch.testing.assert_close(plain[0][0], x[0].float())
    with pytest.raises(ValueError, match="uint8"):
        TensorImageDataset(x.float(), torch.tensor([0, 1]), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="labels"):
        TensorImageDataset(x, torch.tensor([0]), (0.0,), (1.0,))


def test_fashion_mnist_from_shared_folder_with_subsets():
    args = build_parser().parse_args(
        ["--dataset", "fashion-mnist", "--train-subset", "100", "--test-subset", "50"]
    )
    train, test, k, chans = build_datasets(args)
    assert (len(train), len(test), k, chans) == (100, 50, 10, 1)
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= y < 10


DDP_SCRIPT = """
import os, sys, torch
sys.path.insert(0, {test_dir!r})
from test_distill_training import kd_factory, parse, synthetic
from lab_common.distill_training import run_distillation

out = {out!r}
result = run_distillation(parse(out, "--epochs", "2", "--teacher-checkpoint", out + "/t.pt"),
                          kd_factory, datasets=synthetic())
torch.save(result.student.state_dict(), f"{{out}}/rank{{os.environ['RANK']}}.pt")
"""


def test_torchrun_two_processes_keep_ranks_identical(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(
        textwrap.dedent(DDP_SCRIPT.format(test_dir=str(Path(__file__).parent), out=str(tmp_path)))
    )
    run_torchrun([script], timeout=240)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    _assert_same(r0, r1)
    init = synthetic()  # weights moved away from a fresh init
    assert init and not torch.equal(
        r0["stem.conv.weight"], torch.zeros_like(r0["stem.conv.weight"])
    )
    saved = _weights(tmp_path / "student.pt")
    _assert_same(saved, r0)
