"""DistillConfig: validation, the protocol milestones, and the options that build it."""

import argparse
import dataclasses
from pathlib import Path

import pytest

from lab_common.cli import config_from_args
from lab_common.distill import DistillConfig, add_distill_arguments, default_milestones


def test_default_milestones_scale_the_protocol():
    assert default_milestones(240) == [150, 180, 210]
    assert default_milestones(24) == [15, 18, 21]
    assert default_milestones(2) == [1, 2]


def test_frozen_paths_as_str_and_milestones_as_tuple():
    cfg = DistillConfig(out=Path("runs/x"), milestones=[3, 5])
    assert cfg.out == "runs/x" and cfg.milestones == (3, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be >= 1, got 0"),
        ("batch_size", -1, "batch_size must be >= 1"),
        ("train_subset", 0, "train_subset must be >= 1"),
        ("workers", -1, "workers must be >= 0"),
        ("lr", 0.0, "lr must be > 0"),
        ("milestones", (0, 2), "milestones must be epochs >= 1"),
        ("epochs", -1, "epochs must be >= 1, got -1"),
        ("batch_size", 0, "batch_size must be >= 1, got 0"),
        ("batch_size", -4, "batch_size must be >= 1, got -4"),
        ("lr", -1.0, "lr must be > 0, got -1.0"),
        ("teacher_lr", 0.0, "teacher_lr must be > 0"),
        ("momentum", -0.5, "momentum must be >= 0"),
    ],
)
def test_bad_values_are_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        DistillConfig(**{field: value})


def _parser(defaults: DistillConfig | None = None) -> argparse.ArgumentParser:
    return add_distill_arguments(argparse.ArgumentParser(prog="t"), defaults or DistillConfig())


def test_options_build_the_config_with_its_defaults():
    assert config_from_args(DistillConfig, _parser().parse_args([])) == DistillConfig()
    argv = "--out r --epochs 3 --batch-size 8 --milestones 1 2 --no-progress --amp --resume"
    argv += " --teacher cifar_resnet8 --stop-after 1"
    args = _parser().parse_args(argv.split())
    cfg = config_from_args(DistillConfig, args)
    assert (cfg.out, cfg.epochs, cfg.batch_size, cfg.milestones) == ("r", 3, 8, (1, 2))
    assert not cfg.progress and cfg.amp and cfg.stop_after == 1
    # how a run is started is not a setting of the run: keyword arguments of the trainer
    assert args.resume and not args.overwrite and args.allow_changed == ()
    assert not hasattr(cfg, "resume")
    args = _parser().parse_args(["--overwrite", "--allow-changed", "lr", "epochs"])
    assert args.overwrite and args.allow_changed == ["lr", "epochs"]
    assert cfg.teacher == "cifar_resnet8"
    custom = DistillConfig(epochs=7, student="cifar_resnet20")
    assert config_from_args(DistillConfig, _parser(custom).parse_args([])) == custom


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "--epochs: expected a positive integer, got 0"),
        (["--epochs", "-1"], "--epochs: expected a positive integer, got -1"),
        (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
        (["--batch-size", "-4"], "--batch-size: expected a positive integer, got -4"),
        (["--lr", "-1"], "--lr: expected a number > 0, got -1"),
        (["--teacher-lr", "0"], "--teacher-lr: expected a number > 0, got 0"),
        (["--weight-decay", "-1"], "--weight-decay: expected a number >= 0, got -1"),
    ],
)
def test_bad_numbers_rejected_by_the_parser_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"t: error: argument {message}"
