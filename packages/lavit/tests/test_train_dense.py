"""lavit.train_dense: the detection / segmentation trainer (``lavit-train-dense``)."""

import io
import json
import math
import re
import sys
import warnings
from contextlib import redirect_stderr
from dataclasses import replace
from unittest import mock

import pytest
import torch
from PIL import Image

from lab_common import read_metrics
from lab_common.cli import run_console
from lab_common.testing import run_torchrun
from lavit.train_dense import DenseTrainConfig, build_parser, main, train_dense

#: a very small paper-layout LaViT (7x7 windows, VA + LA in every stage)
BACKBONE = dict(
    depths=(2, 2, 2, 2),
    la_depths=(1, 1, 1, 1),
    embed_dims=(16, 32, 48, 64),
    num_heads=(1, 2, 3, 4),
    mlp_ratios=(2, 2, 2, 2),
    img_size=128,
)


def _config(task: str, scenes, out, **overrides) -> DenseTrainConfig:
    train_root, val_root = map(str, scenes)
    settings = dict(
        task=task,
        train_root=train_root,
        val_root=val_root,
        backbone="lavit_tiny",
        backbone_kwargs=BACKBONE,
        fpn_channels=32,
        min_size=128,
        max_size=128,
        epochs=2,
        batch_size=2,
        workers=0,
        seed=1,
        out=str(out),
        progress=False,
    )
    return DenseTrainConfig(**(settings | overrides))


