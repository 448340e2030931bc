import argparse
import warnings
from dataclasses import dataclass

import pytest
from torch.utils.data import DataLoader, Dataset

from lab_common.cli import add_run_arguments, check_model_name, config_from_args, run_console


@dataclass(frozen=True)
class _Config:
    out: str = "runs/x"
    epochs: int = 3
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    workers: int = 2
    progress: bool = True
    data_root: str | None = None
    milestones: tuple[int, ...] = (1, 2)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="x-train")
    p.add_argument("--milestones", type=int, nargs="*", default=list(_Config.milestones))
    add_run_arguments(p, _Config())
    return p


def test_defaults_come_from_the_config_and_round_trip():
    cfg = config_from_args(_Config, _parser().parse_args([]))
    assert cfg == _Config()


def test_shared_options_fill_the_config():
    args = _parser().parse_args(
        "--out o --epochs 5 --batch-size 8 --seed 3 --device cpu --amp --workers 0 "
        "--no-progress --data-root d --milestones 4".split()
    )
    cfg = config_from_args(_Config, args)
    assert cfg == _Config("o", 5, 8, 3, "cpu", True, 0, False, "d", (4,))
    assert not hasattr(cfg, "resume") and args.resume is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["--batch-size", "-4"], "--batch-size: expected a positive integer, got -4"),
        (["--workers", "-1"], "--workers: expected an integer >= 0, got -1"),
        (["--epochs", "two"], "--epochs: expected a positive integer, got 'two'"),
    ],
)
def test_bad_numbers_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_run_console_exit_codes(capsys):
    assert run_console(lambda argv: {"a": 1}) == 0  # a returned dict is not an exit status

    def bad(argv):
        raise ValueError("--lr must be > 0, got -1")

    assert run_console(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("error: --lr must be > 0, got -1")

    def diverged(argv):
        raise FloatingPointError("iteration 2: non-finite loss nan: lower --lr")

    assert run_console(diverged) == 1  # the run started, then failed: not a user error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("error: iteration 2: non-finite loss nan: lower --lr")

    def bug(argv):
        raise RuntimeError("a bug keeps its traceback")

    with pytest.raises(RuntimeError):
        run_console(bug)


def test_run_console_names_the_console_script(capsys):
    """``python -m pkg.train`` would otherwise print ``train.py: error: ...``."""

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_console(interrupted, prog="demo-train") == 130
    assert capsys.readouterr().err.strip() == "demo-train: interrupted"


def test_no_warning_without_old_names():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _parser().parse_args(["--out", "o"])


class _BrokenImages(Dataset):
    def __init__(self, error: Exception):
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise self.error


@pytest.mark.parametrize(
    "error, status",
    [
        (OSError("cannot identify image file 'a.jpg'"), 1),
        (FileNotFoundError(2, "No such file or directory", "b.jpg"), 2),
    ],
)
def test_run_console_shows_a_worker_error_as_its_original_last_line(error, status, capsys):
    def main(argv):
        list(DataLoader(_BrokenImages(error), num_workers=2))

    assert run_console(main, [], prog="trainer") == status
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("trainer: error: ") and str(error) in line
    assert "DataLoader worker" not in line


def test_run_console_reports_a_missing_optional_dependency(capsys):
    def main(argv):
        raise ModuleNotFoundError("needs pycocotools: pip install 'lavit[detection]'")

    assert run_console(main, [], prog="trainer") == 2
    assert (
        capsys.readouterr().err
        == "trainer: error: needs pycocotools: pip install 'lavit[detection]'\n"
    )


def test_check_model_name_names_the_option_and_how_to_list_models():
    check_model_name("resnet18", {"resnet18"}.__contains__)
    with pytest.raises(ValueError) as err:
        check_model_name(
            "resnet_9000", {"resnet18"}.__contains__, "--teacher", "zoo.list() lists the zoo"
        )
    assert str(err.value) == (
        "unknown model 'resnet_9000' (--teacher): timm has no model of that name; "
        "zoo.list() lists the zoo, timm.list_models() lists all models"
    )
