"""The console scripts under the faults a user hits: kills, corrupt files, bad numbers.

Each fault must end in exact recovery or in one clear line on stderr and a non-zero status;
nothing a run wrote before the fault may be lost.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

TINY_LAVIT = {
    "depths": [1, 2, 1, 1],
    "la_depths": [0, 1, 0, 0],
    "embed_dims": [8, 16, 24, 32],
    "num_heads": [1, 2, 2, 4],
    "mlp_ratios": [2, 2, 2, 2],
    "sr_ratios": [2, 1, 1, 1],
    "window_sizes": [0, 0, 0, 0],
}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning"}


def _run(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module, *map(str, args)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _console(module: str, *args: object) -> subprocess.CompletedProcess:
    """The console script's entry point ``module.cli()`` run in this process (no interpreter
    start-up: seconds, not tens of seconds); its status and stderr as a CompletedProcess."""
    argv, err = [module, *map(str, args)], io.StringIO()
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stderr(err):
        status = importlib.import_module(module).cli()
    return subprocess.CompletedProcess(argv, status, "", err.getvalue())


def _one_line_error(proc: subprocess.CompletedProcess, *fragments: str, status: int = 2) -> str:
    """The run failed with ``status`` (2: a user error, 1: a run that diverged) and one
    ``error:`` line naming every fragment."""
    assert proc.returncode == status, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.strip().splitlines() if "error" in line.lower()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """ImageNet-style folder, 2 classes, 48 train + 8 val RGB 32x32 images (real JPEG files)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 4)):
        for c, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 80, (32, 32, 3)) + 100 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.jpg")
    return root


def _lavit_args(data: Path, out: Path, epochs: int = 3) -> list[str]:
    args = ["--dataset", str(data), "--model", "lavit_tiny", "--img-size", "32"]
    args += ["--model-kwargs", json.dumps(TINY_LAVIT), "--epochs", str(epochs)]
    args += ["--batch-size", "4", "--workers", "0", "--warmup-epochs", "1", "--seed", "1"]
    return [*args, "--ema-decay", "0", "--no-progress", "--out", str(out)]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_lavit_kill_mid_run_then_resume_is_exact(image_folder, tmp_path):
    _run("lavit.train", *_lavit_args(image_folder, tmp_path / "full"))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lavit.train", *_lavit_args(image_folder, out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = torch.load(out / "last.pt", weights_only=False)["epoch"]
    assert epoch < 3  # killed before the end
    _run("lavit.train", *_lavit_args(image_folder, out), "--resume")
    _assert_same(_weights(tmp_path / "full" / "last.pt"), _weights(out / "last.pt"))
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]


def test_lavit_truncated_checkpoint_falls_back_to_the_previous_generation(image_folder, tmp_path):
    out = tmp_path / "run"
    _run("lavit.train", *_lavit_args(image_folder, out, epochs=2))
    assert (out / "last.prev.pt").is_file()
    os.truncate(out / "last.pt", 20000)
    proc = _run("lavit.train", *_lavit_args(image_folder, out, epochs=2), "--resume")
    assert "previous generation" in proc.stderr
    assert torch.load(out / "last.pt", weights_only=False)["epoch"] == 2


def test_lavit_refuses_to_overwrite_or_resume_with_other_settings(image_folder, tmp_path):
    out = tmp_path / "run"
    _run("lavit.train", *_lavit_args(image_folder, out, epochs=1))
    before = (out / "last.pt").read_bytes()
    fresh = _run("lavit.train", *_lavit_args(image_folder, out, epochs=1), check=False)
    _one_line_error(fresh, "not empty", "--resume", "--overwrite")
    changed = [*_lavit_args(image_folder, out, epochs=1), "--resume", "--lr", "0.5"]
    _one_line_error(_run("lavit.train", *changed, check=False), "lr", "--allow-changed lr")
    assert (out / "last.pt").read_bytes() == before  # nothing lost


def test_lavit_corrupt_image_names_the_file(image_folder, tmp_path):
    data = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (data / split / cls).mkdir(parents=True)
            for f in (image_folder / split / cls).iterdir():
                (data / split / cls / f.name).write_bytes(f.read_bytes())
    bad = data / "train" / "dog" / "3.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated JPEG
    proc = _run("lavit.train", *_lavit_args(data, tmp_path / "run", 1), check=False)
    _one_line_error(proc, "3.jpg")


