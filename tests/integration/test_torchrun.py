"""Two-process ``torchrun`` (gloo) runs of ``lavit.train`` and ``clkd.train`` on real Fashion-MNIST."""

from __future__ import annotations

import json

import pytest
import torch

from lab_common import read_metrics, shared_datasets_root
from lab_common.testing import run_torchrun

pytestmark = pytest.mark.slow

TINY_LAVIT = {
    "depths": [1, 1, 2, 1],
    "la_depths": [0, 0, 1, 0],
    "embed_dims": [16, 32, 48, 64],
    "num_heads": [1, 2, 2, 4],
    "sr_ratios": [4, 2, 1, 1],
    "window_sizes": [0, 0, 0, 0],
    "patch_size": 2,
}


def test_lavit_train_two_processes(tmp_path):
    out = tmp_path / "lavit"
    argv = ["-m", "lavit.train", "--dataset", "fashion-mnist"]
    argv += ["--data-root", str(shared_datasets_root()), "--model", "lavit_tiny"]
    argv += ["--model-kwargs", json.dumps(TINY_LAVIT), "--img-size", "32", "--epochs", "2"]
    argv += ["--warmup-epochs", "1", "--batch-size", "16", "--max-train-samples", "256"]
    argv += ["--max-val-samples", "128", "--workers", "0", "--out", str(out), "--no-progress"]
    run_torchrun(argv, timeout=600)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    # --batch-size is per process: 256 images / (2 processes x 16) = 8 steps an epoch
    assert [r["step"] for r in records] == [8, 16]
    assert all("val_top1" in r for r in records)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and len(state["rng"]) == 2  # one RNG state per process


def test_clkd_train_two_processes(tmp_path):
    out = tmp_path / "clkd"
    argv = ["-m", "clkd.train", "--dataset", "fashion-mnist"]
    argv += ["--data-root", str(shared_datasets_root()), "--teacher", "cifar_resnet8"]
    argv += ["--student", "cifar_resnet8", "--method", "clkd", "--epochs", "1"]
    argv += ["--batch-size", "16", "--train-subset", "256", "--test-subset", "128"]
    argv += ["--workers", "0", "--out", str(out), "--no-progress"]
    run_torchrun(argv, timeout=600)
    assert (out / "teacher.pt").is_file() and (out / "student.pt").is_file()
    student = torch.load(out / "student.pt", map_location="cpu", weights_only=False)
    assert student["model_name"] == "cifar_resnet8" and student["num_classes"] == 10
    records = read_metrics(out / "student_metrics.jsonl")
    assert [r["epoch"] for r in records] == [1] and 0 <= records[0]["val_top1"] <= 100
