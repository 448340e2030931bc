"""Every trainer's ``--help``: defaults shown, none that mislead ("(default: None)", a switch's
"(default: True)"), and the shared options worded for every trainer."""

from __future__ import annotations

import importlib

import pytest

PARSERS = {
    "lavit-train": ("lavit.train", "build_parser", "epochs"),
    "lavit-train-dense": ("lavit.train_dense", "build_parser", "epochs"),
    "clkd-train": ("clkd.train", "build_parser", "epochs"),
    "trg-kd-train": ("trg_kd.train", "build_parser", "epochs"),
    "gp-maml-train": ("gp_maml.train", "_parser", "iterations"),
}


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_help_shows_defaults_and_nothing_misleading(script):
    module, builder, duration = PARSERS[script]
    text = " ".join(getattr(importlib.import_module(module), builder)().format_help().split())
    assert "(default: None)" not in text
    assert "(default: True)" not in text and "(default: False)" not in text
    assert f"--{duration} {duration.upper()} training length in {duration} (default:" in text
    assert "last checkpoint in --out" in text and "<out>/last.pt" not in text
    assert f"(e.g. {duration} lr)" in text
    if script == "gp-maml-train":  # --data-root is required there: no fallback to name
        assert "--data-root DATA_ROOT dataset folder" in text and "$LAB_DATASETS" not in text
    elif "--data-root" in text:
        assert "(default: $LAB_DATASETS, else ../shared/datasets" in text  # not "None"


@pytest.mark.parametrize(
    "module, builder, old",
    [
        ("lavit.train", "build_parser", "--output"),
        ("clkd.train", "build_parser", "--out-dir"),
        ("trg_kd.train", "build_parser", "--out-dir"),
        ("gp_maml.train", "_parser", "--meta-batch"),
        ("gp_maml.evaluate", "_parser", "--batch"),
    ],
)
def test_the_aliases_removed_in_0_3_are_refused(module, builder, old, capsys):
    """Also not as an abbreviation: the parsers take full option names only
    (``allow_abbrev=False``), so ``--batch`` is not read as ``--batch-size``."""
    parser = getattr(importlib.import_module(module), builder)()
    required = {
        "gp_maml.train": ["--data-root", "d"],
        "gp_maml.evaluate": ["--checkpoint", "c", "--data-root", "d"],
    }.get(module, ["--dataset", "cifar10"])
    with pytest.raises(SystemExit):
        parser.parse_args([*required, old, "8"])
    assert f"unrecognized arguments: {old} 8" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["lavit-train", "clkd-train", "trg-kd-train"])
def test_named_datasets_can_be_downloaded_on_request(script):
    module, builder, _ = PARSERS[script]
    parser = getattr(importlib.import_module(module), builder)()
    assert "--download" in parser.format_help()
    args = parser.parse_args(["--dataset", "cifar100", "--download"])
    assert args.download is True
