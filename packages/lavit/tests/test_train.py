import io
import json
import os
import re
from contextlib import redirect_stderr
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lab_common.cli import config_from_args, run_console
from lab_common.testing import run_torchrun
from lavit.train import TrainConfig, build_parser, main, train

#: lists, as ``--model-kwargs`` JSON gives them
TINY_KWARGS = dict(
    depths=[1, 2, 1, 1],
    la_depths=[0, 1, 0, 0],
    embed_dims=[8, 16, 24, 32],
    num_heads=[1, 2, 2, 4],
    mlp_ratios=[2, 2, 2, 2],
    sr_ratios=[2, 1, 1, 1],
    window_sizes=[0, 0, 0, 0],  # global attention with spatial-reduction keys (the PVTv2 layout)
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


def _config(data: Path, out: Path, **changes) -> TrainConfig:
    cfg = TrainConfig(
        dataset=str(data),
        model="lavit_tiny",
        model_kwargs=TINY_KWARGS,
        img_size=32,
        epochs=2,
        batch_size=8,
        workers=0,
        warmup_epochs=1,
        lr=1e-3,
        ema_decay=0.9,
        dp_loss_weight=0.5,
        seed=3,
        progress=False,
        out=str(out),
    )
    return replace(cfg, **changes)


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    """The ``lavit-train`` arguments of :func:`_config` (for the torchrun and console tests)."""
    argv = ["--dataset", str(data), "--model", "lavit_tiny"]
    argv += ["--model-kwargs", json.dumps(TINY_KWARGS), "--img-size", "32", "--epochs", "2"]
    argv += ["--batch-size", "8", "--workers", "0", "--warmup-epochs", "1", "--lr", "1e-3"]
    argv += ["--ema-decay", "0.9", "--dp-loss-weight", "0.5", "--seed", "3", "--no-progress"]
    return [*argv, "--out", str(out), *extra]


def test_resume_continues_exactly(image_folder, tmp_path):
    full = _config(image_folder, tmp_path / "full")
    train(full)
    cut = _config(image_folder, tmp_path / "cut", stop_after_epoch=1)
    train(cut)
    first = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert first["epoch"] == 1 and first["step"] == 2
    assert first["config"] == asdict(cut)  # the whole config, as a plain dict
    train(replace(cut, stop_after_epoch=None), resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    states_a, states_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert len(states_a) == len(states_b) > 0
    for sa, sb in zip(states_a.values(), states_b.values(), strict=True):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"])
    # the first epoch actually changed the weights, and the logs agree
    assert not torch.equal(first["model"]["head.weight"], a["model"]["head.weight"])
    full_log = [
        json.loads(s) for s in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    cut_log = [json.loads(s) for s in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert len(full_log) == len(cut_log) == 2
    assert [r["train_loss"] for r in full_log] == [r["train_loss"] for r in cut_log]
    assert full_log[-1]["train_loss_dp"] > 0
    assert (tmp_path / "full" / "curves.png").stat().st_size > 0
    assert (tmp_path / "full" / "model.pth").exists()
    saved = json.loads((tmp_path / "full" / "config.json").read_text())
    assert saved["out"] == str(tmp_path / "full") and saved["model_kwargs"]["depths"] == [
        1,
        2,
        1,
        1,
    ]


@pytest.mark.slow
def test_torchrun_two_ranks_identical(image_folder, tmp_path):
    out = tmp_path / "ddp"
    worker = Path(__file__).with_name("_ddp_worker.py")
    run_torchrun(
        [worker, *_argv(image_folder, out, "--epochs", "1", "--batch-size", "4")], timeout=240
    )
    r0 = torch.load(out / "rank0.pt")
    r1 = torch.load(out / "rank1.pt")
    init = torch.load(out / "model.pth")  # EMA weights of rank 0, saved by the trainer
    assert r0.keys() == r1.keys() == init.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2  # --batch-size is per process: 16 images / (2 ranks x 4)


def test_train_errors(image_folder, tmp_path):
    with pytest.raises(
        ValueError, match=r"unknown model 'lavit_huge'.*timm\.list_models\('lavit\*'\)"
    ):
        train(_config(image_folder, tmp_path / "w", model="lavit_huge"))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        train(_config(image_folder, tmp_path / "y", batch_size=32))
    with pytest.raises(FileNotFoundError, match="no last.pt in .*without --resume"):
        train(_config(image_folder, tmp_path / "z"), resume=True)


def test_a_run_killed_before_its_first_checkpoint_can_be_overwritten(image_folder, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # all a run killed in its first epoch leaves
    cfg = _config(image_folder, out, epochs=1)
    with pytest.raises(FileExistsError, match="not empty"):
        train(cfg)
    train(cfg, overwrite=True)
    assert (out / "last.pt").is_file()


def test_run_folder_rules_and_checkpoint_fallback(image_folder, tmp_path):
    out = tmp_path / "run"
    cut = _config(image_folder, out, stop_after_epoch=1, epochs=3)
    train(cut)
    with pytest.raises(FileExistsError, match="not empty; pass --resume"):
        train(cut)  # a fresh run never overwrites a previous one silently
    with pytest.raises(ValueError, match="lr: 0.001 -> 0.5.*--allow-changed lr"):
        train(replace(cut, lr=0.5, stop_after_epoch=2), resume=True)
    train(replace(cut, stop_after_epoch=2), resume=True)
    assert torch.load(out / "last.prev.pt", weights_only=False)["epoch"] == 1
    os.truncate(out / "last.pt", 20000)  # the newest generation corrupted at rest
    with (out / "metrics.jsonl").open("a") as f:  # and a record written after it by a killed run
        f.write(json.dumps({"epoch": 3, "train_loss": 9.9}) + "\n")
    with pytest.warns(UserWarning, match="previous generation"):
        train(replace(cut, stop_after_epoch=None), resume=True)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]  # epoch 2 redone from last.prev.pt, once
    assert log[-1]["train_loss"] != 9.9
    train(replace(cut, stop_after_epoch=None), overwrite=True)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(epochs=0), "epochs must be >= 1, got 0"),
        (dict(batch_size=-1), "batch_size must be >= 1"),
        (dict(max_train_samples=0), "max_train_samples must be >= 1 or None"),
        (dict(model_kwargs='{"depths": [1, 1, 1, 1]}'), "model_kwargs must be a dict"),
        (dict(scale=(1.0, 0.5)), "scale must be"),
        (dict(dp_loss_variant="paper"), "dp_loss_variant must be one of"),
        (dict(ema_decay=1.0), r"ema_decay must be in \[0, 1\)"),
        (dict(augment="randaug"), "augment must be one of"),
        (dict(val_images=0), "val_images must be >= 1"),
    ],
)
def test_config_rejects_bad_values(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


def _parse(argv: list[str]) -> tuple[TrainConfig, bool]:
    args = build_parser().parse_args(argv)
    return config_from_args(TrainConfig, args), args.resume


def test_parser_builds_the_config(tmp_path):
    cfg, resume = _parse(["--dataset", "cifar10"])
    assert cfg == TrainConfig(dataset="cifar10") and resume is False  # same defaults
    cfg, resume = _parse(_argv(Path("data"), tmp_path, "--scale", "0.5", "1", "--resume"))
    assert cfg == _config(Path("data"), tmp_path, scale=(0.5, 1.0)) and resume is True
    assert isinstance(cfg.scale, tuple) and cfg.model_kwargs["depths"] == [1, 2, 1, 1]
    assert _parse(["--dataset", "cifar10", "--out", "runs/new"])[0].out == "runs/new"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
        (["--model-kwargs", "{depths"], "--model-kwargs: expected a JSON dict"),
        (["--model-kwargs", "[1, 2]"], "--model-kwargs: expected a JSON dict"),
        (["--lr", "-1"], "--lr: expected a number > 0"),
    ],
)
def test_parser_refuses_bad_values(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--dataset", "cifar10", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_console_script_exit_status(image_folder, tmp_path, run_modules):
    ok, bad = run_modules(
        ("lavit.train", *_argv(image_folder, tmp_path / "ok", "--epochs", "1")),
        ("lavit.train", *_argv(image_folder, tmp_path / "bad", "--model", "lavit_huge")),
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert json.loads((tmp_path / "ok" / "metrics.jsonl").read_text())["epoch"] == 1
    assert bad.returncode == 2, bad.stderr[-3000:]
    lines = bad.stderr.strip().splitlines()
    # one error line, last (a library's import-time warning may come before it), no traceback
    assert lines[-1].startswith("lavit-train: error: unknown model 'lavit_huge'"), bad.stderr
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in bad.stderr
    assert "timm.list_models('lavit*')" in lines[-1]


def test_changed_learning_rates_apply_from_the_resume_on(image_folder, tmp_path):
    cut = _config(image_folder, tmp_path / "cut", epochs=3, stop_after_epoch=1, ema_decay=0.0)
    train(cut)
    changed = replace(cut, lr=4e-3, min_lr=1e-3, stop_after_epoch=None)
    train(changed, resume=True, allow_changed=["lr", "min-lr"])
    train(replace(changed, out=str(tmp_path / "straight")))

    def lrs(run: str) -> list[float]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["lr"] for line in lines]

    assert lrs("cut")[0] != lrs("straight")[0]  # epoch 1 ran at the old rates
    assert lrs("cut")[1:] == lrs("straight")[1:]  # then the new schedule, from the resumed step
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["min_lr"] == 1e-3
    with pytest.raises(ValueError, match="at epoch 3, past --epochs 2"):
        train(replace(changed, epochs=2), resume=True, allow_changed=["epochs", "lr", "min_lr"])
    with pytest.raises(ValueError, match="--allow-changed seed: .*cannot change on resume"):
        train(replace(changed, seed=4), resume=True, allow_changed=["seed", "lr", "min_lr"])


def test_overwrite_keeps_what_the_run_did_not_write(image_folder, tmp_path):
    out = tmp_path / "run"
    cfg = _config(image_folder, out, epochs=1, ema_decay=0.0)
    train(cfg)
    (out / "notes.txt").write_text("mine")
    train(cfg, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.pth").is_file()


def _fashion(out: Path, **changes) -> TrainConfig:
    """Fashion-MNIST in memory (padded to 32², crop + flip) with a validation split of 100."""
    kwargs = {**TINY_KWARGS, "sr_ratios": [1, 1, 1, 1]}
    cfg = TrainConfig(
        dataset="fashion-mnist",
        augment="crop-flip",
        val_images=100,
        max_train_samples=64,
        model="lavit_tiny",
        model_kwargs=kwargs,
        img_size=32,
        epochs=1,
        batch_size=16,
        workers=0,
        warmup_epochs=0,
        mixup=0.0,
        cutmix=0.0,
        seed=1,
        progress=False,
        out=str(out),
    )
    return replace(cfg, **changes)


def test_crop_flip_on_a_validation_split_with_any_number_of_workers(tmp_path):
    models = [train(_fashion(tmp_path / f"w{w}", workers=w)) for w in (0, 2)]
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)  # items are drawn per index and epoch, not per worker
    assert models[0].stages[0].patch_embed.proj.in_channels == 1  # the dataset's own channels
    record = json.loads((tmp_path / "w0/metrics.jsonl").read_text().splitlines()[-1])
    assert json.loads((tmp_path / "w0/config.json").read_text())["eval_split"] == "val"
    assert 0 <= record["val_top1"] <= 100
    with pytest.raises(ValueError, match="28x28 images can be zero-padded .* not to 27"):
        train(_fashion(tmp_path / "bad", img_size=27))
    with pytest.raises(ValueError, match="needs a named dataset"):
        train(_fashion(tmp_path / "bad2", dataset=str(tmp_path)))


def test_a_diverged_evaluation_stops_the_run(tmp_path, monkeypatch):
    import lavit.train as lt

    monkeypatch.setattr(lt, "evaluate", lambda *a, **k: {"loss": float("nan"), "top1": 10.0})
    with pytest.raises(FloatingPointError, match="epoch 1: non-finite val_loss"):
        train(_fashion(tmp_path / "nan"))
    assert not (tmp_path / "nan/last.pt").exists()
    metrics = tmp_path / "nan/metrics.jsonl"
    assert not metrics.exists() or not metrics.read_text().strip()


def _console(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with redirect_stderr(err):
        status = run_console(main, list(argv), prog="lavit-train")
    return status, err.getvalue()


def test_a_diverging_lr_is_one_line_naming_the_step_and_the_fix(image_folder, tmp_path):
    argv = _argv(image_folder, tmp_path / "run", "--lr", "1e6", "--warmup-epochs", "0")
    status, err = _console(*argv)
    assert status == 1 and len(err.splitlines()) == 1, err
    assert re.search(r"lavit-train: error: non-finite loss .* step \d+.*lower --lr", err), err


def test_a_refused_start_leaves_nothing_in_out(image_folder, tmp_path):
    out = tmp_path / "run"
    status, err = _console(*_argv(tmp_path / "nowhere", out, "--epochs", "1"))
    assert status == 2 and len(err.splitlines()) == 1, err
    assert not (out / "config.json").exists()
    assert _console(*_argv(image_folder, out, "--epochs", "1")) == (0, "")


def test_the_readme_training_example_runs(tmp_path):
    """The README's ``TrainConfig`` example (shortened: one epoch on 64 images, no AMP)."""
    cfg = TrainConfig(
        dataset="fashion-mnist",
        model="lavit_tiny",
        img_size=32,
        augment="crop-flip",
        val_images=5000,
        epochs=1,
        batch_size=32,
        lr=1e-3,
        dp_loss_weight=0.1,
        ema_decay=0.9998,
        max_train_samples=64,
        max_val_samples=64,
        workers=0,
        progress=False,
        out=str(tmp_path / "fm"),
    )
    train(cfg)
    record = json.loads((tmp_path / "fm/metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and record["train_loss_dp"] > 0  # the DP loss is active at 32²