def test_retinanet_run_and_exact_resume(scenes, tmp_path):
    full = _config("retinanet", scenes, tmp_path / "full")
    train_dense(full)
    records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["step"] == 6
    assert {"train_classification", "train_bbox_regression", "train_loss"} <= set(records[-1])
    assert {"val_bbox_AP", "val_bbox_AP50", "val_bbox_AP75"} <= set(records[-1])
    assert (tmp_path / "full" / "model.pth").is_file()
    cut = _config("retinanet", scenes, tmp_path / "cut", stop_after_epoch=1)
    train_dense(cut)
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["epoch"] == 1
    train_dense(replace(cut, stop_after_epoch=None), resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert a["step"] == b["step"] == 6 and a["num_classes"] == b["num_classes"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    resumed = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert resumed[-1]["train_loss"] == pytest.approx(records[-1]["train_loss"], rel=1e-6)


def test_maskrcnn_reports_mask_ap(scenes, tmp_path):
    cfg = _config("maskrcnn", scenes, tmp_path / "run", epochs=1)
    train_dense(cfg)
    (record,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert {"train_loss_mask", "train_loss_objectness", "val_segm_AP", "val_bbox_AP"} <= set(record)


def test_semantic_fpn_reports_miou(scenes, tmp_path):
    cfg = _config("semantic_fpn", scenes, tmp_path / "run", epochs=1, num_classes=4)
    train_dense(cfg)
    (record,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert 0.0 <= record["val_mIoU"] <= 1.0 and 0.0 < record["val_pixel_acc"] <= 1.0
    assert record["train_ce"] == pytest.approx(record["train_loss"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(task="yolo"), "task must be one of"),
        (dict(task="semantic_fpn"), "semantic_fpn needs num_classes"),
        (dict(num_classes=1), "counts the background"),
        (dict(train_root=""), "train_root is required"),
    ],
)
def test_bad_settings_are_named(scenes, tmp_path, overrides, message):
    overrides = dict(overrides)
    with pytest.raises(ValueError, match=message):
        _config(overrides.pop("task", "retinanet"), scenes, tmp_path, **overrides)


def test_parser_builds_the_config(scenes, tmp_path):
    argv = ["--task", "semantic_fpn", "--train-root", str(scenes[0]), "--num-classes", "4"]
    argv += ["--backbone-kwargs", json.dumps({"depths": [1, 1, 1, 1]}), "--epochs", "3"]
    args = build_parser().parse_args([*argv, "--out", str(tmp_path), "--weight-decay", "0"])
    assert (args.task, args.num_classes, args.epochs, args.weight_decay) == (
        "semantic_fpn",
        4,
        3,
        0.0,
    )
    assert args.backbone_kwargs == {"depths": [1, 1, 1, 1]}


def test_console_script_exit_status(scenes, tmp_path, run_modules):
    common = ["--train-root", str(scenes[0]), "--backbone", "lavit_tiny"]
    common += ["--backbone-kwargs", json.dumps(BACKBONE), "--fpn-channels", "32"]
    common += ["--min-size", "128", "--max-size", "128", "--epochs", "1", "--workers", "0"]
    ok, missing = run_modules(
        ("lavit.train_dense", "--task", "retinanet", *common, "--out", tmp_path / "ok"),
        (
            "lavit.train_dense",
            *("--task", "retinanet", "--train-root", tmp_path / "nowhere"),
            *("--out", tmp_path / "bad"),
        ),
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "ok" / "model.pth").is_file()
    assert missing.returncode == 2, missing.stderr[-3000:]
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("lavit-train-dense: error:") and "annotations.json not found" in last


@pytest.mark.slow
def test_two_processes_shard_the_data(scenes, tmp_path):
    argv = ["-m", "lavit.train_dense", "--task", "retinanet", "--train-root", str(scenes[0])]
    argv += ["--backbone-kwargs", json.dumps(BACKBONE), "--fpn-channels", "32", "--seed", "1"]
    argv += ["--min-size", "128", "--max-size", "128", "--epochs", "1", "--batch-size", "1"]
    argv += ["--workers", "0", "--no-progress", "--device", "cpu", "--out", str(tmp_path)]
    run_torchrun(argv)
    (record,) = read_metrics(tmp_path / "metrics.jsonl")  # one line: rank 0 logs
    assert record["step"] == 3  # 6 images / (2 processes x batch 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_amp_run(scenes, tmp_path):
    cfg = _config("maskrcnn", scenes, tmp_path, epochs=1, device="cuda", amp=True)
    train_dense(cfg)
    (record,) = read_metrics(tmp_path / "metrics.jsonl")
    assert math.isfinite(record["train_loss"]) and "val_segm_AP" in record


def test_a_learning_rate_changed_on_resume_applies_from_the_resume_on(scenes, tmp_path):
    common = dict(epochs=3, num_classes=4, val_root=None, lr=1e-3, warmup_steps=2)
    cut = _config("semantic_fpn", scenes, tmp_path / "cut", stop_after_epoch=1, **common)
    train_dense(cut)
    faster = replace(cut, lr=4e-3, stop_after_epoch=None)
    train_dense(faster, resume=True, allow_changed=["lr"])
    train_dense(replace(faster, out=str(tmp_path / "straight")))
    resumed = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert resumed[0]["lr"] != straight[0]["lr"]  # epoch 1 ran at the old rate
    lrs = [(a["lr"], b["lr"]) for a, b in zip(resumed[1:], straight[1:], strict=True)]
    assert all(a == b for a, b in lrs) and lrs[0][0] > 0  # then the new schedule
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["lr"] == 4e-3
    with pytest.raises(ValueError, match="past --epochs 1"):
        train_dense(replace(faster, epochs=1), resume=True, allow_changed=["lr", "epochs"])
    with pytest.raises(ValueError, match="--allow-changed backbone_kwargs: .*cannot change"):
        train_dense(faster, resume=True, allow_changed=["backbone_kwargs"])


def _coco_config(tmp_path, write_coco, task="maskrcnn", **overrides) -> DenseTrainConfig:
    rows = {1: [(1, 0, [4, 4, 20, 20])], 2: [], 3: [(2, 5, [8, 8, 30, 24]), (3, 5, [9, 9, 0, 4])]}
    train_root = write_coco(tmp_path / "train", rows)
    val_root = write_coco(tmp_path / "val", {1: [], 2: []})
    scenes = (train_root, val_root)
    return _config(task, scenes, tmp_path / "run", epochs=1, **overrides)


def test_coco_category_ids_map_to_labels_and_no_ground_truth_is_not_zero(tmp_path, write_coco):
    cfg = _coco_config(tmp_path, write_coco)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_dense(cfg)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "requires_grad" in m], messages
    assert sum("dropped 1 annotations" in m for m in messages) == 1
    assert any("has no annotations: AP is undefined" in m for m in messages)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["category_ids"] == [0, 5]
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["num_classes"] == 3
    (record,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert record["val_bbox_AP"] is None and record["val_segm_AP50"] is None


def test_bad_data_is_refused_before_the_first_step(tmp_path, write_coco):
    cfg = _coco_config(tmp_path, write_coco)
    small = write_coco(tmp_path / "small", {1: [(1, 0, [4, 4, 20, 20])]}, stated_size=32)
    with pytest.raises(ValueError, match=r"1\.png: the mask of annotation 1 is 32x32"):
        train_dense(replace(cfg, val_root=str(small)))
    unknown = write_coco(tmp_path / "unknown", {1: [(9, 2, [4, 4, 20, 20])]})
    with pytest.raises(ValueError, match="annotation 9 has category_id 2"):
        train_dense(replace(cfg, train_root=str(unknown)))
    root = tmp_path / "pairs"
    for name in ("images", "masks"):
        (root / name).mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (32, 32)).save(root / "images" / f"{i}.png")
        Image.new("L", (32, 32 if i else 16)).save(root / "masks" / f"{i}.png")
    semantic = replace(cfg, task="semantic_fpn", num_classes=3, train_root=str(root))
    with pytest.raises(ValueError, match=r"masks/0\.png is 32x16 but its image"):
        train_dense(replace(semantic, val_root=str(root)))
    assert not (tmp_path / "run").exists()


def _console(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with mock.patch.object(sys, "argv", ["lavit-train-dense"]), redirect_stderr(err):
        status = run_console(main, [str(a) for a in argv], prog="lavit-train-dense")
    return status, err.getvalue()


def test_console_one_line_without_pycocotools_and_on_divergence(tmp_path, write_coco, monkeypatch):
    cfg = _coco_config(tmp_path, write_coco, task="retinanet")
    argv = ["--task", "retinanet", "--train-root", cfg.train_root, "--backbone-kwargs"]
    argv += [json.dumps(BACKBONE), "--fpn-channels", "32", "--min-size", "128", "--max-size"]
    argv += ["128", "--workers", "0", "--no-progress", "--epochs", "3", "--batch-size", "1"]
    status, err = _console(*argv, "--lr", "1e6", "--out", tmp_path / "diverged")
    assert status == 1 and len(err.splitlines()) == 1, err
    assert re.search(r"non-finite loss at epoch \d+ step \d+ .*lower --lr", err)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "pycocotools", None)
        status, err = _console(*argv, "--out", tmp_path / "nococo")
    assert status == 2 and err == (
        "lavit-train-dense: error: COCO folders (retinanet, maskrcnn) need pycocotools, which "
        "the lavit[detection] extra installs: pip install 'lavit[detection]'\n"
    )
