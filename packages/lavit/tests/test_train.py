import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lab_common.testing import run_torchrun
from lavit.train import main

TINY_KWARGS = json.dumps(
    dict(
        depths=[1, 2, 1, 1],
        la_depths=[0, 1, 0, 0],
        embed_dims=[8, 16, 24, 32],
        num_heads=[1, 2, 2, 4],
        mlp_ratios=[2, 2, 2, 2],
        sr_ratios=[2, 1, 1, 1],
    )
)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """ImageNet-style folder: 2 classes, 8 train + 2 val RGB images of 32x32 each."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for c, cls in enumerate(("cat", "dog")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 128, (32, 32, 3), dtype=np.uint8) + 100 * c
                Image.fromarray(arr.astype(np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--dataset", str(data), "--model", "lavit_tiny", "--model-kwargs", TINY_KWARGS,
        "--img-size", "32", "--epochs", "2", "--batch-size", "8", "--workers", "0",
        "--warmup-epochs", "1", "--lr", "1e-3", "--ema-decay", "0.9", "--dp-loss-weight", "0.5",
        "--seed", "3", "--no-progress", "--output", str(out), *extra,
    ]  # fmt: skip


def test_resume_continues_exactly(image_folder, tmp_path):
    main(_args(image_folder, tmp_path / "full"))
    main(_args(image_folder, tmp_path / "cut", "--stop-after-epoch", "1"))
    cut = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=False)
    assert cut["epoch"] == 1 and cut["step"] == 2
    main(
        _args(image_folder, tmp_path / "cut", "--resume", str(tmp_path / "cut" / "checkpoint.pth"))
    )
    a = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoint.pth", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    # the first epoch actually changed the weights, and the logs agree
    assert not torch.equal(cut["model"]["head.weight"], a["model"]["head.weight"])
    full_log = [
        json.loads(s) for s in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    cut_log = [json.loads(s) for s in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in full_log] == [r["train_loss"] for r in cut_log]
    assert full_log[-1]["train_loss_dp"] > 0
    assert (tmp_path / "full" / "curves.png").stat().st_size > 0
    assert (tmp_path / "full" / "model.pth").exists()


def test_torchrun_two_ranks_identical(image_folder, tmp_path):
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("_ddp_worker.py")
    run_torchrun(
        [worker, *_args(image_folder, out, "--epochs", "1", "--batch-size", "4")], timeout=240
    )
    r0 = torch.load(out / "rank0.pt")
    r1 = torch.load(out / "rank1.pt")
    init = torch.load(out / "model.pth")  # EMA weights of rank 0, saved by the trainer
    assert r0.keys() == r1.keys() == init.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2  # 16 images / (2 ranks x 4)


def test_cli_errors(image_folder, tmp_path):
    with pytest.raises(ValueError, match="--model-kwargs must be a JSON dict"):
        main(_args(image_folder, tmp_path / "x", "--model-kwargs", "{depths"))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        main(_args(image_folder, tmp_path / "y", "--batch-size", "32"))
    with pytest.raises(ValueError, match="checkpoint not found"):
        main(_args(image_folder, tmp_path / "z", "--resume", str(tmp_path / "missing.pth")))
