"""The console scripts' exit statuses: 0 on success, 2 with one line on a user error."""

import os
import subprocess
import sys
from pathlib import Path

from gp_maml import evaluate, train
from lab_common.cli import run_console


def _run(module: str, *argv: str) -> subprocess.CompletedProcess:
    """``python -m module argv`` with this process's import path (this checkout's code)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env, timeout=900
    )


def test_console_scripts_point_at_cli_wrappers():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    scripts = pyproject.split("[project.scripts]")[1].split("[")[0].split()
    assert scripts == [
        *("gp-maml-train", "=", '"gp_maml.train:cli"'),
        *("gp-maml-evaluate", "=", '"gp_maml.evaluate:cli"'),
    ]
    assert train.cli.__module__ == "gp_maml.train" and evaluate.cli.__module__ == "gp_maml.evaluate"


def test_train_and_evaluate_exit_0_on_success_and_2_on_bad_input(omniglot_zip, tmp_path):
    out = tmp_path / "run"
    common = ["--data-root", str(omniglot_zip), "--backbone", "conv4-32", "--ways", "2"]
    done = _run(
        "gp_maml.train",
        *common,
        *["--method", "maml", "--first-order", "--queries", "1", "--batch-size", "1"],
        *["--alphabets", "alpha0"],
        *["--iterations", "1", "--val-every", "0", "--out", str(out), "--no-progress"],
    )
    assert done.returncode == 0, done.stderr
    assert (out / "last.pt").is_file()
    evaluated = _run(
        "gp_maml.evaluate",
        *["--checkpoint", str(out / "last.pt"), "--data-root", str(omniglot_zip)],
        *["--alphabets", "alpha1"],
        *["--tasks", "600", "--batch-size", "100", "--no-progress", "--out", str(out / "t.json")],
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "2-way 1-shot" in evaluated.stdout and (out / "t.json").is_file()
    failed = _run("gp_maml.train", *common, "--out", str(tmp_path / "x"), "--ways", "1")
    assert failed.returncode == 2, failed.stderr
    (line,) = failed.stderr.strip().splitlines()
    assert "error: ways must be >= 2, got 1" in line


def test_user_errors_give_status_2_and_one_line(omniglot_zip, tmp_path, capsys):
    for main, argv, message in (
        (
            evaluate.main,
            ["--checkpoint", str(tmp_path / "missing.pt"), "--data-root", str(omniglot_zip)],
            "missing.pt",
        ),
        (
            train.main,
            ["--data-root", str(tmp_path / "missing.zip"), "--out", str(tmp_path / "o")],
            "missing.zip",
        ),
    ):
        assert run_console(main, argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "error:" in line and message in line
