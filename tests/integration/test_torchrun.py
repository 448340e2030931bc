"""Two-process ``torchrun`` (gloo) runs of ``lavit.train`` and ``clkd.train`` on real Fashion-MNIST."""

from __future__ import annotations

import torch

from lab_common import read_metrics, shared_datasets_root
from lab_common.testing import run_torchrun


def _run(args: list[str]) -> None:
    run_torchrun(args, timeout=600)


def test_lavit_train_two_processes(tmp_path):
    out = tmp_path / "lavit"
    model_kwargs = '{"depths": [1, 1, 2, 1], "la_depths": [0, 0, 1, 0], "embed_dims": [16, 32, 48, 64], "num_heads": [1, 2, 2, 4], "sr_ratios": [4, 2, 1, 1], "patch_size": 2}'
    _run(
        [
            "-m", "lavit.train", "--dataset", "fashion-mnist", "--data-root", str(shared_datasets_root()),
            "--model", "lavit_tiny", "--model-kwargs", model_kwargs, "--img-size", "32",
            "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "16", "--max-train-samples", "256",
            "--max-val-samples", "128", "--workers", "0", "--output", str(out), "--no-progress",
        ]
    )  # fmt: skip
    records = read_metrics(out / "metrics.jsonl")
    epochs = [r for r in records if "val_top1" in r]
    assert len(epochs) >= 2, records
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    state = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    assert state["epoch"] in (1, 2)


def test_clkd_train_two_processes(tmp_path):
    out = tmp_path / "clkd"
    _run(
        [
            "-m", "clkd.train", "--dataset", "fashion-mnist", "--data-root", str(shared_datasets_root()),
            "--teacher", "cifar_resnet8", "--student", "cifar_resnet8", "--method", "clkd",
            "--epochs", "1", "--batch-size", "32", "--train-subset", "256", "--test-subset", "128",
            "--workers", "0", "--out-dir", str(out), "--no-progress",
        ]
    )  # fmt: skip
    assert (out / "teacher.pt").is_file() and (out / "student.pt").is_file()
    student = torch.load(out / "student.pt", map_location="cpu", weights_only=False)
    assert student["model_name"] == "cifar_resnet8" and student["num_classes"] == 10
    assert read_metrics(out / "student_metrics.jsonl")