@pytest.mark.parametrize(
    "module, args, flag",
    [
        ("lavit.train", ["--dataset", "cifar10", "--epochs", "0"], "--epochs"),
        ("lavit.train", ["--dataset", "cifar10", "--batch-size", "-4"], "--batch-size"),
        ("lavit.train", ["--dataset", "cifar10", "--lr", "-1"], "--lr"),
        ("clkd.train", ["--epochs", "-1"], "--epochs"),
        ("clkd.train", ["--batch-size", "0"], "--batch-size"),
        ("trg_kd.train", ["--epochs", "0"], "--epochs"),
        ("gp_maml.train", ["--data-root", "x", "--inner-lr", "-5"], "--inner-lr"),
        ("gp_maml.train", ["--data-root", "x", "--iterations", "0"], "--iterations"),
    ],
)
def test_bad_numbers_are_refused_with_the_flag_named(module, args, flag, monkeypatch, capsys):
    """The console script's entry point, in this process (a traceback would fail the test)."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).cli()
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize(
    "module, args",
    [
        ("lavit.train", ["--dataset", "fashion-mnist"]),
        ("lavit.train_dense", ["--task", "semantic_fpn", "--num-classes", "4"]),
        ("clkd.train", ["--dataset", "fashion-mnist"]),
        ("trg_kd.train", ["--dataset", "fashion-mnist"]),
        ("gp_maml.train", []),
    ],
)
def test_a_failed_start_leaves_out_reusable(module, args, tmp_path, monkeypatch, capsys):
    """A start refused for bad data writes nothing into ``--out``: the corrected command is not
    met with "--out is not empty"."""
    missing = tmp_path / "no-such-data"
    data = ["--train-root", str(missing)] if module == "lavit.train_dense" else []
    data += ["--data-root", str(missing)] if module != "lavit.train_dense" else []
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", [module, *args, *data, "--out", str(out)])
    assert importlib.import_module(module).cli() == 2
    assert "no-such-data" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_clkd_corrupt_dataset_file_is_named(tmp_path):
    from lab_common import shared_datasets_root

    source = shared_datasets_root() / "fashion-mnist"
    data = tmp_path / "data" / "fashion-mnist"
    data.mkdir(parents=True)
    for f in source.glob("*.gz"):
        (data / f.name).write_bytes(f.read_bytes())
    bad = data / "train-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:5000])  # truncated download
    args = ["--dataset", "fashion-mnist", "--data-root", str(tmp_path / "data")]
    args += ["--teacher", "cifar_resnet8", "--student", "cifar_resnet8", "--epochs", "1"]
    args += ["--train-subset", "64", "--test-subset", "64", "--workers", "0"]
    proc = _run("clkd.train", *args, "--out", str(tmp_path / "run"), check=False)
    _one_line_error(proc, "train-images-idx3-ubyte.gz")


def test_gp_maml_corrupt_zip_is_named(tmp_path):
    from lab_common import shared_datasets_root

    zip_path = tmp_path / "images_background_small1.zip"
    source = shared_datasets_root() / "omniglot" / "images_background_small1.zip"
    zip_path.write_bytes(source.read_bytes()[:200_000])  # truncated copy
    args = ["--data-root", str(zip_path), "--iterations", "2", "--out", str(tmp_path / "run")]
    proc = _run("gp_maml.train", *args, check=False)
    _one_line_error(proc, "images_background_small1.zip")


def _gp_maml_args(out: Path, *extra: str) -> list[str]:
    from lab_common import shared_datasets_root

    root = shared_datasets_root() / "omniglot" / "images_background_small1.zip"
    args = ["--method", "maml", "--first-order", "--backbone", "conv4-32", "--batch-size", "2"]
    args += ["--queries", "2", "--val-every", "0", "--ckpt-every", "1", "--log-every", "1"]
    args += ["--threads", "1", "--no-progress", "--data-root", str(root), "--out", str(out)]
    return [*args, *extra]


def _finite(path: Path) -> bool:
    learner = torch.load(path, map_location="cpu", weights_only=False)["learner"]
    return all(v.isfinite().all() for v in learner.values())


def test_gp_maml_stops_at_a_non_finite_loss_and_evaluate_refuses_diverged_weights(tmp_path):
    out = tmp_path / "r"
    assert _console("gp_maml.train", *_gp_maml_args(out, "--iterations", "2")).returncode == 0
    blown = ["--lr", "1e30", "--inner-lr", "1e30", "--iterations", "12", "--resume"]
    blown += ["--allow-changed", "lr", "inner_lr", "iterations"]
    proc = _console("gp_maml.train", *_gp_maml_args(out, *blown))
    _one_line_error(proc, "iteration 3: non-finite loss", "--lr", "last.pt", status=1)
    assert torch.load(out / "last.pt", weights_only=False)["iteration"] == 2
    assert _finite(out / "last.pt") and _finite(out / "last.prev.pt")  # both generations
    state = torch.load(out / "last.pt", weights_only=False)
    next(iter(state["learner"].values())).fill_(float("nan"))
    torch.save(state, tmp_path / "diverged.pt")  # as an older version left a diverged run
    args = ["--checkpoint", tmp_path / "diverged.pt", "--data-root", tmp_path, "--no-progress"]
    _one_line_error(_console("gp_maml.evaluate", *args), "diverged.pt", "non-finite")


def test_overwrite_keeps_the_users_files_and_a_named_teacher_checkpoint(tmp_path):
    proj = tmp_path / "proj"
    (proj / "other_run").mkdir(parents=True)
    (proj / "config.json").write_text("{}")
    (proj / "notes.txt").write_text("mine")
    (proj / "other_run" / "last.pt").write_text("another run")
    args = _gp_maml_args(proj, "--iterations", "1", "--overwrite")
    assert _console("gp_maml.train", *args).returncode == 0
    assert (proj / "notes.txt").read_text() == "mine" and (proj / "other_run" / "last.pt").is_file()
    assert (proj / "last.pt").is_file()
    from lab_common.distill import create_model

    run = tmp_path / "r"  # a clkd run folder, with the user's teacher kept in it
    run.mkdir()
    (run / "student_metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    teacher = {"model": create_model("cifar_resnet8", 10, 1).state_dict(), "note": "mine"}
    torch.save({**teacher, "model_name": "cifar_resnet8"}, run / "teacher.pt")
    clkd = ["--dataset", "fashion-mnist", "--teacher", "cifar_resnet8"]
    clkd += ["--student", "cifar_resnet8", "--epochs", "1", "--workers", "0"]
    clkd += ["--train-subset", "64", "--test-subset", "64"]
    clkd += ["--no-progress", "--teacher-checkpoint", run / "teacher.pt", "--out", run]
    assert _console("clkd.train", *clkd, "--overwrite").returncode == 0
    assert torch.load(run / "teacher.pt", weights_only=False)["note"] == "mine"  # not retrained
    assert len((run / "student_metrics.jsonl").read_text().splitlines()) == 1  # replaced


def test_gp_maml_resume_applies_a_changed_learning_rate(tmp_path):
    out = tmp_path / "r"
    assert _console("gp_maml.train", *_gp_maml_args(out, "--iterations", "2")).returncode == 0
    faster = ["--lr", "0.01", "--iterations", "3", "--resume"]
    faster += ["--allow-changed", "lr", "iterations"]
    assert _console("gp_maml.train", *_gp_maml_args(out, *faster)).returncode == 0
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in log] == [1e-3, 1e-3, 1e-2]
    recorded = json.loads((out / "config.json").read_text())["lr"]
    assert recorded == torch.load(out / "last.pt", weights_only=False)["config"]["lr"] == 1e-2
    shorter = _gp_maml_args(out, "--lr", "0.01", "--iterations", "2", "--resume")
    shorter += ["--allow-changed", "iterations"]
    _one_line_error(_console("gp_maml.train", *shorter), "at iteration 3, past --iterations 2")


def test_clkd_workers_may_change_on_resume_without_changing_the_weights(tmp_path):
    """--workers 2 for the first epoch, --resume --workers 0 for the second: the same weights as
    an uninterrupted --workers 0 run (items are drawn per index and epoch, not per worker)."""
    teacher = tmp_path / "teacher.pt"
    args = [
        "--dataset",
        "fashion-mnist",
        "--teacher",
        "cifar_resnet8",
        "--student",
        "cifar_resnet8",
    ]
    args += [
        "--epochs",
        "2",
        "--teacher-epochs",
        "1",
        "--train-subset",
        "96",
        "--test-subset",
        "32",
    ]
    args += ["--batch-size", "32", "--no-progress", "--teacher-checkpoint", teacher]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert _console("clkd.train", *args, "--workers", "0", "--out", straight).returncode == 0
    first = _console("clkd.train", *args, "--workers", "2", "--stop-after", "1", "--out", split)
    assert first.returncode == 0
    resumed = _console("clkd.train", *args, "--workers", "0", "--resume", "--out", split)
    assert resumed.returncode == 0
    _assert_same(_weights(straight / "student.pt"), _weights(split / "student.pt"))
